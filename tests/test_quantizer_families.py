"""FSQ, LFQ, BSQ, residual VQ and the rotation trick on their own: hand-computed cases, gradients, and ids
identical to vector-quantize-pytorch's layers where the maths is the same.

Axis letters: B batch, D channels, h/w grid, N = B*h*w vectors, E code dimension.
"""

from __future__ import annotations

import math

import pytest
import torch
from einops import rearrange

from tokenizer import (BinarySphericalQuantizer, BSQConfig, FiniteScalarQuantizer, FSQConfig, LFQConfig,
                       LookupFreeQuantizer, ResidualVectorQuantizer, ResidualVQConfig, VectorQuantizer,
                       VectorQuantizerConfig, build_quantizer)
from tokenizer.config import ConfigError
from tokenizer.lfq import entropy_terms
from tokenizer.quantizer import rotation_trick


def _grid(vectors: list[list[float]]) -> torch.Tensor:
    """N vectors of D channels -> a (1, D, 1, N) latent grid."""
    return rearrange(torch.tensor(vectors, dtype=torch.float32), "n d -> 1 d 1 n")


# --- FSQ --------------------------------------------------------------------------------------------
def test_fsq_rounding_and_id_packing_by_hand():
    # Levels (3, 4). L=3 rounds tanh(x) * 1.001 to -1, 0, 1; L=4 rounds tanh(x + atanh(0.5 / 1.5015)) * 1.5015
    # - 0.5 to -2 .. 1 (x = 0 gives +0.0005 -> 0). Digits = rounded + L // 2; id = d0 + 3 * d1.
    fsq = FiniteScalarQuantizer(FSQConfig(levels=(3, 4)), 2).eval()
    z = _grid([[10.0, -10.0], [0.0, 10.0], [-10.0, 0.0], [0.0, 0.0]])
    out = fsq(z)
    #           digits (2, 0)  (1, 3)     (0, 2)     (1, 2)
    assert out.indices.flatten().tolist() == [2, 1 + 3 * 3, 0 + 3 * 2, 1 + 3 * 2]
    # codes = rounded / (L // 2): channel 0 / 1, channel 1 / 2.
    expected = torch.tensor([[1.0, -1.0], [0.0, 0.5], [-1.0, 0.0], [0.0, 0.0]])
    assert torch.equal(rearrange(out.quantized, "1 d 1 n -> n d"), expected)
    assert torch.equal(fsq.lookup(z), out.indices)
    assert out.loss.item() == 0.0 and fsq.vocab_size == 12


def test_fsq_ids_and_codes_are_a_bijection():
    fsq = FiniteScalarQuantizer(FSQConfig(levels=(5, 4, 3)), 3)
    ids = torch.arange(60).reshape(1, 6, 10)  # every id once, (B, h, w)
    codes = fsq.latents_from_ids(ids)  # (1, 3, 6, 10)
    assert codes.abs().max() <= 1.0
    assert torch.equal(fsq.ids_from_codes(codes), ids)
    assert len({tuple(c) for c in rearrange(codes, "1 d h w -> (h w) d").tolist()}) == 60  # 60 distinct codes
    digits = fsq.unpack(torch.tensor([0, 1, 5, 59]))
    assert digits.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [4, 3, 2]]  # channel 0 least significant


def test_fsq_straight_through_gradient():
    fsq = FiniteScalarQuantizer(FSQConfig(levels=(8, 5)), 2).train()
    z = torch.randn(2, 2, 3, 3, requires_grad=True)
    out = fsq(z)
    g = torch.randn_like(out.quantized)
    (out.quantized * g).sum().backward()
    # d code / d z = d bound / d z / (L // 2): through the tanh, never zero, rounding skipped.
    x = z.detach().requires_grad_()
    (fsq.bound(x) / fsq.levels.div(2, rounding_mode="floor")[:, None, None] * g).sum().backward()
    torch.testing.assert_close(z.grad, x.grad)


def test_fsq_config_checks_levels_against_channels():
    with pytest.raises(ConfigError, match="need latent_channels = 4"):
        FiniteScalarQuantizer(FSQConfig(levels=(8, 8, 8, 8)), 3)
    with pytest.raises(ConfigError, match=r"field .levels. is \(8, 1\).*integers in 2\.\."):
        FSQConfig(levels=(8, 1)).validate(2)


