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
from tokenizer.quantizer import QuantizerOutput, VectorQuantizer


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, l1: float, l2: float) -> torch.Tensor:
    """Weighted L1 + L2 between (B, 3, H, W) tensors in [-1, 1], computed in fp32."""
    recon, target = recon.float(), target.float()
    loss = recon.new_zeros(())
    if l1 > 0:
        loss = loss + l1 * (recon - target).abs().mean()
    if l2 > 0:
        loss = loss + l2 * (recon - target).pow(2).mean()
    return loss


def patch_colour_loss(recon: torch.Tensor, target: torch.Tensor, size: int) -> torch.Tensor:
    """L1 between the mean colours of ``size`` x ``size`` patches of two (B, 3, H, W) tensors, in fp32.

    Why: at a low rate, a pixel loss lets the decoder regress towards the training set's average colour
    where the code cannot tell a saturated patch from a pale one, and the reconstructions lose saturation
    (the bundled tokenizer kept 77% of the mean CIE chroma of a saturated held-out photo, where JPEG at the
    same bits kept all of it: JPEG codes every 8 x 8 block's mean exactly, as its DC coefficient). This term
    weights the patch means on their own, so the code spends bits on them. Patches of the model's f make it
    the colour each token stands for; edges that do not fill a patch are dropped.
    """
    recon, target = recon.float(), target.float()
    pooled = F.avg_pool2d(torch.cat([recon, target]), size)  # (2B, 3, H // size, W // size)
    mean_recon, mean_target = pooled.chunk(2)
    return (mean_recon - mean_target).abs().mean()


class PerceptualLoss(nn.Module):
    """Mean perceptual distance of two (B, 3, H, W) batches in [-1, 1]: frozen, eval mode, fp32 unless
    ``compute_dtype`` is torch.bfloat16 (TrainConfig.perceptual_amp).

    LPIPS (Zhang et al. 2018) when its backbone weights are available, else the shift-tolerant LPIPS
    whose weights ship in ``stlpips-pytorch`` (``tokenizer.perceptual`` decides and names it).
    """

    def __init__(self, net: str = "alex", compute_dtype: torch.dtype | None = None):
        super().__init__()
        from tokenizer.perceptual import PerceptualDistance

        self.metric = PerceptualDistance(net, compute_dtype=compute_dtype)

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
    """LeCam regularisation (Tseng et al. 2021, eq. 3) with EMA anchors of the discriminator outputs.

    ``forward`` penalises with the anchors moved by this batch's means; ``update`` then stores anchors
    moved by the means it is given, which under DDP are the ranks' average (so every rank keeps the same
    anchors; alone, they are this batch's means and the two agree).
    """

    def __init__(self, decay: float):
        super().__init__()
        self.decay = decay
        self.register_buffer("real_ema", torch.zeros(()))
        self.register_buffer("fake_ema", torch.zeros(()))

    def anchors(self, real_mean: torch.Tensor, fake_mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.real_ema * self.decay + (1 - self.decay) * real_mean.detach().float(),
                self.fake_ema * self.decay + (1 - self.decay) * fake_mean.detach().float())

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        real_anchor, fake_anchor = self.anchors(real.float().mean(), fake.float().mean())
        return F.relu(real - fake_anchor).pow(2).mean() + F.relu(real_anchor - fake).pow(2).mean()

    @torch.no_grad()
    def update(self, real_mean: torch.Tensor, fake_mean: torch.Tensor) -> None:
        real_anchor, fake_anchor = self.anchors(real_mean, fake_mean)
        self.real_ema.copy_(real_anchor)
        self.fake_ema.copy_(fake_anchor)


def _entropy_terms(x: torch.Tensor, codes: torch.Tensor, temperature: float) -> torch.Tensor:
    """(n, E) vectors -> (K + 1,): the sum over rows of p(k|x) and, last, the sum of the rows' entropies."""
    # Negative squared distances as logits; ||x||^2 - 2 x.e + ||e||^2 as in the quantizer's lookup.
    logits = -torch.addmm(codes.pow(2).sum(1), x, codes.t(), beta=1.0, alpha=-2.0)  # (n, K) without ||x||^2
    logits = logits / temperature  # ||x||^2 is a per-row constant: softmax is unchanged without it
    log_probs = logits.log_softmax(dim=1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).sum()
    return torch.cat([probs.sum(0), entropy[None]])


def training_entropy_loss(quantizer: nn.Module, out: QuantizerOutput, temperature: float) -> torch.Tensor:
    """The trainer's entropy term (``TrainConfig.entropy_weight``) for a training forward's output ``out``.

    LFQ and BSQ compute exactly this term in their training forward when their own ``entropy_weight`` is
    on (the same latents, their own temperature): it is taken from ``out.entropy_loss`` rather than formed
    a second time from ``out.latents`` (a second set of (N, 2^G) matrices, forward and backward). Otherwise
    ``codebook_entropy_loss`` on the forward pass's own latents (no second encoder pass either way).
    """
    if isinstance(quantizer, LookupFreeQuantizer) and quantizer.training and quantizer.config.entropy_weight > 0:
        return out.entropy_loss
    return codebook_entropy_loss(quantizer, out.latents, temperature)


def codebook_entropy_loss(quantizer: nn.Module, z: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy regulariser on soft code assignments (MAGVIT-v2, Yu et al. 2024, eq. 5).

    Low per-vector entropy (confident assignments) and high entropy of the batch-average assignment
    (every code used): loss = E[H(p(k|x))] - H(E[p(k|x)]).

    Args:
        quantizer: a ``VectorQuantizer`` (soft assignment over its K codes, an (N, K) matrix) or an LFQ/BSQ
            quantizer (its own factorised estimate, which never forms (N, 2^bits); its config's temperature).
        z: (B, D, h, w) latents before quantization, the forward pass's own (``QuantizerOutput.latents``).
            For the vector quantizer the (N, K) soft assignments are computed in row blocks of the quantizer's
            distance-block size, each recomputed in the backward pass (activation checkpointing): memory
            holds one (rows, K) block, never (N, K) (5 GiB at batch 16 with vq-f8 at 256^2 otherwise).
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
    from torch.utils.checkpoint import checkpoint

    from tokenizer.quantizer import DISTANCE_BLOCK_ELEMENTS

    with torch.autocast(z.device.type, enabled=False):
        x = quantizer.project_in(z)  # (N, E)
        codes = quantizer.codes()  # (K, E)
        rows = max(1, DISTANCE_BLOCK_ELEMENTS // codes.shape[0])  # (rows, K) blocks of 64 MiB at most
        total = x.new_zeros(codes.shape[0] + 1)
        for start in range(0, x.shape[0], rows):
            chunk = x[start : start + rows]  # (n, E)
            if torch.is_grad_enabled() and (chunk.requires_grad or codes.requires_grad):
                total = total + checkpoint(_entropy_terms, chunk, codes, temperature, use_reentrant=False)
            else:
                total = total + _entropy_terms(chunk, codes, temperature)
        avg = total[:-1] / x.shape[0]  # (K,) batch-average assignment
        per_sample = total[-1] / x.shape[0]
        batch_entropy = -(avg * torch.log(avg.clamp_min(1e-10))).sum()
        return per_sample - batch_entropy
