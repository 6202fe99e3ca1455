"""The Octo data conventions the release's two policies were trained on, checked where a dataset says its robot.

The release reads Bridge and Fractal through Octo's transforms (V: ``Vlaser_VLA/Simpler/src/data/oxe/
oxe_standardization_transforms.py``, ``src/data/utils/data_utils.py``): Bridge's gripper action is binarised
(``binarize_gripper_actions``: 1 open, 0 closed) and Fractal's relative gripper command (RT-1's
``gripper_closedness_action``, +1 close, -1 open) is made absolute (``rel2abs_gripper_actions``: 1 open, 0
closed). A LeRobot conversion that kept the raw values trains a policy on a different action, silently; this
names what is off. docs/vla.md lists the conventions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: ``info.json`` ``robot_type`` words that identify each dataset (lower-case substrings).
ROBOT_WORDS = {"bridge": ("widowx", "bridge"), "fractal": ("google_robot", "google robot", "fractal", "rt1", "rt-1")}
ACTION_DIM = 7
#: The proprio layouts the release's presets take: Bridge xyz + rpy + gripper openness; Fractal xyz + quaternion
#: xyzw + gripper closedness (its statistics file and eval configs; its registered transform gives Euler angles).
PROPRIO_DIM = {"bridge": 7, "fractal": 8}


@dataclass
class ConventionCheck:
    """Which release dataset the robot type names (``None``: neither) and what does not follow its conventions."""

    robot: str | None
    problems: list[str]

    def render(self, robot_type: str | None) -> list[str]:
        if self.robot is None:
            return [f"  Octo conventions: not checked (robot type {robot_type!r} names neither Bridge/WidowX "
                    f"nor Fractal/Google robot)"]
        state = f"{len(self.problems)} problem(s)" if self.problems else "ok"
        head = f"  Octo conventions ({self.robot}): {state}"
        return [head] + [f"    WARNING: {p}" for p in self.problems]


def robot_of(robot_type: str | None) -> str | None:
    """``"bridge"``, ``"fractal"`` or ``None`` for an ``info.json`` robot type."""
    text = (robot_type or "").lower()
    return next((robot for robot, words in ROBOT_WORDS.items() if any(w in text for w in words)), None)


def _gripper_problem(robot: str, gripper: np.ndarray) -> str | None:
    """What is wrong with the action's gripper column (the last value of every frame), if anything."""
    off = ~np.isin(gripper, (0.0, 1.0))
    if not off.any():
        return None
    example = float(gripper[off][0])
    where = f"{int(off.sum())} of {len(gripper)} frames hold gripper values other than 0 and 1 (e.g. {example:g})"
    if robot == "fractal" and (gripper < 0).any():
        return (f"action: the gripper looks relative (negative values; {where}): RT-1's gripper_closedness_action "
                f"(+1 close, -1 open) must be made absolute as Octo's rel2abs_gripper_actions does (1 open, 0 closed)")
    if robot == "fractal":
        return f"action: the gripper is not absolute open/closed ({where}); Octo's rel2abs_gripper_actions gives 1 or 0"
    return (f"action: the gripper is not binarised ({where}); Octo's binarize_gripper_actions gives 1 (open, above "
            f"0.95) or 0 (closed, below 0.05), values in between taking the next decided one")


def check_conventions(dataset, state_key: str = "observation.state", action_key: str = "action") -> ConventionCheck:
    """Check a ``LeRobotDataset`` against the conventions of the release dataset its robot type names."""
    robot = robot_of(dataset.info.get("robot_type"))
    if robot is None:
        return ConventionCheck(None, [])
    problems = []
    for key, want in ((action_key, ACTION_DIM), (state_key, PROPRIO_DIM[robot])):
        if key not in dataset.features:
            problems.append(f"no {key!r} feature (the release's policies need it)")
        elif int(np.prod(dataset.features[key]["shape"])) != want:
            problems.append(f"{key} has {int(np.prod(dataset.features[key]['shape']))} values; the release's "
                            f"{robot} policy takes {want}")
    if action_key in dataset.features and dataset.episodes:
        actions = [np.asarray(dataset.episode(e.index)[action_key]) for e in dataset.episodes]
        gripper = np.concatenate([a.reshape(len(a), -1)[:, -1] for a in actions if len(a)])
        problem = _gripper_problem(robot, gripper)
        if problem:
            problems.append(problem)
    return ConventionCheck(robot, problems)
