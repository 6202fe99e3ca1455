"""The SimplerEnv side of a Vlaser-VLA policy: the release's proprio layouts and gripper logic, in numpy only.

SimplerEnv needs Python 3.10, SAPIEN 2.2 and a Vulkan GPU, so it runs in its own environment and asks a
``vlaser vla serve`` policy for action chunks over localhost (``vla.client``). This module turns a SimplerEnv
observation's ``agent.eef_pos`` (xyz, quaternion wxyz, gripper width) into the proprio the policy was trained
on, and a predicted chunk into the actions the environment takes, as V:``S/src/agent/env_adapter/simpler.py``
does. It imports nothing from vlaser, so it can be copied next to the simulator. See ``docs/vla.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_EPS4 = np.finfo(float).eps * 4.0
#: Bridge's end-effector rotation is relative to a top-down pose, not to the robot base (bridge_data_robot).
BRIDGE_DEFAULT_ROT = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])


# ---- rotations (transforms3d's conventions: quaternions wxyz, static-frame "sxyz" Euler angles) ---------------

def quat2mat(q: np.ndarray) -> np.ndarray:
    """The rotation matrix of a wxyz quaternion (not necessarily unit; identity for a zero one)."""
    w, x, y, z = (float(v) for v in q)
    n = w * w + x * x + y * y + z * z
    if n < np.finfo(float).eps:
        return np.eye(3)
    s = 2.0 / n
    xx, yy, zz, xy, xz, yz, wx, wy, wz = x * x * s, y * y * s, z * z * s, x * y * s, x * z * s, y * z * s, \
        w * x * s, w * y * s, w * z * s
    return np.array([[1.0 - (yy + zz), xy - wz, xz + wy],
                     [xy + wz, 1.0 - (xx + zz), yz - wx],
                     [xz - wy, yz + wx, 1.0 - (xx + yy)]])


def mat2euler(m: np.ndarray) -> np.ndarray:
    """Roll, pitch, yaw (static x, y, z) of a rotation matrix."""
    cy = math.hypot(m[0, 0], m[1, 0])
    if cy > _EPS4:
        return np.array([math.atan2(m[2, 1], m[2, 2]), math.atan2(-m[2, 0], cy), math.atan2(m[1, 0], m[0, 0])])
    return np.array([math.atan2(-m[1, 2], m[1, 1]), math.atan2(-m[2, 0], cy), 0.0])


def euler2quat(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """The wxyz quaternion of static x, y, z Euler angles."""
    ci, si = math.cos(roll / 2), math.sin(roll / 2)
    cj, sj = math.cos(pitch / 2), math.sin(pitch / 2)
    ck, sk = math.cos(yaw / 2), math.sin(yaw / 2)
    cc, cs, sc, ss = ci * ck, ci * sk, si * ck, si * sk
    return np.array([cj * cc + sj * ss, cj * sc - sj * cs, cj * ss + sj * cc, cj * cs - sj * sc])


def euler2axangle(roll: float, pitch: float, yaw: float) -> tuple[np.ndarray, float]:
    """``(unit axis, angle in [0, 2 pi])`` of static x, y, z Euler angles; the identity gives ``([1, 0, 0], 0)``."""
    w, x, y, z = euler2quat(roll, pitch, yaw)
    thresh = np.finfo(float).eps * 3
    n = w * w + x * x + y * y + z * z
    if n < thresh ** 2:
        return np.array([1.0, 0.0, 0.0]), 0.0
    if n != 1.0:
        s = math.sqrt(n)
        w, x, y, z = w / s, x / s, y / s, z / s
    length2 = x * x + y * y + z * z
    if length2 < thresh ** 2:
        return np.array([1.0, 0.0, 0.0]), 0.0
    return np.array([x, y, z]) / math.sqrt(length2), 2.0 * math.acos(max(min(w, 1.0), -1.0))


# ---- the two robots ---------------------------------------------------------------------------------------------

def bridge_proprio(eef_pos: np.ndarray) -> np.ndarray:
    """WidowX (Bridge): 7-D xyz, roll-pitch-yaw in Bridge's top-down frame, gripper openness."""
    eef_pos = np.asarray(eef_pos, dtype=np.float64)
    _check(eef_pos)
    rpy = mat2euler(quat2mat(eef_pos[3:7]) @ BRIDGE_DEFAULT_ROT.T)
    return np.concatenate([eef_pos[:3], rpy, eef_pos[7:8]])


