"""VectorQuantizer on its own: lookup, losses, straight-through gradients, EMA, restarts, k-means.

Axis letters: B batch, D latent channels, h/w grid, N = B*h*w vectors, K codes, E code dimension.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from tokenizer import VectorQuantizer, VectorQuantizerConfig
from tokenizer.quantizer import nearest_code

# (l2_normalize, code_dim): plain, cosine, factorised, factorised + cosine.
VARIANTS = [(False, None), (True, None), (False, 2), (True, 2)]
VARIANT_IDS = ["plain", "l2", "factorised", "factorised-l2"]


def _vq(dim: int, codes: int, **fields) -> VectorQuantizer:
    return VectorQuantizer(VectorQuantizerConfig(codebook_size=codes, **fields), dim)


def _quantizer(l2: bool, code_dim: int | None, dim: int = 3, codes: int = 5, **kwargs) -> VectorQuantizer:
    vq = _vq(dim, codes, code_dim=code_dim, l2_normalize=l2, **kwargs)
    with torch.no_grad():
        # Codes on the scale of the inputs (the default init is tiny when l2 is off), so that many are used.
        vq.codebook.copy_(torch.randn(codes, vq.code_dim))
    return vq


@torch.no_grad()
def _hand_lookup(vq: VectorQuantizer, z: torch.Tensor):
    """The lookup written out vector by vector in float64: (N, E) inputs, (N,) ids, (N, E) codes."""
    flat = z.double().permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B, D, h, w) -> (N, D)
    if vq.code_dim != vq.dim:
        flat = flat @ vq.in_proj.weight.double().t() + vq.in_proj.bias.double()  # (N, E)
    codebook = vq.codebook.detach().double()  # (K, E)
    if vq.l2_normalize:
        flat = flat / flat.norm(dim=1, keepdim=True)
        codebook = codebook / codebook.norm(dim=1, keepdim=True)
    ids = []
    for vector in flat:
        distances = [float(((vector - code) ** 2).sum()) for code in codebook]
        ids.append(min(range(len(distances)), key=distances.__getitem__))
    ids_t = torch.tensor(ids)
    return flat, ids_t, codebook[ids_t]


@pytest.mark.parametrize("l2,code_dim", VARIANTS, ids=VARIANT_IDS)
def test_losses_ids_and_stats_match_hand_computation(l2, code_dim):
    vq = _quantizer(l2, code_dim, commitment_beta=0.3, codebook_loss_weight=0.7).eval()
    z = torch.randn(2, 3, 3, 4)  # (B, D, h, w)
    out = vq(z)
    x, ids, q = _hand_lookup(vq, z)

    assert out.indices.shape == (2, 3, 4) and out.indices.dtype == torch.long
    assert torch.equal(out.indices.reshape(-1), ids)
    mse = float(((x - q) ** 2).mean())  # ||z_e - z_q||^2, averaged over N*E entries
    assert out.commitment_loss.item() == pytest.approx(mse, rel=1e-5, abs=1e-7)
    assert out.codebook_loss.item() == pytest.approx(mse, rel=1e-5, abs=1e-7)
    assert out.loss.item() == pytest.approx(0.7 * mse + 0.3 * mse, rel=1e-5, abs=1e-7)

    counts = torch.bincount(ids, minlength=5).double()
    probs = counts / counts.sum()
    entropy = -sum(float(p * math.log(p)) for p in probs if p > 0)
    assert out.perplexity.item() == pytest.approx(math.exp(entropy), rel=1e-5)
    assert out.usage.item() == pytest.approx(float((counts > 0).double().mean()))

    # The forward output is out_proj(code); quantized values are the codes (projected back).
    expected = q.float()
    if vq.code_dim != vq.dim:
        expected = vq.out_proj(expected)
    expected = rearrange(expected, "(b h w) d -> b d h w", b=2, h=3, w=4)  # (N, D) -> (B, D, h, w)
    torch.testing.assert_close(out.quantized, expected.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("l2,code_dim", VARIANTS, ids=VARIANT_IDS)
def test_embed_and_lookup_agree_with_forward(l2, code_dim):
    vq = _quantizer(l2, code_dim).eval()
    z = torch.randn(2, 3, 4, 4)
    out = vq(z)
    assert torch.equal(vq.lookup(z), out.indices)
    torch.testing.assert_close(vq.latents_from_ids(out.indices), out.quantized, rtol=0, atol=1e-6)
    assert vq.embed(out.indices).shape == (2, 4, 4, 3)


@pytest.mark.parametrize("l2,code_dim", VARIANTS, ids=VARIANT_IDS)
def test_straight_through_gradient(l2, code_dim):
    """d quantized / d z equals the derivative of the un-quantized path (z_q = z_e + sg(z_q - z_e))."""
    vq = _quantizer(l2, code_dim)
    z = torch.randn(2, 3, 3, 3, requires_grad=True)
    weight = torch.randn(2, 3, 3, 3)  # a fixed downstream gradient
    (vq(z).quantized * weight).sum().backward()

    z_ref = z.detach().clone().requires_grad_(True)
    x = vq.project_in(z_ref)  # (N, E), no quantization
    unquantized = rearrange(vq.out_proj(x), "(b h w) d -> b d h w", b=2, h=3, w=3)  # (N, D) -> (B, D, h, w)
    (unquantized * weight).sum().backward()

    assert z.grad is not None and z.grad.abs().sum() > 0
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-5, atol=1e-6)
    # The reconstruction path must leave the codebook alone.
    assert vq.codebook.grad is None or not vq.codebook.grad.any()


@pytest.mark.parametrize("l2,code_dim", VARIANTS, ids=VARIANT_IDS)
def test_codebook_gets_gradient_only_from_codebook_term(l2, code_dim):
    vq = _quantizer(l2, code_dim)
    z = torch.randn(2, 3, 3, 3, requires_grad=True)
    out = vq(z)
    out.codebook_loss.backward(retain_graph=True)
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0
    assert z.grad is None or not z.grad.any()  # the codebook term must not move the encoder

    vq.codebook.grad = None
    out.commitment_loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0  # commitment pulls the encoder ...
    assert vq.codebook.grad is None or not vq.codebook.grad.any()  # ... and never the codebook


def test_gradient_of_commitment_by_hand():
    """Plain VQ: d commitment / d z_e = 2 (z_e - z_q) / (N * D)."""
    vq = _quantizer(False, None)
    z = torch.randn(1, 3, 2, 2, requires_grad=True)
    out = vq(z)
    out.commitment_loss.backward()
    expected = 2 * (z.detach() - out.quantized.detach()) / z.numel()
    torch.testing.assert_close(z.grad, expected, rtol=1e-5, atol=1e-7)


def test_nearest_code_chunked_equals_brute_force():
    x = torch.randn(103, 6)
    codebook = torch.randn(17, 6)
    brute = torch.cdist(x.double(), codebook.double()).argmin(dim=1)
    # A block of 40 entries holds 2 rows of 17 codes: 52 chunks, the last one partial.
    assert torch.equal(nearest_code(x, codebook, block=40), brute)
    assert torch.equal(nearest_code(x, codebook), brute)


def test_lookup_is_fp32_under_bf16_autocast():
    vq = _quantizer(False, None, dim=8, codes=64)
    z = torch.randn(2, 8, 6, 6)
    reference = vq.lookup(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(vq.lookup(z), reference)
        out = vq.eval()(z)
    assert torch.equal(out.indices, reference)
    assert out.quantized.dtype == torch.float32


# --- codebook maintenance ------------------------------------------------------------------------

def _clustered(centers: torch.Tensor, per_cluster: int, spread: float = 0.05):
    """(1, E, 1, n) latents drawn around ``centers`` (K, E) and the (K, E) means of each cluster."""
    points = centers.repeat_interleave(per_cluster, dim=0)  # (n, E)
    points = points + spread * torch.randn_like(points)
    means = points.reshape(len(centers), per_cluster, -1).mean(dim=1)  # (K, E)
    return rearrange(points, "n e -> 1 e 1 n"), means


def test_ema_moves_codes_towards_assigned_means():
    centers = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0], [0.0, -2.0]])
    vq = _vq(2, 4, l2_normalize=False, use_ema=True, ema_decay=0.8)
    assert not isinstance(vq.codebook, torch.nn.Parameter)  # EMA codebooks learn without gradients
    vq.codebook.copy_(centers * 0.5)  # each code starts halfway to its cluster
    vq.ema_embed_sum.copy_(vq.codebook)
    z, means = _clustered(centers, per_cluster=16)
    vq.train()

    before = (vq.codebook - means).norm(dim=1)
    out = vq(z)
    after = (vq.codebook - means).norm(dim=1)
    assert out.codebook_loss.item() == 0.0
    assert torch.equal(out.indices.reshape(4, 16), torch.arange(4)[:, None].expand(4, 16))
    assert (after < before).all(), (before, after)

    for _ in range(60):
        vq(z)
    torch.testing.assert_close(vq.codebook, means, rtol=0, atol=1e-3)


def test_ema_update_matches_the_formula():
    """One step of VQ-VAE appendix A.1 with Laplace smoothing, written out."""
    decay, eps = 0.9, 1e-5
    vq = _vq(2, 3, l2_normalize=False, use_ema=True, ema_decay=decay, ema_epsilon=eps)
    init = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])
    vq.codebook.copy_(init)
    vq.ema_embed_sum.copy_(init)
    x = torch.tensor([[0.9, 0.1], [1.2, -0.1], [0.1, 0.8]])  # two vectors to code 0, one to code 1
    vq.train()(rearrange(x, "n e -> 1 e 1 n"))

    counts = torch.tensor([2.0, 1.0, 0.0])
    sums = torch.stack([x[0] + x[1], x[2], torch.zeros(2)])
    size = decay * 1.0 + (1 - decay) * counts
    embed = decay * init + (1 - decay) * sums
    smoothed = (size + eps) / (size.sum() + 3 * eps) * size.sum()
    torch.testing.assert_close(vq.codebook, embed / smoothed[:, None], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_ema", [False, True], ids=["grad", "ema"])
def test_dead_code_is_restarted_from_encoder_outputs_and_then_used(use_ema):
    centers = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0]])
    vq = _vq(2, 4, l2_normalize=False, use_ema=use_ema, dead_code_threshold=0.5)
    with torch.no_grad():
        vq.codebook.copy_(torch.cat([centers, torch.tensor([[50.0, 50.0]])]))  # code 3 is far from all data
        if use_ema:
            vq.ema_embed_sum.copy_(vq.codebook)
    z, _ = _clustered(centers, per_cluster=8)
    inputs = rearrange(z, "1 e 1 n -> n e")  # (n, E): what the restart may copy

    assert not (vq.eval().lookup(z) == 3).any()  # dead before
    vq.train()(z)
    revived = vq.codebook[3].detach()
    assert (inputs - revived).norm(dim=1).min() < 1e-6, "code 3 was not re-seeded from an encoder output"
    # Grace period: the bias-corrected usage the restart reads is above the threshold now.
    corrected = vq.usage / (1 - vq.usage_decay ** int(vq.usage_steps))
    assert corrected[3] >= 0.5
    assert (vq.eval().lookup(z) == 3).any(), "the revived code is not used"
    # Live codes stayed where they were (no optimiser step; EMA moves them only slightly).
    assert (vq.codebook[:3] - centers).norm(dim=1).max() < 0.1


def test_no_restart_when_threshold_is_zero():
    vq = _vq(2, 4, l2_normalize=False, dead_code_threshold=0.0)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0], [50.0, 50.0]]))
    z, _ = _clustered(vq.codebook[:3].detach(), per_cluster=8)
    vq.train()(z)
    assert torch.equal(vq.codebook[3].detach(), torch.tensor([50.0, 50.0]))
    assert vq.usage[3] == 0  # usage is still tracked


def test_kmeans_init_sets_codebook_from_first_batch():
    centers = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    vq = _vq(2, 3, l2_normalize=False, kmeans_init=True, kmeans_iters=20)
    z, means = _clustered(centers, per_cluster=20)
    initial = vq.codebook.detach().clone()

    vq.eval()(z)  # inference never initialises
    assert int(vq.initialized) == 0 and torch.equal(vq.codebook.detach(), initial)

    out = vq.train()(z)
    assert int(vq.initialized) == 1
    codebook = vq.codebook.detach().clone()
    # Lloyd's fixed point: every code is the mean of the batch vectors assigned to it.
    inputs = rearrange(z, "1 e 1 n -> n e")
    for k in range(3):
        members = inputs[out.indices.reshape(-1) == k]
        assert len(members) > 0
        torch.testing.assert_close(codebook[k], members.mean(dim=0), rtol=0, atol=1e-5)
    # Every code moved off its random init onto the data (Lloyd's from a random start may split a
    # cluster, so which clusters get a code is not asserted).
    low, high = inputs.min(dim=0).values, inputs.max(dim=0).values  # (E,) bounding box of the batch
    assert ((codebook >= low) & (codebook <= high)).all()
    assert not torch.allclose(codebook, initial)

    vq(z)  # only the first batch initialises
    assert torch.equal(vq.codebook.detach(), codebook)


def test_kmeans_init_l2_gives_unit_codes_and_fewer_vectors_than_codes():
    vq = _vq(3, 16, l2_normalize=True, kmeans_init=True)
    vq.train()(torch.randn(1, 3, 2, 3))  # 6 vectors for 16 codes: sampled with replacement
    torch.testing.assert_close(vq.codebook.detach().norm(dim=1), torch.ones(16), rtol=0, atol=1e-5)
    assert int(vq.initialized) == 1


def test_state_dict_roundtrip_keeps_ids():
    vq = _quantizer(True, 2, use_ema=False).eval()
    z = torch.randn(1, 3, 4, 4)
    other = _vq(3, 5, code_dim=2, l2_normalize=True)
    other.load_state_dict(vq.state_dict())
    assert torch.equal(other.eval().lookup(z), vq.lookup(z))
    assert F.mse_loss(other(z).quantized, vq(z).quantized) == 0
