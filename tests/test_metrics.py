"""tokenizer.metrics against known values, and the perceptual wrapper when its extra is installed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenizer import ImageTokenizer
from tokenizer.metrics import (
    MS_SSIM_WEIGHTS,
    SSIM_K1,
    CodebookHistogram,
    bits_per_pixel,
    code_perplexity,
    ms_ssim,
    ms_ssim_scales,
    mse,
    psnr,
    ssim,
    structural_similarity,
)


def _pattern_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Two deterministic 40x56 uint8 RGB images (sinusoids), as (3, H, W) tensors."""
    yy, xx = np.mgrid[0:40, 0:56].astype(np.float64)
    a = np.stack([128 + 100 * np.sin(xx / 5.0), 128 + 90 * np.cos(yy / 4.0), 128 + 60 * np.sin((xx + yy) / 7.0)], 2)
    b = np.stack([128 + 100 * np.sin(xx / 5.0 + 0.3), 120 + 80 * np.cos(yy / 4.0), 128 + 60 * np.sin((xx - yy) / 7.0)], 2)
    to_t = lambda arr: torch.from_numpy(arr.round().astype(np.uint8)).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)
    return to_t(a), to_t(b)


def test_psnr_of_a_known_mse():
    a = torch.full((3, 16, 16), 100 / 255)
    b = torch.full((3, 16, 16), 110 / 255)  # every value off by 10 levels: MSE = 100
    assert mse(a, b).item() == pytest.approx(100.0)
    assert psnr(a, b).item() == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-4)  # 28.1308 dB
    c = b.clone()
    c[:, :8] = 100 / 255  # half the pixels exact, half off by 10: MSE = 50
    assert psnr(a, c).item() == pytest.approx(10 * math.log10(255**2 / 50), abs=1e-4)


def test_psnr_rounds_to_8_bits_and_handles_batches():
    a = torch.rand(2, 3, 8, 8)
    assert torch.isinf(psnr(a, a)).all()
    # Off by less than half an 8-bit level, the saved images are identical.
    on_grid = (a[0] * 255).round() / 255
    assert torch.isinf(psnr(on_grid, on_grid + 0.4 / 255 * (on_grid < 1)))
    out = psnr(a, (a + 0.05).clamp(0, 1))
    assert out.shape == (2,)
    uint8 = (a[0] * 255).round().to(torch.uint8)
    assert psnr(uint8, a[1]).item() == pytest.approx(psnr(a[0], a[1]).item(), abs=1e-4)


def test_shape_mismatch_and_bad_input_are_clear():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.rand(3, 8, 8), torch.rand(3, 8, 9))
    with pytest.raises(ValueError, match="expected"):
        ssim(torch.rand(8, 8), torch.rand(8, 8))
    with pytest.raises(TypeError):
        psnr(np.zeros((3, 8, 8)), torch.rand(3, 8, 8))


def test_ssim_and_ms_ssim_are_one_on_identical_images():
    a, _ = _pattern_pair()
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)
    assert ms_ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)


def test_ssim_matches_an_independent_reference():
    a, b = _pattern_pair()
    # scikit-image 0.26: structural_similarity(a, b, channel_axis=2, gaussian_weights=True, sigma=1.5,
    # use_sample_covariance=False, data_range=255) on the same (H, W, 3) uint8 arrays.
    assert ssim(a, b).item() == pytest.approx(0.6771596573657742, abs=2e-5)
    assert ssim(a, b).item() == pytest.approx(ssim(b, a).item(), abs=1e-6)


def test_ssim_and_ms_ssim_of_flat_images_follow_the_hand_formula():
    # Flat images have no variance: contrast-structure is 1 and SSIM is the luminance term
    # (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1) (Wang et al. 2004, eq. 6).
    mu_x, mu_y = 60.0, 140.0
    a = torch.full((3, 200, 200), mu_x / 255)
    b = torch.full((3, 200, 200), mu_y / 255)
    c1 = (SSIM_K1 * 255) ** 2
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    assert ssim(a, b).item() == pytest.approx(luminance, rel=1e-5)
    # MS-SSIM multiplies the cs terms (all 1) by the coarsest scale's luminance to its normalised weight.
    assert ms_ssim_scales(200, 200) == 5
    weight = MS_SSIM_WEIGHTS[-1] / sum(MS_SSIM_WEIGHTS)
    assert ms_ssim(a, b).item() == pytest.approx(luminance**weight, rel=1e-5)


def test_ms_ssim_on_images_too_small_for_five_scales():
    assert ms_ssim_scales(512, 768) == 5
    assert ms_ssim_scales(175, 400) == 4  # 175 // 16 = 10 < 11
    assert ms_ssim_scales(40, 56) == 2
    assert ms_ssim_scales(8, 8) == 1
    a, b = _pattern_pair()
    value = ms_ssim(a, b).item()
    assert 0.0 < value < 1.0 and math.isfinite(value)
    tiny = torch.rand(3, 6, 9)
    assert ms_ssim(tiny, tiny).item() == pytest.approx(1.0, abs=1e-6)  # shrunk window, one scale
    both = structural_similarity(a, b)
    assert both.ssim.item() == pytest.approx(ssim(a, b).item()) and both.ms_ssim.item() == pytest.approx(value)


