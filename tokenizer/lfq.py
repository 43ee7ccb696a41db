"""Lookup-free quantization (LFQ, MAGVIT-v2, Yu et al. 2024) and binary spherical quantization (BSQ, Zhao et
al. 2024): each latent channel's sign is one bit of the id, so a d-channel latent has 2^d codes and no
codebook to look up or learn.

LFQ's codes are {-1, +1}^d. BSQ first projects the latent onto the unit sphere and its codes are
{-1/sqrt(d), +1/sqrt(d)}^d, so every code has unit norm and the quantization error is bounded (Zhao et al.
2024, sec. 3.2). Both pass the gradient straight through the sign.

Ids: channel 0 is the most significant bit, a positive channel is a 1 (0 counts as negative), as in
Open-MAGVIT2 and vector-quantize-pytorch's ``LFQ``, whose ids these equal for the same latents.

The entropy penalty (MAGVIT-v2 eq. 5) keeps all codes in use: with soft assignments
p(q | z) ~ exp(-||z - q||^2 / T), loss = E_z[H(p(q | z))] - gamma H(E_z[p(q | z)]), confident per vector
and spread over the batch. The code distance is a sum over channels, so p(q | z) is a product of one
Bernoulli per bit, p(bit_j = 1 | z) = sigmoid(4 s z_j / T) for codes +-s. The first term is then exactly
the sum of the bits' entropies. The second is not a product over bits (the batch average mixes them), and
its exact value needs the (N, 2^d) matrix: 16 GiB for 18 bits and N = 16384. As Open-MAGVIT2, we split the
bits into groups of ``entropy_group_bits`` and add the groups' entropies, each from an (N, 2^g) matrix; the
sum is an upper bound of the joint entropy and equals it when the groups are independent (and when d <= g).

All maths in fp32 with autocast off. Axis letters: B batch, d channels (= bits), h/w grid, N = B*h*w,
G bits per group.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .quantizer_config import BSQConfig, LFQConfig
from .devices import autocast_off
from .quantizer import QuantizerOutput, _distributed, code_counts


def binary_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of Bernoulli(sigmoid(logits)), elementwise, stable for large |logits|."""
    p = torch.sigmoid(logits)
    # -p log p - (1 - p) log(1 - p), with log p = -softplus(-a) and log(1 - p) = -softplus(a).
    return p * F.softplus(-logits) + (1 - p) * F.softplus(logits)


def group_code_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """(N, G) per-bit logits of bit = 1 -> (N, 2^G) log-probabilities of the G-bit codes (bit 0 most significant)."""
    bits = logits.shape[1]
    codes = torch.arange(2**bits, device=logits.device)
    mask = 2 ** torch.arange(bits - 1, -1, -1, device=logits.device)  # (G,)
    table = ((codes[:, None] & mask) != 0).float()  # (2^G, G) bit j of code c
    # log p(c) = sum_j [c_j log sigmoid(a_j) + (1 - c_j) log sigmoid(-a_j)]
    return F.logsigmoid(logits) @ table.t() + F.logsigmoid(-logits) @ (1 - table).t()  # (N, 2^G)


