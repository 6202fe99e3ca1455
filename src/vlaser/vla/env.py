"""A language-conditioned closed-loop task rendered in numpy, for the VLA quickstart and tests: "move to the red
disc" with two coloured discs (two of red, green, blue, yellow) and an agent point on a grey table.

Observation: a ``SIZE`` px RGB image and the proprio (the agent's x, y in [0, 1]); action: a 2-D step, each
component clipped to ``MAX_STEP``; success: the agent within ``SUCCESS_RADIUS`` of the named disc's centre
within ``MAX_STEPS`` steps. Everything follows from the episode's seed. ``write_demonstrations`` writes the
scripted expert's episodes as a LeRobot v3.0 dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlaser.drawing import COLOURS
from vlaser.errors import UserInputError

SIZE = 112  #: image side in pixels (the tiny VLA's one tile)
DISC_RADIUS = 0.08  #: in table units ([0, 1] across the image)
AGENT_RADIUS = 0.03
SUCCESS_RADIUS = 0.08
MAX_STEP = 0.15  #: largest |dx| and |dy| of one action
MAX_STEPS = 12
MIN_DISC_GAP = 0.35  #: between the two discs' centres
MIN_START_GAP = 0.3  #: between the agent's start and either disc (an untrained policy seldom stumbles onto one)
PATH_CLEARANCE = 0.14  #: the straight path to either disc keeps this far from the other disc's centre
N_DISCS = 2
BACKGROUND = (110, 110, 110)
AGENT = (255, 255, 255)
FPS = 10
SEED_BLOCK = 1_000_000  #: episodes per seed block (demonstrations and held-out sets never share a seed)
CAMERA, STATE, ACTION = "observation.images.top", "observation.state", "action"
FEATURES = {
    STATE: {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
    ACTION: {"dtype": "float32", "shape": [2], "names": ["dx", "dy"]},
    CAMERA: {"dtype": "image", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"]},
}


NEUTRAL = "move to the disc"  #: an instruction naming no colour (the trained policy's blind check)


def instruction(colour: str) -> str:
    return f"move to the {colour} disc"


def colour_of(text: str) -> str:
    """The colour word of an instruction (the swap test replaces it)."""
    found = [c for c in COLOURS if c in text.split()]
    if len(found) != 1:
        raise UserInputError(f"instruction {text!r} names {len(found)} colours, expected one of {list(COLOURS)}")
    return found[0]


@dataclass(frozen=True)
class Scene:
    """One episode's layout: disc colours and centres, the agent's start and the named disc."""

    colours: tuple[str, ...]
    centres: np.ndarray  #: (N_DISCS, 2)
    start: np.ndarray  #: (2,)
    target: int

    @property
    def instruction(self) -> str:
        return instruction(self.colours[self.target])


def _segment_distance(a: np.ndarray, b: np.ndarray, p: np.ndarray) -> float:
    ab = b - a
    u = np.clip(np.dot(p - a, ab) / np.dot(ab, ab), 0.0, 1.0)
    return float(np.linalg.norm(a + u * ab - p))


def _clear(centres: np.ndarray, start: np.ndarray) -> bool:
    """The agent starts apart from both discs and can go straight to either without touching the other."""
    if np.linalg.norm(centres - start, axis=1).min() < MIN_START_GAP:
        return False
    return all(_segment_distance(start, centres[i], centres[1 - i]) >= PATH_CLEARANCE for i in range(N_DISCS))


def sample_scene(seed: int) -> Scene:
    """The layout of episode ``seed``: discs apart from each other, the agent apart from both, with a clear
    straight path to each (so the named disc is never touched on the way to the other, and vice versa)."""
    rng = np.random.default_rng(seed)
    colours = tuple(str(c) for c in rng.choice(list(COLOURS), N_DISCS, replace=False))
    while True:
        centres = rng.uniform(0.15, 0.85, (N_DISCS, 2))
        if np.linalg.norm(centres[0] - centres[1]) >= MIN_DISC_GAP:
            break
    while True:
        start = rng.uniform(0.05, 0.95, 2)
        if _clear(centres, start):
            break
    return Scene(colours, centres, start, int(rng.integers(N_DISCS)))


_YX = (np.mgrid[0:SIZE, 0:SIZE] + 0.5) / SIZE  # pixel centres in table units


def render(scene: Scene, agent: np.ndarray) -> np.ndarray:
    """The camera image ``(SIZE, SIZE, 3)`` uint8: discs, then the agent (a white dot with a dark ring)."""
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    image[:] = BACKGROUND
    ys, xs = _YX
    for colour, (cx, cy) in zip(scene.colours, scene.centres):
        image[(xs - cx) ** 2 + (ys - cy) ** 2 <= DISC_RADIUS**2] = COLOURS[colour]
    d2 = (xs - agent[0]) ** 2 + (ys - agent[1]) ** 2
    image[d2 <= (AGENT_RADIUS + 1.5 / SIZE) ** 2] = 0
    image[d2 <= AGENT_RADIUS**2] = AGENT
    return image


class ReachEnv:
    """One episode: ``observation()``, ``step(action) -> done``, ``success``, ``reached`` (which disc, if any)."""

    def __init__(self, scene: Scene, text: str | None = None, seed: int = 0) -> None:
        self.scene, self.seed = scene, seed  # the seed also keys the policies' per-episode randomness
        self.instruction = scene.instruction if text is None else text
        self.agent = scene.start.astype(np.float64).copy()
        self.steps = 0
        self.reached: int | None = None  # the first disc the agent came within SUCCESS_RADIUS of

    @classmethod
    def from_seed(cls, seed: int) -> ReachEnv:
        return cls(sample_scene(seed), seed=seed)

    def observation(self) -> dict:
        return {"image": render(self.scene, self.agent), "state": self.agent.astype(np.float32),
                "instruction": self.instruction}

    @property
    def done(self) -> bool:
        return self.reached is not None or self.steps >= MAX_STEPS

    @property
    def success(self) -> bool:
        return self.reached == self.scene.target

    def step(self, action: np.ndarray) -> bool:
        """Move by the clipped ``action``; the episode ends on reaching a disc or after ``MAX_STEPS``."""
        if self.done:
            raise UserInputError("step() on a finished episode")
        self.agent = np.clip(self.agent + np.clip(np.asarray(action, np.float64), -MAX_STEP, MAX_STEP), 0.0, 1.0)
        self.steps += 1
        near = np.flatnonzero(np.linalg.norm(self.scene.centres - self.agent, axis=1) <= SUCCESS_RADIUS)
        if near.size:
            self.reached = int(near[0])
        return self.done


def expert_action(agent: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Straight at ``goal``: the whole way if it fits in one step, else scaled down to the step limit."""
    delta = np.asarray(goal, np.float64) - agent
    largest = np.abs(delta).max()
    return delta if largest <= MAX_STEP else delta * (MAX_STEP / largest)


