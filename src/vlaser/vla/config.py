"""``VLAConfig``: everything that decides the VLA's numbers, with the release's presets.

The release (Vlaser_VLA/Simpler, an open-pi-zero fork) fixes: expert width 768 (MLP 8960 for 2B, 5600 for 8B),
chunk 4, a 384-token prefix, sigma 0.001, ``t = 0.999 (1 - z)`` with ``z ~ Beta(1.5, 1)``, time period 100,
10 Euler steps, positions restarting after the prefix and a literal "None" system message.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from vlaser.errors import UserInputError

FLOWS = ("release", "openpi")
POSITIONS = ("restart", "contiguous")


@dataclass
class VLAConfig:
    """The VLA's shape and conventions; saved as ``vla_config.json`` beside the VLM."""

    proprio_dim: int = 7
    action_dim: int = 7
    chunk_size: int = 4
    act_steps: int = 4
    #: Octo's sticky gripper (repeat a gripper flip this many steps; 0: off), used by the robot adapter.
    sticky_gripper_steps: int = 0
    prefix_len: int = 384
    expert_hidden_size: int = 768
    expert_intermediate_size: int = 8960
    flow: str = "release"
    flow_sig_min: float = 0.001
    time_max_period: float = 100.0
    num_inference_steps: int = 10
    final_action_clip: float = 1.0
    positions: str = "restart"
    system_message: str = "None"
    #: the tile side in pixels; None: the backbone's (read from it when the policy is built; see ``vla.checks``)
    image_size: int | None = None
    #: the cameras trained on, in order, as ``{name: [height, width]}``; None: not recorded (set from the dataset)
    cameras: dict[str, list[int]] | None = None
    #: ``<a0>``..``<a{n-1}>`` tokens the release adds to the vocabulary (and the embeddings) before training.
    num_action_tokens_added: int = 256

    def __post_init__(self) -> None:
        if self.flow not in FLOWS:
            raise UserInputError(f"flow must be one of {FLOWS}, got {self.flow!r}")
        if self.positions not in POSITIONS:
            raise UserInputError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if not 1 <= self.act_steps <= self.chunk_size:
            raise UserInputError(f"act_steps must be in 1..chunk_size={self.chunk_size}, got {self.act_steps}")
        if self.num_inference_steps < 1:
            raise UserInputError(f"num_inference_steps must be at least 1, got {self.num_inference_steps}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict, where: str = "vla_config.json") -> VLAConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise UserInputError(f"{where}: unknown keys {unknown}")
        return cls(**obj)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> VLAConfig:
        try:
            obj = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserInputError(f"{path}: cannot read the VLA config ({e})") from e
        return cls.from_json(obj, str(path))


def _preset(**overrides) -> VLAConfig:
    return VLAConfig(**overrides)


#: Named configurations: the release's two SimplerEnv policies, openpi's conventions, and a test-sized one.
PRESETS = {
    # WidowX: proprio xyz + rpy + gripper openness; 4 of the 4 predicted actions executed
    "vlaser_2b_bridge": lambda: _preset(proprio_dim=7, act_steps=4),
    # Google robot: proprio xyz + quaternion xyzw + gripper closedness; 2 executed; Octo's sticky gripper (15)
    "vlaser_2b_fractal": lambda: _preset(proprio_dim=8, act_steps=2, sticky_gripper_steps=15),
    "vlaser_8b_bridge": lambda: _preset(proprio_dim=7, act_steps=4, expert_intermediate_size=5600),
    # openpi's flow convention, time embedding and contiguous positions, on the release's shapes
    "openpi": lambda: _preset(flow="openpi", positions="contiguous", time_max_period=4.0, flow_sig_min=0.0,
                              num_action_tokens_added=0),
    # for the tiny backbone of vlaser.model.tiny; for tests and the quickstart
    "tiny": lambda: _preset(proprio_dim=4, action_dim=2, chunk_size=4, act_steps=4, prefix_len=64,
                            expert_hidden_size=32, expert_intermediate_size=64, num_action_tokens_added=0),
}


def preset(name: str, **overrides) -> VLAConfig:
    """A named configuration, with fields overridden (``preset("tiny", action_dim=3)``)."""
    if name not in PRESETS:
        raise UserInputError(f"unknown VLA preset {name!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name](), **overrides)