def entropy_terms(logits: torch.Tensor, group_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample and codebook entropy (nats) of independent-bit soft assignments.

    Args:
        logits: (N, d) logit of bit j = 1 for each vector.
        group_bits: bits per group for the codebook entropy (see the module docstring).
    Returns:
        (E_z[H(p(q | z))], sum over groups of H(E_z[p(group code | z)])).
    """
    per_sample = binary_entropy(logits).sum(dim=1).mean()
    codebook = logits.new_zeros(())
    for start in range(0, logits.shape[1], group_bits):
        probs = group_code_log_probs(logits[:, start : start + group_bits]).exp()  # (N, 2^G)
        avg = probs.mean(dim=0)  # (2^G,)
        if _distributed():
            # The batch average over every rank's vectors, with the gradient of this rank's share.
            from torch.distributed.nn.functional import all_reduce

            avg = all_reduce(avg) / torch.distributed.get_world_size()
        codebook = codebook - (avg * torch.log(avg.clamp_min(1e-10))).sum()
    return per_sample, codebook

# Up to this many bits the usage statistics come from a full (2^bits,) histogram, summed over ranks.
HISTOGRAM_MAX_BITS = 24


class LookupFreeQuantizer(nn.Module):
    """Maps (B, d, h, w) latents to sign codes; 2^d codes.

    Args:
        config: commitment and entropy-penalty weights.
        dim: channels d of the latents = bits per id.
    """

    depth = 1
    spherical = False

    def __init__(self, config: LFQConfig, dim: int):
        super().__init__()
        config.validate(dim)
        self.config = config
        self.dim = dim
        self.vocab_size = 2**dim
        # Code values +-scale: 1 for LFQ, 1/sqrt(d) for BSQ (unit-norm codes).
        self.scale = 1.0 / math.sqrt(dim) if self.spherical else 1.0
        self.register_buffer("mask", 2 ** torch.arange(dim - 1, -1, -1), persistent=False)  # (d,) bit weights

    def prepare(self, z: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) -> (N, d) fp32 vectors to quantize (unit norm for BSQ)."""
        x = rearrange(z.float(), "b d h w -> (b h w) d")  # (N, d)
        return F.normalize(x, dim=1) if self.spherical else x

    def _pack(self, x: torch.Tensor) -> torch.Tensor:
        return ((x > 0).long() * self.mask).sum(dim=1)  # (N,)

    def bits(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids (...) -> (..., d) bits, channel 0 first."""
        return (ids[..., None] & self.mask) != 0

    def soft_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) quantizer inputs -> (N, d) logits of bit = 1 under p(q | x) ~ exp(-||x - q||^2 / T)."""
        # ||x - q||^2 differs between q_j = +s and q_j = -s by -4 s x_j.
        return 4 * self.scale * x / self.config.entropy_temperature

    def entropy_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MAGVIT-v2 eq. 5 on (N, d) inputs: (loss, per-sample entropy, codebook entropy)."""
        per_sample, codebook = entropy_terms(self.soft_logits(x), self.config.entropy_group_bits)
        return per_sample - self.config.diversity_gamma * codebook, per_sample, codebook

    @torch.no_grad()
    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) latents -> (B, h, w) ids."""
        with autocast_off(z.device.type):
            ids = self._pack(self.prepare(z))
        return rearrange(ids, "(b h w) -> b h w", b=z.shape[0], h=z.shape[2])

    def latents_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, h, w) ids -> (B, d, h, w) codes +-scale."""
        codes = torch.where(self.bits(ids), self.scale, -self.scale)  # (B, h, w, d)
        return rearrange(codes, "b h w d -> b d h w")

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        batch, _, height, width = z.shape
        cfg = self.config
        with autocast_off(z.device.type):
            x = self.prepare(z)  # (N, d)
            q = torch.where(x > 0, self.scale, -self.scale)  # (N, d)
            ids = self._pack(x)  # (N,)
            commitment = F.mse_loss(x, q)
            entropy = x.new_zeros(())
            if self.training and cfg.entropy_weight > 0:
                entropy, _, _ = self.entropy_loss(x)
            loss = cfg.commitment_beta * commitment + cfg.entropy_weight * entropy
            counts = self._counts(ids)
            # Straight-through estimator (VQ-VAE sec. 3.1) through the sign.
            st = x + (q - x).detach() if x.requires_grad else q
        quantized = rearrange(st, "(b h w) d -> b d h w", b=batch, h=height, w=width)  # (B, d, h, w)
        indices = rearrange(ids, "(b h w) -> b h w", b=batch, h=height, w=width)  # (B, h, w)
        return QuantizerOutput(quantized, indices, z, loss, x.new_zeros(()), commitment, entropy, counts,
                               self.vocab_size)

    def _counts(self, ids: torch.Tensor) -> torch.Tensor:
        if self.dim <= HISTOGRAM_MAX_BITS:
            return code_counts(ids, self.vocab_size, reduce=self.training)  # (2^d,)
        # Beyond 2^24 codes a full histogram is too large: the counts of this rank's used codes only.
        return torch.unique(ids, return_counts=True)[1].float()

    def extra_repr(self) -> str:
        return f"bits={self.dim}, spherical={self.spherical}"


class BinarySphericalQuantizer(LookupFreeQuantizer):
    """LFQ on the unit sphere (BSQ, Zhao et al. 2024): inputs l2-normalised, codes +-1/sqrt(d)."""

    spherical = True

    def __init__(self, config: BSQConfig, dim: int):
        super().__init__(config, dim)


__all__ = ["LookupFreeQuantizer", "BinarySphericalQuantizer", "entropy_terms", "binary_entropy",
           "group_code_log_probs"]