# --- LFQ / BSQ --------------------------------------------------------------------------------------
def test_lfq_bits_ids_and_codes_by_hand():
    lfq = LookupFreeQuantizer(LFQConfig(), 3).eval()
    z = _grid([[0.5, -1.0, 2.0], [-0.1, 0.0, 3.0], [1.0, 1.0, 1.0]])
    out = lfq(z)
    # channel 0 is the most significant bit, > 0 is a 1 (0 counts as negative): 101, 001, 111.
    assert out.indices.flatten().tolist() == [5, 1, 7]
    expected = torch.tensor([[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0], [1.0, 1.0, 1.0]])
    assert torch.equal(rearrange(out.quantized, "1 d 1 n -> n d"), expected)
    assert torch.equal(lfq.latents_from_ids(out.indices), out.quantized)
    # commitment ||z - q||^2 averaged over the 9 entries
    mse = ((0.5 ** 2 + 0 + 1) + (0.9 ** 2 + 1 + 4) + 0) / 9
    assert out.commitment_loss.item() == pytest.approx(mse)


def test_lfq_entropy_on_a_known_distribution():
    ln3 = math.log(3.0)
    # Logits a = 4 x / T with codes +-1; T = 4 makes a = x. Two vectors (ln 3, ln 3) and (-ln 3, -ln 3):
    # p(bit = 1) = 3/4 for both bits of the first, 1/4 for the second.
    x = torch.tensor([[ln3, ln3], [-ln3, -ln3]])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # H(3/4)
    # The batch average over the 4 codes 00, 01, 10, 11: (1/16 + 9/16)/2 = 5/16 for 00 and 11, 3/16 for 01, 10.
    joint = -2 * (5 / 16 * math.log(5 / 16)) - 2 * (3 / 16 * math.log(3 / 16))
    per_sample, codebook = entropy_terms(4 * x / 4.0, group_bits=2)
    assert per_sample.item() == pytest.approx(2 * h)
    assert codebook.item() == pytest.approx(joint)
    # Factorised in groups of one bit: each bit's batch marginal is 1/2, ln 2 each (an upper bound of the joint).
    _, factorised = entropy_terms(x, group_bits=1)
    assert factorised.item() == pytest.approx(2 * math.log(2)) and factorised.item() > joint

    lfq = LookupFreeQuantizer(LFQConfig(entropy_temperature=4.0, diversity_gamma=0.5, entropy_group_bits=2), 2)
    loss, ps, cb = lfq.entropy_loss(x)
    assert loss.item() == pytest.approx(2 * h - 0.5 * joint) and ps.item() == pytest.approx(2 * h)


def test_lfq_entropy_at_18_bits_never_forms_the_full_matrix():
    # (N, 2^18) fp32 would be 4 GiB at N = 4096; two groups of 9 bits need (N, 512) each.
    x = torch.randn(4096, 18)
    per_sample, codebook = entropy_terms(x, group_bits=9)
    assert 0 < per_sample.item() <= 18 * math.log(2) + 1e-4
    assert 0 < codebook.item() <= 18 * math.log(2) + 1e-4
    halves = sum(entropy_terms(x[:, i : i + 9], group_bits=9)[1] for i in (0, 9))
    assert codebook.item() == pytest.approx(halves.item(), rel=1e-5)


def test_lfq_entropy_penalty_prefers_spread_codes():
    lfq = LookupFreeQuantizer(LFQConfig(), 4).train()
    spread = _grid([[(1.0 if (c >> (3 - j)) & 1 else -1.0) for j in range(4)] for c in range(16)])
    collapsed = _grid([[1.0, 1.0, 1.0, 1.0]] * 16)
    assert lfq(spread).entropy_loss < lfq(collapsed).entropy_loss
    assert lfq(spread).perplexity.item() == pytest.approx(16.0) and lfq(collapsed).usage.item() == 1 / 16


def test_bsq_normalises_and_uses_unit_norm_codes():
    bsq = BinarySphericalQuantizer(BSQConfig(), 4).eval()
    z = _grid([[3.0, -0.5, 0.2, -8.0]])
    out = bsq(z)
    assert out.indices.flatten().tolist() == [0b1010]
    assert torch.allclose(out.quantized.flatten(), torch.tensor([0.5, -0.5, 0.5, -0.5]))  # +-1/sqrt(4)
    u = torch.tensor([3.0, -0.5, 0.2, -8.0]) / math.sqrt(9 + 0.25 + 0.04 + 64)
    assert out.commitment_loss.item() == pytest.approx(((u - out.quantized.flatten()) ** 2).mean().item())
    assert torch.equal(bsq.latents_from_ids(out.indices), out.quantized)


