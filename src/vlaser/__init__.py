"""vlaser: run, train and evaluate InternVL3 / Vlaser embodied-reasoning VLMs."""

from vlaser.model.loading import load_model
from vlaser.model.preprocess import build_transform, dynamic_preprocess, load_image, load_images, load_video

__version__ = "0.1.0"

__all__ = ["load_model", "load_image", "load_images", "load_video", "dynamic_preprocess", "build_transform"]