def test_bits_per_pixel_formula():
    # 32 x 32 tokens of a 16384-code vocabulary for a 256 x 256 image: 1024 * 14 / 65536.
    assert bits_per_pixel(32 * 32, 16384, 256 * 256) == pytest.approx(0.21875)
    tok = ImageTokenizer.from_preset("vq-tiny")  # f = 2, 64 codes
    # A 7 x 9 image is padded to an 4 x 5 grid: 20 tokens x 6 bits over 63 pixels.
    assert tok.bits_per_pixel(7, 9) == pytest.approx(bits_per_pixel(20, 64, 63)) == pytest.approx(120 / 63)
    with pytest.raises(ValueError, match="pixels"):
        bits_per_pixel(10, 64, 0)


def test_codebook_histogram_counts_the_whole_set():
    hist = CodebookHistogram(8)
    hist.update(torch.tensor([[0, 1], [1, 3]]))
    hist.update(torch.tensor([3, 3, 3]))
    stats = hist.stats()
    assert hist.counts.tolist() == [1, 2, 0, 4, 0, 0, 0, 0]
    assert stats.tokens == 7 and stats.used_codes == 3 and stats.usage == pytest.approx(3 / 8)
    probs = torch.tensor([1, 2, 4]) / 7
    assert stats.perplexity == pytest.approx(math.exp(-(probs * probs.log()).sum().item()), rel=1e-6)
    assert stats.entropy_bits == pytest.approx(math.log2(stats.perplexity))
    assert code_perplexity(torch.ones(16)) == pytest.approx(16.0)
    with pytest.raises(ValueError, match="outside the codebook"):
        hist.update(torch.tensor([8]))


perceptual = pytest.importorskip("tokenizer.perceptual")


@pytest.mark.skipif(not perceptual.perceptual_available(), reason='needs pip install "imgtok[perceptual]"')
def test_perceptual_distance_is_frozen_named_and_split_consistently():
    metric = perceptual.load_perceptual("auto")
    assert metric.name in ("lpips-alex", "stlpips-alex-shift_tolerant")
    assert not any(p.requires_grad for p in metric.parameters())
    metric.train()
    assert not metric.net.training
    x = torch.rand(2, 3, 32, 40) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    with torch.no_grad():
        same = metric(x, x)
        d = metric(x, y)
        split = metric.distance(metric.features(x), metric.features(y))
    assert same.shape == (2,) and torch.allclose(same, torch.zeros(2), atol=1e-6)
    assert (d > 0).all() and torch.allclose(d, split, rtol=1e-5, atol=1e-7)
    # Usable as a loss: the gradient reaches the input.
    z = y.clone().requires_grad_()
    metric(x, z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="perceptual spec"):
        perceptual.load_perceptual("resnet")


@pytest.mark.skipif(not perceptual.perceptual_available(), reason='needs pip install "imgtok[perceptual]"')
def test_a_bf16_perceptual_distance_tracks_the_fp32_one_and_still_passes_gradients():
    reference = perceptual.PerceptualDistance("alex")
    fast = perceptual.PerceptualDistance("alex", compute_dtype=torch.bfloat16)
    assert fast.name == reference.name and "bfloat16" in repr(fast)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 48, 40, generator=gen) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    with torch.no_grad():
        d32, d16 = reference(x, y), fast(x, y)
        split = fast.distance(fast.features(x), fast.features(y))
    assert d16.dtype == torch.float32 and not torch.equal(d16, d32)  # it really ran in bf16
    assert torch.allclose(d16, d32, rtol=0.05) and torch.allclose(split, d16, rtol=0.02)
    z = y.clone().requires_grad_()
    fast(x, z).sum().backward()
    assert z.grad is not None and z.grad.dtype == torch.float32 and z.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="compute_dtype"):
        perceptual.PerceptualDistance("alex", compute_dtype=torch.float16)


def test_one_bits_per_pixel_and_one_perplexity_for_every_caller():
    """The API, the CLI's figures, the model card and the quantizer's training statistics all use
    tokenizer.metrics' functions, so they cannot drift apart."""
    from tokenizer import ImageTokenizer
    from tokenizer.metrics import CodebookHistogram, bits_per_pixel, code_perplexity
    from tokenizer.model_card import bits_per_pixel as card_bits_per_pixel

    tok = ImageTokenizer.from_preset("vq-tiny")
    f = tok.downsample_factor
    assert tok.bits_per_pixel(30, 17) == bits_per_pixel(15 * 9, tok.vocab_size, 30 * 17)
    assert card_bits_per_pixel(tok.config) == bits_per_pixel(1, tok.vocab_size, f * f)
    x = torch.randn(3, tok.config.latent_channels, 4, 5)
    out = tok.model.quantizer(x)
    hist = CodebookHistogram(tok.vocab_size)
    hist.update(out.indices)
    assert float(out.perplexity) == pytest.approx(code_perplexity(hist.counts), rel=1e-5)
    assert float(out.usage) == pytest.approx(hist.stats().usage, rel=1e-6)