# --- residual VQ ------------------------------------------------------------------------------------
def _rvq_1d(**fields) -> ResidualVectorQuantizer:
    config = ResidualVQConfig(num_depths=2, codebook=VectorQuantizerConfig(codebook_size=2, l2_normalize=False),
                              **fields)
    rvq = ResidualVectorQuantizer(config, 1)
    with torch.no_grad():
        rvq.layers[0].codebook.copy_(torch.tensor([[-2.0], [2.0]]))
        if len(rvq.layers) > 1:
            rvq.layers[1].codebook.copy_(torch.tensor([[-1.0], [1.0]]))
    return rvq.eval()


def test_rvq_residuals_by_hand():
    rvq = _rvq_1d()
    z = _grid([[3.0], [-1.5], [0.9]])
    out = rvq(z)
    # 3: depth 0 takes 2 (id 1), residual 1 -> 1 (id 1), left 0.  -1.5: -2 (id 0), 0.5 -> 1 (id 1), left -0.5.
    # 0.9: 2 (id 1), -1.1 -> -1 (id 0), left 0.1.
    assert out.indices.tolist() == [[[[1, 1], [0, 1], [1, 0]]]]  # (B, h, w, depth)
    assert rearrange(out.quantized, "1 1 1 n -> n").tolist() == [3.0, -1.0, 1.0]
    assert torch.equal(rvq.lookup(z), out.indices)
    assert torch.equal(rvq.latents_from_ids(out.indices), out.quantized)
    # commitment summed over depths: depth 0 ((1 + 0.25 + 1.21) / 3), depth 1 ((0 + 0.25 + 0.01) / 3)
    assert out.commitment_loss.item() == pytest.approx((1 + 0.25 + 1.21) / 3 + (0 + 0.25 + 0.01) / 3)


def test_rvq_residual_shrinks_with_depth():
    torch.manual_seed(0)
    codebook = VectorQuantizerConfig(codebook_size=16, l2_normalize=False, kmeans_init=True)
    rvq = ResidualVectorQuantizer(ResidualVQConfig(num_depths=4, codebook=codebook), 4)
    z = torch.randn(4, 4, 8, 8)
    rvq.train()(z)  # k-means initialises each depth's codebook on its own residuals
    rvq.eval()
    ids = rvq.lookup(z)
    errors = [(z - rvq.latents_from_ids(ids[..., : k + 1])).pow(2).mean().item() for k in range(4)]
    assert z.pow(2).mean().item() > errors[0] > errors[1] > errors[2] > errors[3]


def test_rvq_shared_codebook_and_quantizer_dropout():
    shared = _rvq_1d(shared_codebook=True)
    assert len(shared.layers) == 1 and shared.layer(0) is shared.layer(1)
    assert shared(_grid([[3.0]])).indices.tolist() == [[[[1, 1]]]]  # 3 -> 2, then 1 -> 2 again (nearer than -2)

    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(ResidualVQConfig(num_depths=3, quantizer_dropout=True,
                                                   codebook=VectorQuantizerConfig(codebook_size=4)), 2).train()
    used = set()
    for _ in range(30):
        ids = rvq(torch.randn(1, 2, 2, 2)).indices  # (1, 2, 2, 3)
        n = int((ids[0, 0, 0] >= 0).sum())
        assert (ids[..., :n] >= 0).all() and (ids[..., n:] == -1).all()
        used.add(n)
    assert used == {1, 2, 3}
    assert (rvq.eval()(torch.randn(1, 2, 2, 2)).indices >= 0).all()  # all depths outside training


# --- rotation trick ---------------------------------------------------------------------------------
def test_rotation_trick_gradient_matches_explicit_formula():
    torch.manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    q = torch.randn(5, 3, dtype=torch.float64)
    out = rotation_trick(x, q)
    torch.testing.assert_close(out, q)  # the forward value is the code
    g = torch.randn(5, 3, dtype=torch.float64)
    (out * g).sum().backward()
    for i in range(5):
        xi, qi = x[i].detach(), q[i]
        x_hat, q_hat = xi / xi.norm(), qi / qi.norm()
        r = (x_hat + q_hat) / (x_hat + q_hat).norm()
        rot = torch.eye(3, dtype=torch.float64) - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, x_hat)
        torch.testing.assert_close(rot @ x_hat, q_hat)  # R rotates x^ onto q^
        torch.testing.assert_close(torch.linalg.det(rot), torch.tensor(1.0, dtype=torch.float64))
        scale = qi.norm() / xi.norm()
        torch.testing.assert_close(x.grad[i], scale * rot.t() @ g[i])  # d(lambda R x)/dx^T g


