"""Meta-World as LeRobot's Meta-World env presents it, on Farama's ``metaworld`` 3.x.

What LeRobot's env does (``lerobot/envs/metaworld.py``), and so what this module does:

- a task is built from ``MT1(task, seed=42)``'s first training task with ``_freeze_rand_vec`` off, so every
  reset draws new object and goal positions (LeRobot passes a seed that Meta-World 3.1.1 ignores; here the env
  is seeded, so a seed fixes an episode wherever it runs);
- the camera is ``corner2`` moved to ``(0.75, 0.075, 0.7)``, and its image is turned 180 degrees (the corner
  cameras render upside down);
- the state ``agent_pos`` is the first 4 values of the observation: end-effector xyz and the gripper's opening;
- actions are 4-D (xyz delta, gripper) in [-1, 1];
- an episode ends at the env's success or after its ``max_path_length`` (500) steps;
- instructions are LeRobot's task descriptions, and tasks group by difficulty (easy, medium, hard, very_hard).
  ``mt10`` is Meta-World's MT10 set, ``mt50`` all 50.

Rendering is a ``mujoco.Renderer`` per env. ``RenderSettings.cheap`` turns off the scene's shadow maps (4096 px)
and multisampling (4x): 10x faster on a CPU (OSMesa), different pixels; a dataset records it and evaluation
reuses it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from vlaser.errors import UserInputError, require

#: The task descriptions LeRobot's Meta-World env and datasets use as instructions.
INSTRUCTIONS = {
    "assembly-v3": "Pick up a nut and place it onto a peg",
    "basketball-v3": "Dunk the basketball into the basket",
    "bin-picking-v3": "Grasp the puck from one bin and place it into another bin",
    "box-close-v3": "Grasp the cover and close the box with it",
    "button-press-topdown-v3": "Press a button from the top",
    "button-press-topdown-wall-v3": "Bypass a wall and press a button from the top",
    "button-press-v3": "Press a button",
    "button-press-wall-v3": "Bypass a wall and press a button",
    "coffee-button-v3": "Push a button on the coffee machine",
    "coffee-pull-v3": "Pull a mug from a coffee machine",
    "coffee-push-v3": "Push a mug under a coffee machine",
    "dial-turn-v3": "Rotate a dial 180 degrees",
    "disassemble-v3": "Pick a nut out of a peg",
    "door-close-v3": "Close a door with a revolving joint",
    "door-lock-v3": "Lock the door by rotating the lock clockwise",
    "door-open-v3": "Open a door with a revolving joint",
    "door-unlock-v3": "Unlock the door by rotating the lock counter-clockwise",
    "drawer-close-v3": "Push and close a drawer",
    "drawer-open-v3": "Open a drawer",
    "faucet-close-v3": "Rotate the faucet clockwise",
    "faucet-open-v3": "Rotate the faucet counter-clockwise",
    "hammer-v3": "Hammer a screw on the wall",
    "hand-insert-v3": "Insert the gripper into a hole",
    "handle-press-side-v3": "Press a handle down sideways",
    "handle-press-v3": "Press a handle down",
    "handle-pull-side-v3": "Pull a handle up sideways",
    "handle-pull-v3": "Pull a handle up",
    "lever-pull-v3": "Pull a lever down 90 degrees",
    "peg-insert-side-v3": "Insert a peg sideways",
    "peg-unplug-side-v3": "Unplug a peg sideways",
    "pick-out-of-hole-v3": "Pick up a puck from a hole",
    "pick-place-v3": "Pick and place a puck to a goal",
    "pick-place-wall-v3": "Pick a puck, bypass a wall and place the puck",
    "plate-slide-back-side-v3": "Get a plate from the cabinet sideways",
    "plate-slide-back-v3": "Get a plate from the cabinet",
    "plate-slide-side-v3": "Slide a plate into a cabinet sideways",
    "plate-slide-v3": "Slide a plate into a cabinet",
    "push-back-v3": "Push the puck to a goal",
    "push-v3": "Push the puck to a goal",
    "push-wall-v3": "Bypass a wall and push a puck to a goal",
    "reach-v3": "Reach a goal position",
    "reach-wall-v3": "Bypass a wall and reach a goal",
    "shelf-place-v3": "Pick and place a puck onto a shelf",
    "soccer-v3": "Kick a soccer into the goal",
    "stick-pull-v3": "Grasp a stick and pull a box with the stick",
    "stick-push-v3": "Grasp a stick and push a box using the stick",
    "sweep-into-v3": "Sweep a puck into a hole",
    "sweep-v3": "Sweep a puck off the table",
    "window-close-v3": "Push and close a window",
    "window-open-v3": "Push and open a window",
}

#: LeRobot's difficulty groups (every task is in exactly one).
DIFFICULTY = {
    "easy": ["button-press-v3", "button-press-topdown-v3", "button-press-topdown-wall-v3", "button-press-wall-v3",
             "coffee-button-v3", "dial-turn-v3", "door-close-v3", "door-lock-v3", "door-open-v3", "door-unlock-v3",
             "drawer-close-v3", "drawer-open-v3", "faucet-close-v3", "faucet-open-v3", "handle-press-v3",
             "handle-press-side-v3", "handle-pull-v3", "handle-pull-side-v3", "lever-pull-v3", "plate-slide-v3",
             "plate-slide-back-v3", "plate-slide-back-side-v3", "plate-slide-side-v3", "reach-v3", "reach-wall-v3",
             "window-close-v3", "window-open-v3", "peg-unplug-side-v3"],
    "medium": ["basketball-v3", "bin-picking-v3", "box-close-v3", "coffee-pull-v3", "coffee-push-v3", "hammer-v3",
               "peg-insert-side-v3", "push-wall-v3", "soccer-v3", "sweep-v3", "sweep-into-v3"],
    "hard": ["assembly-v3", "hand-insert-v3", "pick-out-of-hole-v3", "pick-place-v3", "push-v3", "push-back-v3"],
    "very_hard": ["shelf-place-v3", "disassemble-v3", "stick-pull-v3", "stick-push-v3", "pick-place-wall-v3"],
}
#: Meta-World's MT10 tasks (``metaworld.MT10().train_classes``).
MT10 = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"]
GROUPS = {**DIFFICULTY, "mt10": MT10, "mt50": sorted(INSTRUCTIONS)}

CAMERA, STATE, ACTION, SUCCESS = "observation.image", "observation.state", "action", "next.success"
FPS = 80  #: LeRobot's Meta-World env config
#: LeRobot moves corner2 here (as in arXiv 2206.14244) before rendering
CORNER2_POSITION = (0.75, 0.075, 0.7)
MT1_SEED = 42  #: LeRobot builds each task from MT1(task, seed=42)'s first training task
#: the expert classes whose names do not follow Sawyer{Task}V3Policy
POLICY_ALIASES = {"peg-insert-side-v3": "SawyerPegInsertionSideV3Policy"}


@dataclass(frozen=True)
class RenderSettings:
    """How observations are rendered: square ``image_size`` pixels from ``camera``; ``cheap`` drops shadows and
    multisampling (the CPU setting; the scene's own settings otherwise)."""

    image_size: int = 224
    camera: str = "corner2"
    cheap: bool = False

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise UserInputError(f"image size must be at least 8 pixels, got {self.image_size}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict, where: str) -> RenderSettings:
        unknown = sorted(set(obj) - {"image_size", "camera", "cheap"})
        if unknown:
            raise UserInputError(f"{where}: unknown render settings {unknown}")
        return cls(**obj)


def features(image_size: int, camera_dtype: str = "image") -> dict[str, dict]:
    """The dataset's features, as LeRobot's Meta-World env names them (``agent_pos`` -> observation.state)."""
    return {
        CAMERA: {"dtype": camera_dtype, "shape": [image_size, image_size, 3], "names": ["height", "width", "channels"]},
        STATE: {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "gripper"]},
        ACTION: {"dtype": "float32", "shape": [4], "names": ["dx", "dy", "dz", "gripper"]},
        SUCCESS: {"dtype": "bool", "shape": [1], "names": None},
    }


def _canonical(name: str) -> str:
    name = name.strip().lower()
    return name if name.endswith("-v3") else f"{name}-v3"


def resolve_tasks(spec: str | Iterable[str]) -> list[str]:
    """Task names from a comma-separated list of names (``reach``, ``reach-v3``) and group names (easy, medium,
    hard, very_hard, mt10, mt50), in order, without repeats."""
    items = [s for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise UserInputError("no Meta-World tasks given")
    tasks: list[str] = []
    for item in items:
        key = item.strip().lower()
        names = GROUPS[key] if key in GROUPS else [_canonical(key)]
        for name in names:
            if name not in INSTRUCTIONS:
                raise UserInputError(f"unknown Meta-World task or group {item!r}; groups: {', '.join(GROUPS)}; "
                                     f"tasks: {', '.join(sorted(INSTRUCTIONS))}")
            if name not in tasks:
                tasks.append(name)
    return tasks


def difficulty(task: str) -> str:
    return next(group for group, names in DIFFICULTY.items() if task in names)


def setup_gl() -> None:
    """Headless rendering: OSMesa unless the user chose a backend (``MUJOCO_GL=egl`` on a GPU)."""
    backend = os.environ.setdefault("MUJOCO_GL", "osmesa")
    if backend in ("osmesa", "egl"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)


setup_gl()  # before anything imports mujoco, which picks its GL backend once, at import


def _metaworld():
    return require("metaworld", "sim", "Meta-World")


def expert_class(task: str):
    """The scripted expert of ``task`` (``metaworld.policies``)."""
    policies = require("metaworld.policies", "sim", "Meta-World's scripted experts")
    if task in POLICY_ALIASES:
        return getattr(policies, POLICY_ALIASES[task])
    wanted = "sawyer" + task.removesuffix("-v3").replace("-", "") + "v3policy"
    for name in dir(policies):
        if name.lower() == wanted:
            return getattr(policies, name)
    raise UserInputError(f"metaworld.policies has no scripted expert for {task}")


def versions() -> dict[str, str]:
    import mujoco

    return {"metaworld": _version("metaworld"), "mujoco": mujoco.__version__}


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


class MetaWorldEnv:
    """One Meta-World task: ``reset(seed)``, ``observation()``, ``step(action)``, ``expert_action()``; renders only
    when ``render`` settings are given (the expert needs none). ``max_steps`` lowers the env's step limit."""

    def __init__(self, task: str, render: RenderSettings | None = None, max_steps: int | None = None) -> None:
        metaworld = _metaworld()
        self.task, self.instruction, self.settings = task, INSTRUCTIONS[task], render
        benchmark = metaworld.MT1(task, seed=MT1_SEED)
        self.env = benchmark.train_classes[task]()
        self.env.set_task(benchmark.train_tasks[0])
        self.env._freeze_rand_vec = False  # as LeRobot: every reset draws new positions
        self.env.seeded_rand_vec = True  # ... from the env's seeded generator, not numpy's global one
        self.max_steps = int(self.env.max_path_length) if max_steps is None else min(max_steps,
                                                                                     int(self.env.max_path_length))
        self.expert = expert_class(task)()
        self.renderer = None if render is None else self._renderer(render)
        self.steps, self.success, self._obs = 0, False, None

    def _renderer(self, render: RenderSettings):
        import mujoco

        model = self.env.model
        if render.camera == "corner2":
            model.cam_pos[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "corner2")] = CORNER2_POSITION
        if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, render.camera) < 0:
            raise UserInputError(f"{self.task} has no camera {render.camera!r}")
        if render.cheap:
            model.vis.quality.shadowsize, model.vis.quality.offsamples = 0, 0
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, render.image_size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, render.image_size)
        return mujoco.Renderer(model, render.image_size, render.image_size)

    def reset(self, seed: int) -> None:
        """A new episode whose positions ``seed`` fixes. (Meta-World 3.1.1's ``reset`` ignores its ``seed``
        argument, which is all LeRobot's env passes, and draws from numpy's global generator.)"""
        self.env.seed(int(seed))
        self._obs, _ = self.env.reset()
        self.steps, self.success = 0, False

    @property
    def state(self) -> np.ndarray:
        """``agent_pos``: end-effector xyz and gripper opening."""
        return np.asarray(self._obs[:4], dtype=np.float32)

    def image(self) -> np.ndarray:
        """The camera image (uint8 ``(S, S, 3)``), turned 180 degrees for the corner cameras as LeRobot does."""
        if self.renderer is None:
            raise UserInputError("this env was built without render settings")
        self.renderer.update_scene(self.env.data, camera=self.settings.camera)
        image = self.renderer.render()
        return np.ascontiguousarray(np.flip(image, (0, 1))) if self.settings.camera.startswith("corner") else image

    def observation(self) -> dict:
        return {"image": self.image(), "state": self.state, "instruction": self.instruction}

    @property
    def done(self) -> bool:
        return self.success or self.steps >= self.max_steps

    def step(self, action: np.ndarray) -> bool:
        """One step; returns the env's success flag after it (an episode ends there, as in LeRobot's env)."""
        if self.done:
            raise UserInputError(f"{self.task}: step() on a finished episode")
        self._obs, _, _, _, info = self.env.step(np.asarray(action, dtype=np.float32))
        self.steps += 1
        self.success = bool(info.get("success", 0))
        return self.success

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state, clipped to the env's [-1, 1] (as executed)."""
        return np.clip(self.expert.get_action(self._obs), -1.0, 1.0).astype(np.float32)

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
        self.env.close()


def task_slug(task: str) -> str:
    """A file-name-safe form of a task name."""
    return re.sub(r"[^a-z0-9-]", "_", task.lower())
