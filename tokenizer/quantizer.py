"""Vector quantizer: nearest-code lookup with a straight-through (or rotation-trick) gradient.

Also the parts every quantizer family shares (``QuantizerOutput``, the code statistics, the
distributed helpers). The other families live beside it: ``fsq.py``, ``lfq.py`` (LFQ and BSQ),
``rvq.py``; ``build_quantizer`` in ``quantizers.py`` picks one from its config. Every quantizer has the
same surface: ``forward(z) -> QuantizerOutput``, ``lookup(z) -> ids``, ``latents_from_ids(ids)``,
``vocab_size`` and ``depth`` (ids per grid position).

VQ-VAE (van den Oord et al. 2017) with the options that keep large codebooks alive:
factorised low-dimensional codes and l2-normalised (cosine) lookup (ViT-VQGAN, Yu et al. 2021, sec. 3.2;
LlamaGen, Sun et al. 2024), EMA codebook updates (VQ-VAE appendix A.1), dead-code restart from encoder
outputs (Jukebox, Dhariwal et al. 2020) and k-means initialisation (SoundStream, Zeghidour et al. 2021).

All maths here runs in fp32 with autocast off: argmin over bf16 distances flips codes, and EMA sums in
bf16 drift. Distances use ||x||^2 - 2 x.e + ||e||^2 computed chunk by chunk, so memory holds at most a
(chunk, K) matrix and never an (N, K, D) tensor. Under ``torch.distributed`` every statistic that
changes the codebook (EMA counts and sums, usage, restart samples, k-means) is reduced or broadcast so
that all ranks keep an identical codebook.

Axis letters: B batch, D latent channels, h/w grid, N = B*h*w vectors, K codes, E code dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .quantizer_config import VectorQuantizerConfig
from .devices import autocast_off, full_precision_matmul
from .metrics import perplexity as code_perplexity_of
from .metrics import usage as code_usage_of

# Elements of one (chunk, K) distance block, whatever N is. On a GPU: 2**24 fp32 = 64 MiB, few launches.
# On a CPU: 2**18 = 1 MiB; the block is written by the matmul and read back by argmin, and at 1 MiB it
# stays in a core's L2 cache between the two, which made the lookup about 3.5x faster than 64 MiB blocks
# (scripts/benchmark.py, K = 16384, N = 16384).
DISTANCE_BLOCK_ELEMENTS = 1 << 24
DISTANCE_BLOCK_ELEMENTS_CPU = 1 << 18


@dataclass
class QuantizerOutput:
    """What one quantizer forward returns.

    quantized: (B, D, h, w) codes with the straight-through gradient attached (what the decoder sees).
    indices: (B, h, w) long code ids; (B, h, w, depth) for residual VQ (-1 at depths dropped this step).
    latents: (B, D, h, w) the input before quantization, as given (with its graph), so that a loss on
        the latents (e.g. ``train.losses.codebook_entropy_loss``) needs no second encoder pass.
    loss: everything the quantizer adds to the training loss. VQ: codebook_loss_weight * codebook_loss +
        beta * commitment_loss (VQ-VAE eq. 3); LFQ/BSQ: beta * commitment_loss + entropy_weight *
        entropy_loss; FSQ: zero; residual VQ: the sum over depths.
    codebook_loss: ||sg(z_e) - z_q||^2 (zero when the codebook learns by EMA, and for FSQ/LFQ/BSQ).
    commitment_loss: ||z_e - sg(z_q)||^2 (zero for FSQ, which has nothing to commit to).
    entropy_loss: MAGVIT-v2's entropy penalty (LFQ/BSQ, training only), else zero.
    code_counts: (K,) fp32 histogram of this batch's ids (all ranks in training); (R, K) for residual VQ,
        one row per depth used; beyond 2^24 codes (LFQ) the counts of the used codes only.
    num_codes: K, the codes each histogram row is over.
    perplexity, usage (properties): exp(entropy) of the histogram and the share of the K codes used at least
        once; the mean over depths for residual VQ. Computed when read: they are a dozen small ops on (K,)
        (~0.25 ms of a 2 ms FSQ train step at N = 16384 on one core), which a caller that never reads them
        (inference, a benchmark) does not pay for.
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    latents: torch.Tensor
    loss: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    entropy_loss: torch.Tensor
    code_counts: torch.Tensor
    num_codes: int

    @property
    def perplexity(self) -> torch.Tensor:
        return code_perplexity_of(self.code_counts).mean()  # tokenizer.metrics: one definition

    @property
    def usage(self) -> torch.Tensor:
        counts = self.code_counts
        return (code_usage_of(counts) * (counts.shape[-1] / self.num_codes)).mean()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.broadcast(t, src=0)
    return t