def test_vector_quantizer_rotation_trick_option():
    torch.manual_seed(0)
    base = VectorQuantizerConfig(codebook_size=8, l2_normalize=False)
    ste = VectorQuantizer(base, 3)
    rot = VectorQuantizer(base.replace(rotation_trick=True), 3)
    rot.load_state_dict(ste.state_dict())
    with torch.no_grad():
        ste.codebook.normal_()
        rot.codebook.copy_(ste.codebook)
    z = torch.randn(2, 3, 2, 2)
    grads = []
    for vq in (ste, rot):
        zi = z.clone().requires_grad_()
        out = vq(zi)
        out.quantized.pow(2).sum().backward()
        grads.append(zi.grad)
        assert torch.allclose(out.quantized, vq.latents_from_ids(out.indices), atol=1e-6)
    assert not torch.allclose(grads[0], grads[1])  # the STE copies 2q; the rotation turns it


# --- every family -----------------------------------------------------------------------------------
FAMILIES = {
    "vq": (VectorQuantizerConfig(codebook_size=16), 4),
    "vq-rotation": (VectorQuantizerConfig(codebook_size=16, rotation_trick=True), 4),
    "fsq": (FSQConfig(levels=(5, 4, 3, 3)), 4),
    "lfq": (LFQConfig(), 4),
    "bsq": (BSQConfig(), 4),
    "rvq": (ResidualVQConfig(num_depths=3, codebook=VectorQuantizerConfig(codebook_size=16, l2_normalize=False)), 4),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_gradient_flows_and_ids_decode_to_the_quantized_latents(name):
    config, dim = FAMILIES[name]
    quantizer = build_quantizer(config, dim).train()
    z = torch.randn(2, dim, 3, 3, requires_grad=True)
    out = quantizer(z)
    assert out.latents is z
    (out.quantized.square().mean() + out.loss).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    quantizer.eval()
    with torch.no_grad():
        out = quantizer(z)
        assert torch.equal(quantizer.lookup(z), out.indices)
        torch.testing.assert_close(quantizer.latents_from_ids(out.indices), out.quantized, rtol=1e-5, atol=1e-5)
    assert out.indices.shape == (2, 3, 3) + ((config.depth,) if config.depth > 1 else ())


def test_quantizer_math_stays_fp32_under_autocast():
    for name, (config, dim) in FAMILIES.items():
        quantizer = build_quantizer(config, dim).eval()
        z = torch.randn(1, dim, 4, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = quantizer(z.bfloat16())
        assert out.quantized.dtype == torch.float32, name
        assert torch.equal(out.indices, quantizer.lookup(z.bfloat16())), name


# --- identical ids to vector-quantize-pytorch --------------------------------------------------------
@pytest.mark.parametrize("levels", [(8, 8, 8, 8), (8, 5, 5, 5), (7, 5, 3)])
def test_fsq_ids_match_vector_quantize_pytorch(levels):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    theirs = vqp.FSQ(levels=list(levels)).eval()
    ours = FiniteScalarQuantizer(FSQConfig(levels=levels), len(levels)).eval()
    torch.manual_seed(0)
    z = torch.randn(2, len(levels), 16, 16) * 2  # (B, D, h, w)
    with torch.no_grad():
        quantized, ids = theirs(rearrange(z, "b d h w -> b (h w) d"))
        out = ours(z)
    assert torch.equal(out.indices, rearrange(ids.long(), "b (h w) -> b h w", h=16))
    torch.testing.assert_close(rearrange(out.quantized, "b d h w -> b (h w) d"), quantized)
    assert torch.equal(ours.latents_from_ids(out.indices),
                      rearrange(theirs.indices_to_codes(ids), "b (h w) d -> b d h w", h=16))


@pytest.mark.parametrize("bits", [4, 12])
def test_lfq_ids_match_vector_quantize_pytorch(bits):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    theirs = vqp.LFQ(dim=bits, codebook_size=2**bits, entropy_loss_weight=0.0).eval()
    ours = LookupFreeQuantizer(LFQConfig(), bits).eval()
    torch.manual_seed(0)
    z = torch.randn(2, bits, 8, 8)
    with torch.no_grad():
        quantized, ids, _ = theirs(rearrange(z, "b d h w -> b (h w) d"))
        out = ours(z)
    assert torch.equal(out.indices, rearrange(ids.long(), "b (h w) -> b h w", h=8))
    torch.testing.assert_close(rearrange(out.quantized, "b d h w -> b (h w) d"), quantized)
