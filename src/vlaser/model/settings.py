"""The processor settings a checkpoint carries: how its images are tiled and which template its prompts use.

InternVL's fine-tune script writes ``force_image_size``, ``min_dynamic_patch``, ``max_dynamic_patch``,
``use_thumbnail``, ``dynamic_image_size`` and ``template`` into ``config.json`` (top-level in the original
layout; vlaser's transformers-layout files keep them under ``internvl_chat``). They are read here, in one
place, so ``chat``, ``VLM``, ``vlaser chat`` and the server cut an image the way the model was trained to
see it; a caller's explicit argument still wins, and benchmark protocols always pass their own values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from vlaser.model.checkpoint import CheckpointError
from vlaser.model.convert import DEFAULT_CHAT_SETTINGS
from vlaser.model.template import get_template

#: Field -> InternVL's config key (also the ``vlaser train`` flag that sets it).
CONFIG_KEYS = {
    "image_size": "force_image_size",
    "min_dynamic_patch": "min_dynamic_patch",
    "max_dynamic_patch": "max_dynamic_patch",
    "use_thumbnail": "use_thumbnail",
    "dynamic": "dynamic_image_size",
    "template": "template",
    "system_message": "system_message",
}


@dataclass(frozen=True)
class ProcessorSettings:
    """Tiling and prompt settings of one checkpoint; the defaults are InternVL3's released ``config.json``.

    ``system_message`` None means the template's own. Bad values raise ``ValueError`` naming the config key.
    """

    image_size: int = 448
    min_dynamic_patch: int = DEFAULT_CHAT_SETTINGS["min_dynamic_patch"]
    max_dynamic_patch: int = DEFAULT_CHAT_SETTINGS["max_dynamic_patch"]
    use_thumbnail: bool = DEFAULT_CHAT_SETTINGS["use_thumbnail"]
    dynamic: bool = DEFAULT_CHAT_SETTINGS["dynamic_image_size"]
    template: str = DEFAULT_CHAT_SETTINGS["template"]
    system_message: str | None = None

    def __post_init__(self) -> None:
        for name in ("image_size", "min_dynamic_patch", "max_dynamic_patch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{CONFIG_KEYS[name]} must be an integer >= 1, got {value!r}")
        for name in ("use_thumbnail", "dynamic"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{CONFIG_KEYS[name]} must be true or false, got {getattr(self, name)!r}")
        if self.min_dynamic_patch > self.max_dynamic_patch:
            raise ValueError(f"min_dynamic_patch {self.min_dynamic_patch} is larger than max_dynamic_patch "
                             f"{self.max_dynamic_patch}")
        if not isinstance(self.template, str):
            raise ValueError(f"template must be a template name, got {self.template!r}")
        get_template(self.template)  # an unknown name fails here, listing the known ones
        if self.system_message is not None and not isinstance(self.system_message, str):
            raise ValueError(f"system_message must be text, got {self.system_message!r}")

    @property
    def max_tiles(self) -> int:
        """The tile limit of an image when neither the caller nor a protocol sets one: ``max_dynamic_patch``,
        or one tile without dynamic tiling (the config's names stay as InternVL writes them)."""
        return self.max_dynamic_patch if self.dynamic else 1

    def min_tiles(self, max_tiles: int) -> int:
        """The least number of grid tiles under a limit of ``max_tiles`` (``min_dynamic_patch``, capped to fit)."""
        return min(self.min_dynamic_patch, max_tiles)

    @classmethod
    def from_config(cls, config, source: str = "config.json") -> ProcessorSettings:
        """Read a ``config.json`` dict of either layout, or a loaded transformers config.

        Keys under ``internvl_chat`` win over top-level ones; a missing or null key takes InternVL3's
        default. The tile size is ``force_image_size``, else the vision tower's ``image_size``; the two
        must agree when both are given. Bad values raise ``CheckpointError`` naming ``source`` and the key.
        """
        top, vision_size = _top_level(config)
        values = {key: top[key] for key in CONFIG_KEYS.values() if top.get(key) is not None}
        nested = top.get("internvl_chat") or {}
        values.update({key: nested[key] for key in CONFIG_KEYS.values() if nested.get(key) is not None})
        try:
            vision_size = _square_size(vision_size)
            forced = values.pop("force_image_size", None)
            if forced is not None and vision_size is not None and forced != vision_size:
                raise ValueError(f"force_image_size {forced!r} differs from vision_config.image_size {vision_size}")
            size = forced if forced is not None else vision_size
            by_field = {name: values[key] for name, key in CONFIG_KEYS.items() if key in values}
            return cls(**by_field, **({} if size is None else {"image_size": size}))
        except ValueError as e:
            raise CheckpointError(f"{source}: {e}") from None

    def to_config(self) -> dict:
        """The settings under InternVL's config keys (``system_message`` only when it replaces the template's)."""
        out = {CONFIG_KEYS[f.name]: getattr(self, f.name) for f in fields(self)}
        if self.system_message is None:
            del out["system_message"]
        return out

    def summary(self) -> str:
        """One line for logs and ``vlaser info``."""
        tiles = f"{self.min_dynamic_patch}-{self.max_dynamic_patch} tiles" if self.dynamic else \
            "1 tile (dynamic_image_size off)"
        thumbnail = "with" if self.use_thumbnail else "without"
        system = "template default" if self.system_message is None else "custom"
        return (f"{self.image_size} px, {tiles} per image, {thumbnail} thumbnail; template {self.template} "
                f"({system} system message)")


def _top_level(config) -> tuple[Mapping, object]:
    """The top-level keys and the vision tower's ``image_size`` of a dict or of a transformers config object."""
    if isinstance(config, Mapping):
        return config, (config.get("vision_config") or {}).get("image_size")
    keys = (*CONFIG_KEYS.values(), "internvl_chat")
    top = {key: getattr(config, key) for key in keys if hasattr(config, key)}
    return top, getattr(getattr(config, "vision_config", None), "image_size", None)


def _square_size(size) -> int | None:
    """``448`` or transformers' ``[448, 448]`` as 448; tiles are square, so a non-square size is an error."""
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"vision_config.image_size {list(size)} is not square; InternVL tiles are square")
        size = size[0]
    return size
