"""vlaser: run, train and evaluate InternVL3 / Vlaser embodied-reasoning VLMs."""

from vlaser.api import VLM, PointAnswer, Session
from vlaser.model.convert import convert_checkpoint
from vlaser.model.loading import load_model
from vlaser.model.preprocess import build_transform, dynamic_preprocess, load_image, load_images, load_video
from vlaser.model.template import multi_image_prefix, video_prefix
from vlaser.points import (
    POINT_PROMPT,
    draw_boxes,
    draw_points,
    parse_boxes,
    parse_points,
    parse_refs,
    point_question,
    text2pts,
    to_pixels,
)

__version__ = "0.1.0"

__all__ = [
    "VLM", "PointAnswer", "Session", "load_model", "convert_checkpoint", "load_image", "load_images", "load_video",
    "dynamic_preprocess", "build_transform", "multi_image_prefix", "video_prefix", "POINT_PROMPT", "point_question",
    "parse_points", "parse_boxes", "parse_refs", "text2pts", "to_pixels", "draw_points", "draw_boxes",
]
