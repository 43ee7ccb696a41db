"""Losses the field trains tokenizers with. They live here, never in the library.

Each quantizer family's own terms come with its ``QuantizerOutput.loss`` (VQ: codebook + commitment; LFQ and
BSQ: commitment + MAGVIT-v2's entropy penalty, weights in their config; FSQ: none; residual VQ: the sum over
depths), which the trainer adds as is. ``codebook_entropy_loss`` is the optional extra regulariser of
``TrainConfig.entropy_weight``.

Axis letters: B batch, N = B*h*w latent vectors, K codes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokenizer.lfq import LookupFreeQuantizer
from tokenizer.quantizer import VectorQuantizer


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, l1: float, l2: float) -> torch.Tensor:
    """Weighted L1 + L2 between (B, 3, H, W) tensors in [-1, 1], computed in fp32."""
    recon, target = recon.float(), target.float()
    loss = recon.new_zeros(())
    if l1 > 0:
        loss = loss + l1 * (recon - target).abs().mean()
    if l2 > 0:
        loss = loss + l2 * (recon - target).pow(2).mean()
    return loss


class PerceptualLoss(nn.Module):
    """Mean perceptual distance of two (B, 3, H, W) batches in [-1, 1]: frozen, eval mode, fp32.

    LPIPS (Zhang et al. 2018) when its backbone weights are available, else the shift-tolerant LPIPS
    whose weights ship in ``stlpips-pytorch`` (``tokenizer.perceptual`` decides and names it).
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        from tokenizer.perceptual import PerceptualDistance

        self.metric = PerceptualDistance(net)

    @property
    def name(self) -> str:
        return self.metric.name

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.metric(recon, target).mean()


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    # Geometric GAN (Lim & Ye 2017), as VQGAN: max(0, 1 - D(x)) + max(0, 1 + D(G(z))).
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def non_saturating_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    # Goodfellow et al. 2014: -log D(x) - log(1 - D(G(z))), with logits.
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())


def generator_loss(fake: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return -fake.mean()
    if kind == "non_saturating":
        return F.softplus(-fake).mean()
    raise ValueError(f"gan_loss {kind!r}: expected 'hinge' or 'non_saturating'")


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return hinge_d_loss(real, fake)
    if kind == "non_saturating":
        return non_saturating_d_loss(real, fake)
    raise ValueError(f"gan_loss {kind!r}: expected 'hinge' or 'non_saturating'")


def adaptive_gan_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                        max_weight: float) -> torch.Tensor:
    """VQGAN eq. 7: lambda = ||grad_L L_rec|| / (||grad_L L_gan|| + 1e-4) at the decoder's last layer L."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (gan_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


class LeCam(nn.Module):
    """LeCam regularisation (Tseng et al. 2021, eq. 3) with EMA anchors of the discriminator outputs."""

    def __init__(self, decay: float):
        super().__init__()
        self.decay = decay
        self.register_buffer("real_ema", torch.zeros(()))
        self.register_buffer("fake_ema", torch.zeros(()))

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.real_ema.mul_(self.decay).add_(real.float().mean(), alpha=1 - self.decay)
            self.fake_ema.mul_(self.decay).add_(fake.float().mean(), alpha=1 - self.decay)
        return F.relu(real - self.fake_ema).pow(2).mean() + F.relu(self.real_ema - fake).pow(2).mean()


def codebook_entropy_loss(quantizer: nn.Module, z: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy regulariser on soft code assignments (MAGVIT-v2, Yu et al. 2024, eq. 5).

    Low per-vector entropy (confident assignments) and high entropy of the batch-average assignment
    (every code used): loss = E[H(p(k|x))] - H(E[p(k|x)]).

    Args:
        quantizer: a ``VectorQuantizer`` (soft assignment over its K codes, an (N, K) matrix) or an LFQ/BSQ
            quantizer (its own factorised estimate, which never forms (N, 2^bits); its config's temperature).
        z: (B, D, h, w) latents before quantization (``QuantizerOutput.latents``).
        temperature: T in p(k|x) ~ exp(-||x - e_k||^2 / T) for the vector quantizer.
    """
    if isinstance(quantizer, LookupFreeQuantizer):
        with torch.autocast(z.device.type, enabled=False):
            return quantizer.entropy_loss(quantizer.prepare(z))[0]
    if not isinstance(quantizer, VectorQuantizer):
        raise ValueError(
            f"entropy_weight > 0 needs a vector, LFQ or BSQ quantizer; this model has {type(quantizer).__name__} "
            "(FSQ needs no entropy term; residual VQ has one codebook per depth)"
        )
    with torch.autocast(z.device.type, enabled=False):
        x = quantizer.project_in(z)  # (N, E)
        codes = quantizer.codes()  # (K, E)
        logits = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ codes.t() + codes.pow(2).sum(1)) / temperature  # (N, K)
        probs = logits.softmax(dim=1)
        per_sample = -(probs * logits.log_softmax(dim=1)).sum(1).mean()
        avg = probs.mean(0)
        batch_entropy = -(avg * torch.log(avg.clamp_min(1e-10))).sum()
        return per_sample - batch_entropy
