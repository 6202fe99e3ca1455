"""The SimplerEnv adapter: rotations in transforms3d's conventions, the release's proprio layouts and grippers."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vlaser.vla import simpler
from vlaser.vla.simpler import SimplerAdapter, StickyGripper, bridge_gripper, euler2axangle, mat2euler, quat2mat


def test_rotations_match_hand_checked_cases_and_scipy():
    assert np.allclose(quat2mat([1, 0, 0, 0]), np.eye(3))
    half = math.sqrt(0.5)
    assert np.allclose(quat2mat([half, 0, 0, half]), [[0, -1, 0], [1, 0, 0], [0, 0, 1]])  # 90 deg about z
    assert np.allclose(mat2euler(quat2mat([half, 0, 0, half])), [0, 0, math.pi / 2])
    axis, angle = euler2axangle(0.0, 0.0, math.pi / 2)
    assert np.allclose(axis, [0, 0, 1]) and math.isclose(angle, math.pi / 2)
    axis, angle = euler2axangle(0.0, 0.0, 0.0)
    assert axis.tolist() == [1.0, 0.0, 0.0] and angle == 0.0
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        expected = Rotation.from_quat([q[1], q[2], q[3], q[0]])  # scipy: xyzw
        assert np.allclose(quat2mat(q), expected.as_matrix(), atol=1e-12)
        rpy = mat2euler(quat2mat(q))
        assert np.allclose(rpy, expected.as_euler("xyz"), atol=1e-9)  # static x, y, z
        axis, angle = euler2axangle(*rpy)
        assert np.allclose(Rotation.from_rotvec(axis * angle).as_matrix(), expected.as_matrix(), atol=1e-9)
        assert 0 <= angle <= 2 * math.pi


def test_bridge_proprio_is_in_the_top_down_frame():
    eef = np.array([0.1, 0.2, 0.3, 1.0, 0.0, 0.0, 0.0, 0.37])  # base-aligned gripper
    proprio = SimplerAdapter("bridge").proprio({"agent": {"eef_pos": eef}})
    # I @ default_rot.T = [[0, 0, -1], [0, 1, 0], [1, 0, 0]]: gimbal lock, pitch -90 deg, roll and yaw 0
    assert np.allclose(proprio, [0.1, 0.2, 0.3, 0.0, -math.pi / 2, 0.0, 0.37])
    assert proprio.shape == (7,)
    with pytest.raises(ValueError, match="8 values"):
        simpler.bridge_proprio(eef[:7])


def test_fractal_proprio_is_xyzw_and_gripper_closedness():
    eef = np.array([0.1, 0.2, 0.3, 0.5, 0.1, 0.2, 0.3, 0.3])
    proprio = SimplerAdapter("fractal").proprio({"agent": {"eef_pos": eef}})
    assert np.allclose(proprio, [0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.5, 0.7])


def test_bridge_gripper_thresholds_at_one_half():
    assert [bridge_gripper(a) for a in (0.0, 0.5, 0.500001, 1.0)] == [-1.0, -1.0, 1.0, 1.0]


def test_sticky_gripper_holds_a_flip_for_its_repeats():
    sticky = StickyGripper(repeats=3)
    # openness 1 -> relative -1 (open): held 3 actions; 0.5 -> 0 (no command); 0 -> +1 (close): held again
    outputs = [sticky(a) for a in (1.0, 0.5, 0.5, 0.5, 0.0, 0.5)]
    assert outputs == [-1.0, -1.0, -1.0, 0.0, 1.0, 1.0]
    sticky.reset()
    assert sticky(0.6) == pytest.approx(-0.2)  # a small command passes through, not held


def test_actions_are_xyz_axis_angle_and_gripper_for_the_executed_steps():
    chunk = np.array([[0.01, 0.02, 0.03, 0.0, 0.0, math.pi / 2, 0.9],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1]] * 2)
    bridge = SimplerAdapter("bridge").actions(chunk)
    assert bridge.shape == (4, 7)
    assert np.allclose(bridge[0], [0.01, 0.02, 0.03, 0, 0, math.pi / 2, 1.0])
    assert np.allclose(bridge[1], [0, 0, 0, 0, 0, 0, -1.0])
    assert SimplerAdapter("fractal").actions(chunk).shape == (2, 7)  # act_steps 2
    with pytest.raises(ValueError, match="7-D"):
        SimplerAdapter("bridge").actions(chunk[:, :6])
    with pytest.raises(ValueError, match="unknown robot"):
        SimplerAdapter("franka")


def test_fractal_counts_the_whole_chunk_as_released_and_only_executed_steps_as_the_fix():
    chunk = np.array([[0, 0, 0, 0, 0, 0, 1.0]] + [[0, 0, 0, 0, 0, 0, 0.5]] * 3)
    release = SimplerAdapter("fractal")
    release.actions(chunk)
    assert release.sticky.count == 4  # two executed, four counted
    fixed = SimplerAdapter("fractal", whole_chunk_gripper=False)
    fixed.actions(chunk)
    assert fixed.sticky.count == 2
    release.reset()
    assert release.sticky.count == 0 and not release.sticky.on


def test_the_adapter_imports_nothing_but_numpy():
    tree = ast.parse(Path(simpler.__file__).read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import)]
    names = {alias.name.split(".")[0] for node in imports for alias in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert names <= {"__future__", "math", "dataclasses", "numpy"}
