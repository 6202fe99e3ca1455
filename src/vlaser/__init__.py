"""vlaser: run, train and evaluate InternVL3 / Vlaser embodied-reasoning VLMs.

The public names below are imported on first use (PEP 562), so ``import vlaser`` and the ``vlaser`` command's
help and usage errors do not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib

#: each public name -> the module that defines it
_EXPORTS = {
    "VLM": "vlaser.api", "PointAnswer": "vlaser.api", "Session": "vlaser.api",
    "load_model": "vlaser.model.loading", "convert_checkpoint": "vlaser.model.convert",
    **dict.fromkeys(("build_transform", "dynamic_preprocess", "load_image", "load_images", "load_video"),
                    "vlaser.model.preprocess"),
    **dict.fromkeys(("multi_image_prefix", "video_prefix"), "vlaser.model.template"),
    **dict.fromkeys(("POINT_PROMPT", "draw_boxes", "draw_points", "parse_boxes", "parse_points", "parse_refs",
                     "point_question", "text2pts", "to_pixels"), "vlaser.points"),
}

__all__ = [
    "VLM", "PointAnswer", "Session", "load_model", "convert_checkpoint", "load_image", "load_images", "load_video",
    "dynamic_preprocess", "build_transform", "multi_image_prefix", "video_prefix", "POINT_PROMPT", "point_question",
    "parse_points", "parse_boxes", "parse_refs", "text2pts", "to_pixels", "draw_points", "draw_boxes",
]


def __getattr__(name: str):
    if name == "__version__":
        from importlib.metadata import version

        return version("vlaser")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vlaser' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, "__version__"])
