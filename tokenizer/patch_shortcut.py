"""A linear path from f x f pixel patches to the latent and back, initialised to whitened patch PCA.

Why: issue 12 asked what held the bundled VAE back. The measurement: four principal components of 8 x 8
patches (a *linear* autoencoder, fitted on 40 training photos, coefficients unquantised) reconstruct Kodak-24
at 23.61 dB and the 5 held-out photos at 25.37 dB, while the bundled VAE v2 (133 CPU-minutes of training)
scores 23.63 and 24.04: the convolutional trunk, trained on a CPU budget, had not yet found even the best
linear map through a 4-channel f8 bottleneck. With this shortcut the model *starts* at that linear
solution and the trunk learns only what is left: ``mean = trunk(x) + E(patches(x))`` and
``image = trunk(z) + D(z)`` put back as patches. It extends DC-AE's non-parametric space-to-channel
shortcuts (Chen et al. 2024, sec. 3.1; ``resample_shortcut``) from channel averaging to the optimal linear
map, much as residual learning (He et al. 2016) makes the identity the starting point.

Initialisation is data-dependent, like the quantizer's k-means: the first training batch's patches fix the
PCA (rank 0's, broadcast to every rank), and an ``initialized`` buffer saved with the weights stops it from
running again. The whitening (each component divided by its standard deviation) gives latents of unit
variance per channel from the start, so the posterior noise and the KL term weigh every channel alike.

Axis letters: B batch, P = channels * f * f patch values, D latent channels, h/w latent grid, N patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .quantizer import _broadcast

# Components whose variance is below this (in [-1, 1] pixel units squared) are not whitened up to unit
# variance: a constant training batch would otherwise scale noise by 1/sqrt(0).
MIN_COMPONENT_VARIANCE = 1e-6
# Row band (in latent rows) for reading a tiled ``PixelSource``: never the whole image in float at once.
SOURCE_BAND_ROWS = 64


class LinearPatchShortcut(nn.Module):
    """E: (B, C, H, W) -> (B, D, H/f, W/f) and D: (B, D, h, w) -> (B, C, h*f, w*f), both linear per patch.

    Args:
        factor: patch side f (the model's downsampling factor).
        channels: image channels C.
        latent_channels: D.
    """

    def __init__(self, factor: int, channels: int, latent_channels: int):
        super().__init__()
        self.factor = factor
        patch = channels * factor * factor
        if latent_channels > patch:
            raise ValueError(f"LinearPatchShortcut: {latent_channels} latent channels from {patch}-value patches; "
                             f"expected at most {patch}")
        self.encode_proj = nn.Conv2d(patch, latent_channels, 1)
        self.decode_proj = nn.Conv2d(latent_channels, patch, 1)
        for conv in (self.encode_proj, self.decode_proj):  # a no-op until initialised from data
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.long))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) with H, W multiples of f -> (B, D, H/f, W/f)."""
        return self.encode_proj(F.pixel_unshuffle(x, self.factor))  # (B, P, h, w) -> (B, D, h, w)

    def encode_source(self, source) -> torch.Tensor:
        """The same from a ``tokenizer.tiling.PixelSource``, one band of rows at a time."""
        _, _, height, width = source.shape
        band = SOURCE_BAND_ROWS * self.factor
        parts = [self.encode(source.crop(top, min(top + band, height), 0, width)) for top in range(0, height, band)]
        return torch.cat(parts, dim=2)  # (B, D, h, w)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, C, h*f, w*f)."""
        return F.pixel_shuffle(self.decode_proj(z), self.factor)  # (B, P, h, w) -> (B, C, h*f, w*f)

    @torch.no_grad()
    def fit_pca(self, x: torch.Tensor) -> None:
        """Set E and D to the whitened PCA of ``x``'s patches (rank 0's batch on every rank).

        E(p) = diag(s)^-1 U^T (p - m) and D(z) = U diag(s) z + m, with U the top-D eigenvectors of the patch
        covariance, s their standard deviations and m the mean patch: D(E(p)) is the best rank-D linear
        reconstruction of p in mean squared error (Eckart-Young), and E's outputs have unit variance.
        """
        patches = F.pixel_unshuffle(x.detach().float(), self.factor)  # (B, P, h, w)
        patches = patches.permute(0, 2, 3, 1).reshape(-1, patches.shape[1]).double()  # (N, P)
        mean = patches.mean(dim=0)  # (P,)
        centred = patches - mean
        cov = centred.t() @ centred / max(1, patches.shape[0] - 1)  # (P, P)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        order = torch.argsort(eigvals, descending=True)[: self.encode_proj.out_channels]
        basis = eigvecs[:, order]  # (P, D)
        std = eigvals[order].clamp_min(MIN_COMPONENT_VARIANCE).sqrt()  # (D,)
        enc_w = basis.t() / std[:, None]  # (D, P)
        dec_w = basis * std[None, :]  # (P, D)
        values = torch.cat([enc_w.reshape(-1), (-enc_w @ mean), dec_w.reshape(-1), mean]).float()
        values = _broadcast(values.to(x.device).contiguous())  # identical on all ranks
        sizes = [enc_w.numel(), enc_w.shape[0], dec_w.numel(), mean.numel()]
        e_w, e_b, d_w, d_b = values.split(sizes)
        self.encode_proj.weight.copy_(e_w.view_as(self.encode_proj.weight))
        self.encode_proj.bias.copy_(e_b)
        self.decode_proj.weight.copy_(d_w.view_as(self.decode_proj.weight))
        self.decode_proj.bias.copy_(d_b)
        self.initialized.fill_(1)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


__all__ = ["LinearPatchShortcut"]
