"""Finite scalar quantization (FSQ, Mentzer et al. 2023): no codebook, each channel rounded to a few levels.

Channel i of the latent is bounded to (L_i - 1) / 2 around zero by a scaled tanh and rounded to the nearest
integer, so it takes exactly L_i values; the code is the tuple of those values, prod(L_i) codes in all. The
gradient passes the rounding straight through. There is no codebook to learn and no auxiliary loss
(Mentzer et al. 2023, sec. 3), which is why FSQ trains without collapse.

Ids pack the channels' digits (the rounded value shifted to 0 .. L_i - 1) in mixed radix, channel 0 the
least significant digit: id = sum_i digit_i * prod_{j < i} L_j. This is the order of the paper's code
and of vector-quantize-pytorch's ``FSQ``, whose ids these equal for the same latents.

All maths in fp32 with autocast off. Axis letters: B batch, D channels (= len(levels)), h/w grid, N = B*h*w.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from .config import FSQConfig
from .quantizer import QuantizerOutput, code_counts, code_statistics

# Widens the tanh's range a little so that the extreme levels are reached at finite inputs (as the paper's code).
BOUND_EPS = 1e-3


class FiniteScalarQuantizer(nn.Module):
    """Maps (B, D, h, w) latents to FSQ codes; D = len(levels).

    Args:
        config: the levels per channel.
        dim: channels D of the latents (must equal len(config.levels)).
    """

    depth = 1

    def __init__(self, config: FSQConfig, dim: int):
        super().__init__()
        config.validate(dim)
        self.config = config
        self.dim = dim
        levels = torch.tensor(config.levels, dtype=torch.long)
        # Derived from the config, so not saved with the weights.
        self.register_buffer("levels", levels, persistent=False)  # (D,)
        self.register_buffer("basis", torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), 0),
                             persistent=False)  # (D,) digit weights, channel 0 least significant
        self.vocab_size = math.prod(config.levels)

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, D) in (-L/2, L/2): rounds to L integers, -(L//2) .. (L-1)//2 (Mentzer et al. 2023, sec. 3).

        For odd L, tanh(x) (L - 1)/2 rounds to -(L-1)/2 .. (L-1)/2. For even L the range is shifted by
        half a step so that it rounds to -L/2 .. L/2 - 1 with x = 0 still inside the central bin.
        """
        levels = self.levels.float()
        half = (levels - 1) * (1 + BOUND_EPS) / 2  # (D,)
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)  # (D,)
        shift = torch.atanh(offset / half)
        return torch.tanh(x + shift) * half - offset

    def _digits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) fp32 latents -> (N, D) rounded values in -(L//2) .. (L-1)//2, straight-through gradient."""
        bounded = self.bound(x)
        # Straight-through rounding: round() in the forward pass, identity in the backward pass.
        return bounded + (bounded.round() - bounded).detach()

    def _to_codes(self, rounded: torch.Tensor) -> torch.Tensor:
        """Rounded values -> codes in [-1, 1] (divided by L // 2, as the paper)."""
        return rounded / (self.levels // 2).float()

    def _pack(self, rounded: torch.Tensor) -> torch.Tensor:
        """(N, D) rounded values -> (N,) ids (mixed radix, channel 0 least significant)."""
        digits = rounded.detach().round().long() + self.levels // 2  # (N, D) in 0 .. L-1
        return (digits * self.basis).sum(dim=1)

    def unpack(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids (...) -> (..., D) digits in 0 .. L_i - 1."""
        return (ids[..., None] // self.basis) % self.levels

    @torch.no_grad()
    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latents -> (B, h, w) ids."""
        with torch.autocast(z.device.type, enabled=False):
            x = rearrange(z.float(), "b d h w -> (b h w) d")  # (N, D)
            ids = self._pack(self.bound(x).round())  # (N,)
        return rearrange(ids, "(b h w) -> b h w", b=z.shape[0], h=z.shape[2])

    def ids_from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) codes (as ``latents_from_ids`` gives them) -> (B, h, w) ids; its inverse."""
        rounded = rearrange(codes.float(), "b d h w -> b h w d") * (self.levels // 2).float()
        return (rounded.round().long() + self.levels // 2).mul(self.basis).sum(dim=-1)

    def latents_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, h, w) ids -> (B, D, h, w) codes in [-1, 1]."""
        rounded = (self.unpack(ids) - self.levels // 2).float()  # (B, h, w, D)
        return rearrange(self._to_codes(rounded), "b h w d -> b d h w")

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        batch, _, height, width = z.shape
        with torch.autocast(z.device.type, enabled=False):
            x = rearrange(z.float(), "b d h w -> (b h w) d")  # (N, D)
            rounded = self._digits(x)  # (N, D)
            ids = self._pack(rounded)  # (N,)
            codes = self._to_codes(rounded)  # (N, D)
            perplexity, usage = code_statistics(code_counts(ids, self.vocab_size, reduce=self.training))
            zero = codes.new_zeros(())
        quantized = rearrange(codes, "(b h w) d -> b d h w", b=batch, h=height, w=width)  # (B, D, h, w)
        indices = rearrange(ids, "(b h w) -> b h w", b=batch, h=height, w=width)  # (B, h, w)
        return QuantizerOutput(quantized, indices, z, zero, zero, zero, zero, perplexity, usage)

    def extra_repr(self) -> str:
        return f"levels={list(self.config.levels)}, vocab_size={self.vocab_size}, bits_per_token={math.log2(self.vocab_size):.2f}"


__all__ = ["FiniteScalarQuantizer"]
