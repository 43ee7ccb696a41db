"""Residual vector quantization (SoundStream, Zeghidour et al. 2021, sec. 3.3; RQ-VAE, Lee et al. 2022).

Depth 0 quantizes the latent, depth k quantizes what depths 0 .. k-1 left: r_0 = z, q_k = VQ_k(r_k),
r_{k+1} = r_k - q_k, and the decoder sees sum_k q_k. Each depth is a ``VectorQuantizer`` (its own codebook,
or one shared by all depths as in RQ-VAE). A grid position has ``depth`` ids, one per depth, so ids are
(B, h, w, depth) with depth last; every depth indexes a codebook of ``vocab_size`` codes.

Quantizer dropout (SoundStream sec. 3.3): in training, each step uses only the first n depths, n drawn
uniformly from 1 .. depth (on rank 0 and broadcast, so that every rank runs the same depths and their
codebook statistics stay in step); ids of the unused depths are -1.

Axis letters: B batch, D channels, h/w grid, K codes per depth, R depths.
"""

from __future__ import annotations

import torch
from torch import nn

from .quantizer_config import ResidualVQConfig
from .quantizer import QuantizerOutput, VectorQuantizer, _broadcast


class ResidualVectorQuantizer(nn.Module):
    """Maps (B, D, h, w) latents to (B, h, w, R) ids of R residual depths.

    Args:
        config: the number of depths, codebook sharing, quantizer dropout and each depth's codebook.
        dim: channels D of the latents.
    """

    def __init__(self, config: ResidualVQConfig, dim: int):
        super().__init__()
        config.validate(dim)
        self.config = config
        self.dim = dim
        self.depth = config.num_depths
        self.vocab_size = config.codebook.codebook_size
        count = 1 if config.shared_codebook else config.num_depths
        self.layers = nn.ModuleList(VectorQuantizer(config.codebook, dim) for _ in range(count))

    def layer(self, k: int) -> VectorQuantizer:
        """The quantizer of depth k."""
        return self.layers[0 if self.config.shared_codebook else k]

    def _active_depths(self) -> int:
        if not (self.training and self.config.quantizer_dropout):
            return self.depth
        n = torch.randint(1, self.depth + 1, (1,), device=self.layers[0].codebook.device)
        return int(_broadcast(n).item())

    @torch.no_grad()
    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latents -> (B, h, w, R) ids."""
        residual = z.float()
        ids = []
        for k in range(self.depth):
            layer = self.layer(k)
            depth_ids = layer.lookup(residual)  # (B, h, w)
            residual = residual - layer.latents_from_ids(depth_ids)
            ids.append(depth_ids)
        return torch.stack(ids, dim=-1)  # (B, h, w, R)

    def latents_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, h, w, R) ids -> (B, D, h, w) latents: the sum of every depth's code."""
        return sum(self.layer(k).latents_from_ids(ids[..., k]) for k in range(ids.shape[-1]))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        active = self._active_depths()
        residual = z.float()
        quantized = torch.zeros_like(residual)
        outs = []
        for k in range(active):
            out = self.layer(k)(residual)
            # Each depth's straight-through output passes the gradient to its input residual, and through
            # r_k = r_{k-1} - sg(q_{k-1}) on to z (as SoundStream's and vector-quantize-pytorch's RVQ).
            quantized = quantized + out.quantized
            residual = residual - out.quantized.detach()
            outs.append(out)
        batch, _, height, width = z.shape
        indices = torch.full((batch, height, width, self.depth), -1, dtype=torch.long, device=z.device)
        for k, out in enumerate(outs):
            indices[..., k] = out.indices

        def total(name: str) -> torch.Tensor:
            return torch.stack([getattr(o, name) for o in outs]).sum()

        counts = torch.stack([o.code_counts for o in outs])  # (R used, K): statistics per depth, averaged
        return QuantizerOutput(quantized, indices, z, total("loss"), total("codebook_loss"),
                               total("commitment_loss"), total("entropy_loss"), counts, self.vocab_size)

    def extra_repr(self) -> str:
        return f"depths={self.depth}, shared_codebook={self.config.shared_codebook}, " \
               f"quantizer_dropout={self.config.quantizer_dropout}"


__all__ = ["ResidualVectorQuantizer"]
