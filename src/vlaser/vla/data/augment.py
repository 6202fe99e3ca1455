"""Octo's image augmentation, the one the release trains with (V: ``Vlaser_VLA/Simpler/src/agent/dataset.py``, the
``primary`` camera; the ops are ``src/data/dlimp/augmentations.py`` and TensorFlow's ``tf.image``), in torch.

In order, each result clipped to [0, 1]: a random resized crop (area 0.8-1.0 of the frame, aspect 0.9-1.1,
sampled bilinearly back to the frame's size as ``tf.image.crop_and_resize`` samples), brightness (+-0.1), contrast
(x0.9-1.1 around each channel's mean), saturation (x0.9-1.1 in HSV) and hue (+-0.05 of the colour circle). Training
only: ``ActionChunkDataset`` applies it to the frames it serves; inference never sees it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class AugmentParams:
    """One draw: the crop box as fractions of the frame ``(top, left, height, width)`` and the colour changes."""

    box: tuple[float, float, float, float]
    brightness: float
    contrast: float
    saturation: float
    hue: float


@dataclass(frozen=True)
class ImageAugmentation:
    """The release's ranges (Octo's defaults for the primary camera)."""

    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.1
    contrast: tuple[float, float] = (0.9, 1.1)
    saturation: tuple[float, float] = (0.9, 1.1)
    hue: float = 0.05

    def sample(self, generator: torch.Generator | None = None) -> AugmentParams:
        """Draw the parameters (from torch's RNG, so each DataLoader worker draws its own)."""
        u = torch.rand(8, generator=generator, dtype=torch.float64).tolist()
        scale = _between(u[0], *self.crop_scale)
        ratio = math.exp(_between(u[1], math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])))
        height, width = min(math.sqrt(scale / ratio), 1.0), min(math.sqrt(scale * ratio), 1.0)
        box = (u[2] * (1 - height), u[3] * (1 - width), height, width)
        return AugmentParams(box=box, brightness=_between(u[4], -self.brightness, self.brightness),
                             contrast=_between(u[5], *self.contrast), saturation=_between(u[6], *self.saturation),
                             hue=_between(u[7], -self.hue, self.hue))

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        return Image.fromarray(apply(np.asarray(image.convert("RGB")), self.sample(generator)))


def _between(u: float, low: float, high: float) -> float:
    return low + (high - low) * u


def apply(frame: np.ndarray, params: AugmentParams) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 frame through the five ops, back to uint8 as ``tf.image.convert_image_dtype`` does."""
    x = torch.tensor(frame).permute(2, 0, 1).float() / 255.0
    x = crop_resize(x, params.box).clamp(0, 1)
    x = (x + params.brightness).clamp(0, 1)
    mean = x.mean(dim=(1, 2), keepdim=True)
    x = ((x - mean) * params.contrast + mean).clamp(0, 1)
    h, s, v = rgb_to_hsv(x)
    x = hsv_to_rgb(h, (s * params.saturation).clamp(0, 1), v).clamp(0, 1)
    h, s, v = rgb_to_hsv(x)
    x = hsv_to_rgb(torch.remainder(h + params.hue, 1.0), s, v).clamp(0, 1)
    return (x * 255.5).to(torch.uint8).permute(1, 2, 0).numpy()


def crop_resize(x: torch.Tensor, box: tuple[float, float, float, float]) -> torch.Tensor:
    """``(3, H, W)``: the box (fractions) sampled bilinearly at ``H x W`` points from corner pixel to corner pixel."""
    top, left, height, width = box
    _, h, w = x.shape
    ys = torch.linspace(2 * top - 1, 2 * (top + height) - 1, h, dtype=torch.float64)
    xs = torch.linspace(2 * left - 1, 2 * (left + width) - 1, w, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None].float()
    return torch.nn.functional.grid_sample(x[None], grid, mode="bilinear", align_corners=True)[0]


def rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in [0, 1), saturation and value of a ``(3, H, W)`` image in [0, 1]."""
    r, g, b = x
    v, _ = x.max(0)
    delta = v - x.min(0)[0]
    s = torch.where(v > 0, delta / v.clamp(min=1e-12), torch.zeros_like(v))
    safe = delta.clamp(min=1e-12)
    h = torch.where(v == r, (g - b) / safe, torch.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(delta > 0, torch.remainder(h / 6, 1.0), torch.zeros_like(h))
    return h, s, v


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`rgb_to_hsv`."""
    k = torch.stack([torch.remainder(n + h * 6, 6) for n in (5.0, 3.0, 1.0)])
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)
