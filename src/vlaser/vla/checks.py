"""Does a VLA config fit its backbone and its dataset? Checked from ``config.json``, the tokenizer and the
dataset's metadata before any weights load; each problem is one line that says what to set. What the backbone
decides (the tile size, the tokens per image) is read from it instead of asked for.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from vlaser.errors import UserInputError
from vlaser.vla.config import VLAConfig

STATE_KEY, ACTION_KEY = "observation.state", "action"
DEFAULT_IMAGE_TOKENS = 256  #: transformers' ``InternVLConfig.image_seq_length`` when a config leaves it out


@dataclass(frozen=True)
class Backbone:
    """What a VLA needs to know of its backbone before loading it."""

    path: Path
    image_size: int  #: the side of one tile in pixels
    image_tokens: int  #: ``<IMG_CONTEXT>`` tokens per tile


def read_backbone(path: str | os.PathLike) -> Backbone:
    """The tile size and tokens per tile of a checkpoint (either layout), from its ``config.json`` alone."""
    from vlaser.model.checkpoint import ORIGINAL, inspect_checkpoint
    from vlaser.model.convert import original_to_hf_config
    from vlaser.model.settings import ProcessorSettings

    info = inspect_checkpoint(path)
    config = original_to_hf_config(info.config, 0) if info.layout == ORIGINAL else info.config
    settings = ProcessorSettings.from_config(config, source=str(info.path / "config.json"))
    return Backbone(info.path, settings.image_size, int(config.get("image_seq_length") or DEFAULT_IMAGE_TOKENS))


def fit_backbone(config: VLAConfig, backbone: Backbone) -> VLAConfig:
    """``config`` with the backbone's tile size; a different explicit ``image_size`` is an error."""
    if config.image_size is None:
        return dataclasses.replace(config, image_size=backbone.image_size)
    if config.image_size != backbone.image_size:
        raise UserInputError(f"the VLA config says image_size={config.image_size} but the backbone {backbone.path} "
                             f"has {backbone.image_size} px tiles: leave image_size out (it is read from the "
                             "backbone)")
    return config


def _dim(data, key: str) -> int:
    shape = data.features[key]["shape"]
    return int(shape[0]) if len(shape) == 1 else -1


def fit_dataset(config: VLAConfig, data, cameras: list[str] | None = None) -> VLAConfig:
    """``config`` with the cameras trained on recorded (``cameras`` of the dataset's, default all); state or action
    sizes that differ, or other cameras than a trained policy's, are an error naming the setting."""
    for key, name in ((STATE_KEY, "proprio_dim"), (ACTION_KEY, "action_dim")):
        if key not in data.features:
            raise UserInputError(f"{data.root}: no feature {key!r} (features: {', '.join(data.features)})")
        size, want = _dim(data, key), getattr(config, name)
        if size != want:
            raise UserInputError(f"{data.root}: {key} has shape {data.features[key]['shape']} but the VLA config "
                                 f"says {name}={want}: set config: {{{name}: {size}}}")
    if not data.cameras:
        raise UserInputError(f"{data.root}: no camera feature; the VLA needs at least one image per frame")
    unknown = [key for key in cameras or [] if key not in data.cameras]
    if unknown:
        raise UserInputError(f"{data.root}: no camera {unknown[0]!r} (cameras: {', '.join(data.cameras)}): set "
                             "cameras to some of those")
    cameras = {key: [int(n) for n in data.features[key]["shape"][:2]] for key in cameras or data.cameras}
    if config.cameras is not None and list(config.cameras) != list(cameras):
        raise UserInputError(f"{data.root}: cameras {list(cameras)}, but the policy was trained on "
                             f"{list(config.cameras)}: train it on a dataset with those cameras")
    return dataclasses.replace(config, cameras=cameras)


def check_prefix(config: VLAConfig, collator, tasks: list[str], cameras: int) -> None:
    """Every task's prompt with ``cameras`` images fits ``prefix_len``; else one line with the length to set."""
    if not tasks:
        return
    longest = max(tasks, key=lambda task: collator.prompt_length(cameras, task))
    need = collator.prompt_length(cameras, longest)
    if need > config.prefix_len:
        raise UserInputError(f"prefix_len={config.prefix_len} is too short: {cameras} camera(s) of "
                             f"{collator.num_image_token} image tokens and the longest task ({longest!r}) make a "
                             f"{need}-token prompt; set config: {{prefix_len: {need}}}")
