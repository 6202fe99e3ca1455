"""Flow matching in the release's convention (open-pi-zero's) and in openpi's, and the sinusoidal time embedding.

release: ``x_t = (1 - (1 - s) t) eps + t A`` (``s`` = ``flow_sig_min``), target ``A - (1 - s) eps``, ``t = 0.999
(1 - z)``, ``z ~ Beta(1.5, 1)``; sampling integrates ``t`` from 0 (noise) up to 1.
openpi: ``x_t = t eps + (1 - t) A``, target ``eps - A``, ``t = 0.999 z + 0.001``; sampling integrates from 1 down to 0.
At ``s = 0`` the two describe the same path under ``t_openpi = 1 - t_release``, with opposite velocities.
"""

from __future__ import annotations

import math

import torch

#: Beta(1.5, 1) by inversion: its CDF is z^1.5, so z = u^(2/3) (a generator-driven, exact sampler).
BETA_ALPHA = 1.5
TIME_SCALE = 0.999
#: openpi's smallest time-embedding period (``posemb_sincos(..., min_period=4e-3, max_period=4.0)``).
OPENPI_MIN_PERIOD = 4e-3


def sample_time(n: int, convention: str, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Training times, denser where the sample is noisy (``z ~ Beta(1.5, 1)``) in both conventions."""
    u = torch.rand(n, generator=generator, device=device)
    z = u ** (1.0 / BETA_ALPHA)
    return TIME_SCALE * (1 - z) if convention == "release" else TIME_SCALE * z + (1 - TIME_SCALE)


def _bt(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, 1, 1)


def interpolate(noise: torch.Tensor, actions: torch.Tensor, t: torch.Tensor, convention: str,
                sig_min: float) -> torch.Tensor:
    """The noisy chunk ``x_t`` at per-sample times ``t`` (shape ``(B,)``)."""
    t = _bt(t)
    if convention == "release":
        return (1 - (1 - sig_min) * t) * noise + t * actions
    return t * noise + (1 - t) * actions


def velocity_target(noise: torch.Tensor, actions: torch.Tensor, convention: str, sig_min: float) -> torch.Tensor:
    """What the expert regresses: ``d x_t / d t`` of the convention's path."""
    if convention == "release":
        return actions - (1 - sig_min) * noise
    return noise - actions


def euler_schedule(steps: int, convention: str) -> tuple[float, float]:
    """``(t at the noise end, dt)``: the release steps up from 0, openpi down from 1."""
    return (0.0, 1.0 / steps) if convention == "release" else (1.0, -1.0 / steps)


def time_embedding(t: torch.Tensor, dim: int, max_period: float, convention: str) -> torch.Tensor:
    """``(B, dim)`` sine-cosine embedding of ``t``: open-pi-zero's ``SinusoidalPosEmb`` (frequencies
    ``exp(-i log(max_period) / (dim/2 - 1))``) or openpi's ``posemb_sincos`` (periods from 4e-3 to ``max_period``)."""
    half = dim // 2
    if convention == "release":
        steps = torch.arange(half, device=t.device, dtype=torch.float32)
        freq = torch.exp(steps * -(math.log(max_period) / (half - 1)))
    else:
        fraction = torch.linspace(0.0, 1.0, half, device=t.device, dtype=torch.float32)
        freq = 2 * math.pi / (OPENPI_MIN_PERIOD * (max_period / OPENPI_MIN_PERIOD) ** fraction)
    angle = t.float()[:, None] * freq[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=-1).to(t.dtype)


def release_time_to_openpi(t: torch.Tensor) -> torch.Tensor:
    """The openpi time of the same point on the path (exact inverse of itself)."""
    return 1 - t
