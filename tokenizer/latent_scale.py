"""The latent scale a latent-diffusion user relies on: ``scaling_factor`` (and ``shift_factor``) of a VAE.

A diffusion model is trained on ``(mode - shift_factor) * scaling_factor``, and its noise schedule assumes
those latents have about unit variance (LDM, Rombach et al. 2022, sec. 4.3.2 and appendix G: the Stable
Diffusion VAE's 0.18215 is 1 / std of its latents on a batch of training images). SD3 and FLUX also
subtract a shift (the latents' mean). This module measures both over a set of images, as the posterior
modes the user will get from ``ImageVAE.encode``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch


@dataclass
class LatentStatistics:
    """Mean and standard deviation of every latent value over the images (all channels pooled).

    count: latent values seen; per_channel_std: for the model card (channels far apart in scale are worth
    knowing about, though one factor is applied to all, as in LDM).
    """

    mean: float
    std: float
    count: int
    per_channel_std: list[float]

    @property
    def scaling_factor(self) -> float:
        return 1.0 / self.std

    @property
    def shift_factor(self) -> float:
        return self.mean


@torch.no_grad()
def latent_statistics(vae, images: Iterable[torch.Tensor]) -> LatentStatistics:
    """Pooled statistics of the *unscaled* posterior modes of ``vae`` (an ``ImageVAE``) over ``images``.

    Args:
        vae: the model; its current scaling/shift are undone, so the result does not depend on them.
        images: (3, H, W) tensors in [0, 1], any sizes.
    """
    scale, shift = vae.config.scaling_factor, vae.config.shift_factor
    total = total_sq = None
    count = 0
    for image in images:
        z = vae.encode(image).double() / scale + shift  # (C, h, w), as the encoder emitted it
        flat = z.reshape(z.shape[0], -1)  # (C, h*w)
        s, sq = flat.sum(dim=1), flat.pow(2).sum(dim=1)
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += flat.shape[1]
    if total is None or count < 2:
        raise ValueError("latent_statistics: no images given (expected at least one)")
    channel_mean = total / count  # (C,)
    channel_var = (total_sq / count - channel_mean.pow(2)).clamp_min(0.0)
    mean = float(total.sum() / (count * len(total)))
    var = float(total_sq.sum() / (count * len(total))) - mean**2
    if not math.isfinite(var) or var <= 0:
        raise ValueError(f"latent_statistics: latent variance {var}; the model's latents are constant or not finite")
    return LatentStatistics(mean, math.sqrt(var), count * len(total), [math.sqrt(float(v)) for v in channel_var])


__all__ = ["LatentStatistics", "latent_statistics"]