def fractal_proprio(eef_pos: np.ndarray) -> np.ndarray:
    """Google robot (Fractal): 8-D xyz, quaternion xyzw, gripper closedness (1 - SimplerEnv's width)."""
    eef_pos = np.asarray(eef_pos, dtype=np.float64)
    _check(eef_pos)
    return np.concatenate([eef_pos[:3], np.roll(eef_pos[3:7], -1), [1.0 - eef_pos[7]]])


def _check(eef_pos: np.ndarray) -> None:
    if eef_pos.shape != (8,):
        raise ValueError(f"eef_pos must hold 8 values (xyz, quaternion wxyz, gripper), got shape {eef_pos.shape}")


def bridge_gripper(action: float) -> float:
    """Bridge's gripper command: open (1) above 0.5, closed (-1) otherwise (Octo's SimplerEnv policy)."""
    return 2.0 * float(action > 0.5) - 1.0


class StickyGripper:
    """The Google robot's gripper: the trained [0, 1] openness becomes SimplerEnv's relative command (1 closes,
    -1 opens), and once a command passes 0.5 in size it is held for ``repeats`` actions (Octo's sticky gripper)."""

    def __init__(self, repeats: int = 15) -> None:
        self.repeats = repeats
        self.reset()

    def reset(self) -> None:
        self.on, self.count, self.held = False, 0, 0.0

    def __call__(self, action: float) -> float:
        relative = -(2.0 * float(action) - 1.0)
        if abs(relative) > 0.5 and not self.on:
            self.on, self.held = True, relative
        if self.on:
            self.count += 1
            relative = self.held
        if self.count == self.repeats:
            self.on, self.count, self.held = False, 0, 0.0
        return relative


@dataclass(frozen=True)
class Robot:
    """What differs between the release's two SimplerEnv policies."""

    name: str
    proprio_dim: int
    act_steps: int  #: actions of each predicted chunk executed before the next query
    sticky_repeats: int  #: 0: Bridge's thresholded gripper; otherwise the sticky gripper's hold


ROBOTS = {"bridge": Robot("bridge", 7, 4, 0), "fractal": Robot("fractal", 8, 2, 15)}


class SimplerAdapter:
    """One episode's translation between SimplerEnv and a policy that takes raw proprio and returns raw
    (un-normalised) actions, as ``VLAPolicy.predict`` and the ``/act`` endpoint do.

    ``proprio(obs)`` gives the policy's state; ``actions(chunk)`` gives the first ``act_steps`` environment
    actions (xyz delta, axis-angle delta, gripper). Call ``reset()`` at each episode's start.

    The release converts the whole chunk before executing ``act_steps`` of it, so the sticky gripper's count
    also advances on the actions never executed (4 per query on Fractal, where 2 run); that is kept by default
    (``whole_chunk_gripper=False`` counts only executed actions).
    """

    def __init__(self, robot: str, act_steps: int | None = None, whole_chunk_gripper: bool = True) -> None:
        if robot not in ROBOTS:
            raise ValueError(f"unknown robot {robot!r}; choose from {sorted(ROBOTS)}")
        self.robot = ROBOTS[robot]
        self.act_steps = self.robot.act_steps if act_steps is None else act_steps
        self.whole_chunk_gripper = whole_chunk_gripper
        self.sticky = StickyGripper(self.robot.sticky_repeats) if self.robot.sticky_repeats else None

    def reset(self) -> None:
        if self.sticky is not None:
            self.sticky.reset()

    def proprio(self, obs: dict) -> np.ndarray:
        """The raw proprio of a SimplerEnv observation (``obs["agent"]["eef_pos"]``)."""
        eef_pos = obs["agent"]["eef_pos"]
        return bridge_proprio(eef_pos) if self.robot.name == "bridge" else fractal_proprio(eef_pos)

    def actions(self, chunk: np.ndarray) -> np.ndarray:
        """``(act_steps, 7)`` environment actions from a raw ``(chunk, 7)`` prediction (xyz, rpy, gripper)."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[1] != 7:
            raise ValueError(f"a chunk of 7-D actions (xyz, rpy, gripper) is expected, got shape {chunk.shape}")
        if not 1 <= self.act_steps <= len(chunk):
            raise ValueError(f"act_steps={self.act_steps} does not fit a chunk of {len(chunk)} actions")
        rows = chunk if self.whole_chunk_gripper else chunk[:self.act_steps]
        out = np.zeros((len(rows), 7))
        for i, action in enumerate(rows):
            axis, angle = euler2axangle(*action[3:6])
            gripper = bridge_gripper(action[6]) if self.sticky is None else self.sticky(action[6])
            out[i] = np.concatenate([action[:3], axis * angle, [gripper]])
        return out[:self.act_steps]