def code_counts(ids: torch.Tensor, num_codes: int, reduce: bool) -> torch.Tensor:
    """(K,) fp32 histogram of (N,) ids, summed over ranks if ``reduce``."""
    if ids.device.type == "cpu":
        # One pass, no (N,) ones: 40 us against 50 us for index_add at N = 16384, K = 4096.
        counts = torch.bincount(ids, minlength=num_codes).float()
    else:
        # index_add, not bincount: bincount on CUDA reads max(ids) back to the host every call.
        counts = torch.zeros(num_codes, device=ids.device).index_add_(0, ids, torch.ones(ids.shape[0], device=ids.device))
    return _all_reduce_sum(counts) if reduce else counts


def rotation_trick(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q`` in value, with the gradient reaching ``x`` through a rotation (Fifty et al. 2024, sec. 4).

    The straight-through copy hands x the decoder's gradient unchanged, whatever the angle between x and
    its code. The rotation trick instead writes q = sg(lambda R) x, where R is the rotation taking x/||x||
    onto q/||q|| in the plane of the two and lambda = ||q|| / ||x||: the gradient reaching x is
    lambda R^T g, so it turns with the code. R = I - 2 r r^T + 2 q^ x^T with r = (x^ + q^) / ||x^ + q^||
    (^ = unit vector), applied without forming the (E, E) matrix.

    Args:
        x: (N, E) vectors with a gradient.
        q: (N, E) their codes (no gradient is passed to them here).
    """
    eps = 1e-12
    x_norm = x.norm(dim=1, keepdim=True)  # (N, 1)
    q_norm = q.norm(dim=1, keepdim=True)  # (N, 1)
    with torch.no_grad():
        x_hat = x / x_norm.clamp_min(eps)  # (N, E)
        q_hat = q / q_norm.clamp_min(eps)
        r = F.normalize(x_hat + q_hat, dim=1)  # zero (and R x = -x, still onto q) when q^ = -x^
        scale = q_norm / x_norm.clamp_min(eps)  # lambda
    rotated = x - 2 * r * (r * x).sum(1, keepdim=True) + 2 * q_hat * (x_hat * x).sum(1, keepdim=True)  # R x
    return rotated * scale


def nearest_code(x: torch.Tensor, codebook: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """Index of the nearest code (squared Euclidean) for each row of ``x``.

    Args:
        x: (N, E) fp32 vectors.
        codebook: (K, E) fp32 codes.
        block: largest number of distance entries held at once (default: by device, see above).
    Returns:
        (N,) long ids.
    """
    if block is None:
        block = DISTANCE_BLOCK_ELEMENTS_CPU if x.device.type == "cpu" else DISTANCE_BLOCK_ELEMENTS
    num_codes = codebook.shape[0]
    code_sq = codebook.pow(2).sum(dim=1)  # (K,)
    rows = max(1, block // num_codes)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    # True fp32 whatever the global TF32 / bf16-matmul setting: 10-bit TF32 products flip nearest codes.
    with full_precision_matmul():
        for start in range(0, x.shape[0], rows):
            chunk = x[start : start + rows]  # (n, E)
            # ||x||^2 is constant per row, so argmin(||e||^2 - 2 x.e) is the nearest code.
            dist_block = torch.addmm(code_sq, chunk, codebook.t(), beta=1.0, alpha=-2.0)  # (n, K)
            out[start : start + rows] = dist_block.argmin(dim=1)
    return out


class VectorQuantizer(nn.Module):
    """Maps (B, D, h, w) latents to their nearest codes.

    Args:
        config: the codebook's settings (size, factorised/l2 lookup, EMA, restarts, k-means, rotation trick).
        dim: channels D of the latents it quantizes.
    """

    depth = 1

    def __init__(self, config: VectorQuantizerConfig, dim: int):
        super().__init__()
        config.validate(dim)
        self.config = config
        self.dim = dim
        self.codebook_size = config.codebook_size
        self.code_dim = config.code_dim or dim
        self.l2_normalize = config.l2_normalize
        self.beta = config.commitment_beta
        self.codebook_loss_weight = config.codebook_loss_weight
        self.use_ema = config.use_ema
        self.ema_decay = config.ema_decay
        self.ema_epsilon = config.ema_epsilon
        self.dead_code_threshold = config.dead_code_threshold
        self.usage_decay = config.usage_decay
        self.kmeans_iters = config.kmeans_iters
        self.rotation_trick = config.rotation_trick

        factorised = self.code_dim != dim
        self.in_proj = nn.Linear(dim, self.code_dim) if factorised else nn.Identity()
        self.out_proj = nn.Linear(self.code_dim, dim) if factorised else nn.Identity()

        codebook_size = config.codebook_size
        init = torch.randn(codebook_size, self.code_dim)
        if self.l2_normalize:
            init = F.normalize(init, dim=1)
        else:
            init = init.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)  # as VQ-VAE / taming
        if self.use_ema:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_cluster_size", torch.ones(codebook_size))
            self.register_buffer("ema_embed_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        # Per-code EMA of assignments per step, and the number of steps it has seen (for bias correction).
        self.register_buffer("usage", torch.zeros(codebook_size))
        self.register_buffer("usage_steps", torch.zeros((), dtype=torch.long))
        # 0 until k-means has run (only read when kmeans_init is on).
        self.register_buffer("initialized", torch.tensor(0 if config.kmeans_init else 1, dtype=torch.long))
        # Reading ``initialized`` is a host-device sync; once it read 1 it is not read again until a
        # state dict is loaded (which may bring back a 0).
        self._initialized_seen = False
        self.register_load_state_dict_post_hook(lambda module, _keys: setattr(module, "_initialized_seen", False))

    @property
    def vocab_size(self) -> int:
        return self.codebook_size

    # --- lookups ----------------------------------------------------------------------------------
    def codes(self) -> torch.Tensor:
        """(K, E) fp32 codes as used for lookup (unit norm when l2_normalize)."""
        codebook = self.codebook.float()
        return F.normalize(codebook, dim=1) if self.l2_normalize else codebook

    def project_in(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latents -> (N, E) fp32 lookup vectors."""
        flat = rearrange(z.float(), "b d h w -> (b h w) d")  # (N, D)
        x = self.in_proj(flat)  # (N, E)
        return F.normalize(x, dim=1) if self.l2_normalize else x

    @torch.no_grad()
    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latents -> (B, h, w) ids, without the training-time side effects."""
        with autocast_off(z.device.type):
            ids = nearest_code(self.project_in(z), self.codes())  # (N,)
        return rearrange(ids, "(b h w) -> b h w", b=z.shape[0], h=z.shape[2])

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids of any shape (...) -> latent vectors (..., D) as the decoder receives them."""
        with autocast_off(ids.device.type):
            return self.out_proj(F.embedding(ids, self.codes()))

    def latents_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, h, w) ids -> (B, D, h, w) latents."""
        return rearrange(self.embed(ids), "b h w d -> b d h w")

    # --- forward ----------------------------------------------------------------------------------
    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        batch, _, height, width = z.shape
        with autocast_off(z.device.type):
            x = self.project_in(z)  # (N, E) fp32
            if self.training and not self._initialized_seen:
                if not bool(self.initialized):
                    self._kmeans_init(x.detach())
                self._initialized_seen = True
            codes = self.codes()  # (K, E)
            with torch.no_grad():
                ids = nearest_code(x.detach(), codes)  # (N,)
            q = F.embedding(ids, codes)  # (N, E); carries the codebook's gradient unless EMA

            # VQ-VAE eq. 3: the codebook term moves codes towards encoder outputs, the commitment term
            # keeps encoder outputs near their codes. With EMA the codebook learns without a gradient.
            commitment = F.mse_loss(x, q.detach())
            codebook_loss = F.mse_loss(q, x.detach()) if not self.use_ema else x.new_zeros(())
            loss = self.codebook_loss_weight * codebook_loss + self.beta * commitment

            counts = code_counts(ids, self.codebook_size, reduce=self.training)  # (K,)
            if self.training:
                with torch.no_grad():
                    if self.use_ema:
                        self._ema_update(x.detach(), ids, counts)
                    self._track_usage_and_restart(x.detach(), counts)

            if not x.requires_grad:
                st = q
            elif self.rotation_trick:
                st = rotation_trick(x, q.detach())
            else:
                # Straight-through estimator (VQ-VAE sec. 3.1): the forward pass uses the code q, the
                # backward pass copies the decoder's gradient to x unchanged, z_q = z_e + sg(z_q - z_e).
                st = x + (q - x).detach()
            out = self.out_proj(st)  # (N, D)
        quantized = rearrange(out, "(b h w) d -> b d h w", b=batch, h=height, w=width)  # (B, D, h, w)
        indices = rearrange(ids, "(b h w) -> b h w", b=batch, h=height, w=width)  # (B, h, w)
        return QuantizerOutput(quantized, indices, z, loss, codebook_loss, commitment, loss.new_zeros(()),
                               counts, self.codebook_size)

    # --- codebook maintenance (no gradient, fp32, synchronised across ranks) -----------------------
    def _set_codes(self, rows: torch.Tensor | slice, values: torch.Tensor) -> None:
        self.codebook.data[rows] = values.to(self.codebook.dtype)

    @torch.no_grad()
    def _ema_update(self, x: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor) -> None:
        # VQ-VAE appendix A.1: N_k <- g N_k + (1-g) n_k, m_k <- g m_k + (1-g) sum_i x_i, e_k = m_k / N_k.
        embed_sum = torch.zeros_like(self.ema_embed_sum).index_add_(0, ids, x)  # (K, E)
        embed_sum = _all_reduce_sum(embed_sum)
        self.ema_cluster_size.mul_(self.ema_decay).add_(counts, alpha=1 - self.ema_decay)
        self.ema_embed_sum.mul_(self.ema_decay).add_(embed_sum, alpha=1 - self.ema_decay)
        # Laplace smoothing keeps unused codes from dividing by zero.
        total = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + self.ema_epsilon) / (
            total + self.codebook_size * self.ema_epsilon
        ) * total  # (K,)
        self._set_codes(slice(None), self.ema_embed_sum / smoothed[:, None])

    @torch.no_grad()
    def _track_usage_and_restart(self, x: torch.Tensor, counts: torch.Tensor) -> None:
        self.usage.mul_(self.usage_decay).add_(counts, alpha=1 - self.usage_decay)
        self.usage_steps += 1
        if self.dead_code_threshold <= 0:
            return
        # Bias-corrected like Adam's moments, so a fresh statistic is not all "dead" on step one.
        corrected = self.usage / (1 - self.usage_decay ** self.usage_steps.double()).float()  # no host sync
        dead = torch.nonzero(corrected < self.dead_code_threshold).squeeze(1)  # identical on all ranks
        if dead.numel() == 0:
            return
        # Re-seed dead codes with encoder outputs of this batch (rank 0's, broadcast to all ranks).
        pick = torch.randint(0, x.shape[0], (dead.numel(),), device=x.device)
        samples = _broadcast(x[pick].contiguous())  # (n_dead, E)
        self._set_codes(dead, samples)
        # A grace period: a restarted code starts with the mean usage, not below the threshold.
        self.usage[dead] = self.usage.mean()
        if self.use_ema:
            self.ema_cluster_size[dead] = 1.0
            self.ema_embed_sum[dead] = samples

    @torch.no_grad()
    def _kmeans_init(self, x: torch.Tensor) -> None:
        """Lloyd's k-means on the first batch (spherical when l2_normalize), computed on rank 0."""
        k = self.codebook_size
        pick = torch.randperm(x.shape[0], device=x.device)[:k]
        if pick.numel() < k:  # fewer vectors than codes: sample the rest with replacement
            extra = torch.randint(0, x.shape[0], (k - pick.numel(),), device=x.device)
            pick = torch.cat([pick, extra])
        centers = x[pick].clone()  # (K, E)
        for _ in range(self.kmeans_iters):
            ids = nearest_code(x, centers)
            sums = torch.zeros_like(centers).index_add_(0, ids, x)  # (K, E)
            sizes = torch.bincount(ids, minlength=k).float()  # (K,)
            filled = sizes > 0  # empty clusters keep their centre
            centers[filled] = sums[filled] / sizes[filled, None]
            if self.l2_normalize:
                centers = F.normalize(centers, dim=1)
        centers = _broadcast(centers.contiguous())
        self._set_codes(slice(None), centers)
        if self.use_ema:
            self.ema_embed_sum.copy_(centers)
            self.ema_cluster_size.fill_(1.0)
        self.initialized.fill_(1)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_size={self.codebook_size}, code_dim={self.code_dim}, "
            f"l2_normalize={self.l2_normalize}, ema={self.use_ema}, rotation_trick={self.rotation_trick}, "
            f"bits_per_token={math.log2(self.codebook_size):.2f}"
        )