def demonstration(seed: int):
    """The scripted expert's episode ``seed``: ``(task, images, states, actions)`` up to reaching the disc."""
    from vlaser.vla.data import Episode

    env = ReachEnv.from_seed(seed)
    images, states, actions = [], [], []
    while not env.done:
        obs = env.observation()
        action = expert_action(env.agent, env.scene.centres[env.scene.target]).astype(np.float32)
        images.append(obs["image"])
        states.append(obs["state"])
        actions.append(action)
        env.step(action)  # the action as stored, so a replay of the dataset retraces the episode
    if not env.success:
        raise AssertionError(f"the scripted expert failed episode {seed}")  # cannot happen: a straight line
    return Episode(task=env.instruction, features={STATE: np.stack(states), ACTION: np.stack(actions),
                                                   CAMERA: np.stack(images)})


def demonstration_seeds(n_episodes: int, seed: int) -> list[int]:
    """Episode seeds of a demonstration set; ``heldout_seeds`` draws from a disjoint block."""
    return [2 * seed * SEED_BLOCK + i for i in range(_count(n_episodes))]


def heldout_seeds(n_episodes: int, seed: int) -> list[int]:
    """Episode seeds of the evaluation set that goes with ``demonstration_seeds(..., seed)``."""
    return [(2 * seed + 1) * SEED_BLOCK + i for i in range(_count(n_episodes))]


def _count(n_episodes: int) -> int:
    if not 1 <= n_episodes <= SEED_BLOCK:
        raise UserInputError(f"the number of episodes must be in 1..{SEED_BLOCK}, got {n_episodes}")
    return n_episodes


def write_demonstrations(path: str | Path, n_episodes: int, seed: int = 0) -> Path:
    """``n_episodes`` scripted demonstrations as a LeRobot v3.0 dataset at ``path`` (lossless image frames)."""
    from vlaser.vla.data import write_dataset

    episodes = (demonstration(s) for s in demonstration_seeds(n_episodes, seed))
    return write_dataset(path, episodes, FPS, FEATURES, robot_type="vlaser_reach2d")
