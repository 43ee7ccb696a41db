"""The model modules: every preset forward/backward and through save/load; gradients; KL; decode(ids).

Axis letters: B batch, H/W image size, h/w grid, D latent channels.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from tokenizer import PRESETS, DiagonalGaussian, KLModel, VQModel, build_model, get_preset
from tokenizer.models import AEModel
from tokenizer.pretrained import load_folder, save_folder


def _image(size: int, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, size, size) * 2 - 1  # model inputs live in [-1, 1]


def _bottleneck_output(model, x: torch.Tensor) -> torch.Tensor:
    """What identifies the encoding: ids (VQ), posterior mean (KL), latents (AE)."""
    if isinstance(model, VQModel):
        return model.encode_ids(x)
    if isinstance(model, KLModel):
        return model.posterior(x).mean
    return model.encode_latents(x)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_forward_backward_and_roundtrip(name):
    config = get_preset(name)
    model = build_model(config).train()
    f = config.downsample_factor
    size = max(16, 2 * f)  # the big presets at a tiny spatial size, to keep the test fast
    x = _image(size)
    out = model(x)
    assert out.reconstruction.shape == x.shape
    loss = (out.reconstruction - x).pow(2).mean()
    if isinstance(model, VQModel):
        depth = (config.depth,) if config.depth > 1 else ()  # residual VQ: one id per depth, depth last
        assert out.quantizer.indices.shape == (1, size // f, size // f, *depth)
        loss = loss + out.quantizer.loss
    elif isinstance(model, KLModel):
        assert out.posterior.mean.shape == (1, config.latent_channels, size // f, size // f)
        loss = loss + 1e-6 * out.kl.sum()
    else:
        assert out.latents.shape == (1, config.latent_channels, size // f, size // f)
    loss.backward()
    for part in (model.encoder.conv_in.weight, model.decoder.conv_out.weight):
        assert part.grad is not None and torch.isfinite(part.grad).all() and part.grad.abs().sum() > 0

    # Save -> load gives the same weights and the same outputs (ids for VQ).
    model.eval()
    folder = Path(tempfile.mkdtemp(prefix=f"imgtok-{name}-"))
    try:
        save_folder(model, folder)
        loaded = load_folder(folder).eval()
    finally:
        shutil.rmtree(folder)
    assert type(loaded) is type(model) and loaded.config == config
    x = _image(size)
    with torch.no_grad():
        a, b = _bottleneck_output(model, x), _bottleneck_output(loaded, x)
        assert torch.equal(a, b)
        if isinstance(model, VQModel):
            assert torch.equal(model.decode_ids(a), loaded.decode_ids(b))
        else:
            assert torch.equal(model.decode_latents(a), loaded.decode_latents(b))


def _tiny_vq(**overrides) -> VQModel:  # "quantizer.<field>" keys set quantizer fields
    return build_model(get_preset("vq-tiny").replace(**overrides))


VQ_VARIANTS = {"l2": {}, "plain": {"quantizer.l2_normalize": False}, "factorised": {"quantizer.code_dim": 2}}


@pytest.mark.parametrize("variant", sorted(VQ_VARIANTS))
def test_reconstruction_gradient_reaches_encoder_not_codebook(variant):
    model = _tiny_vq(**VQ_VARIANTS[variant]).train()
    out = model(_image(8, batch=2))
    out.reconstruction.pow(2).mean().backward()
    grad = model.encoder.conv_in.weight.grad
    assert grad is not None and grad.abs().sum() > 0, "straight-through estimator blocks the encoder"
    codebook_grad = model.quantizer.codebook.grad
    assert codebook_grad is None or not codebook_grad.any()


@pytest.mark.parametrize("variant", sorted(VQ_VARIANTS))
def test_codebook_term_moves_only_the_codebook(variant):
    model = _tiny_vq(**VQ_VARIANTS[variant]).train()
    out = model(_image(8, batch=2))
    out.quantizer.codebook_loss.backward()
    assert model.quantizer.codebook.grad is not None and model.quantizer.codebook.grad.abs().sum() > 0
    for name, param in model.encoder.named_parameters():
        assert param.grad is None or not param.grad.any(), name
    for name, param in model.decoder.named_parameters():
        assert param.grad is None or not param.grad.any(), name


@pytest.mark.parametrize("variant", sorted(VQ_VARIANTS))
def test_decode_ids_equals_decoding_quantized_latents(variant):
    model = _tiny_vq(**VQ_VARIANTS[variant]).eval()
    x = _image(10, batch=2)
    with torch.no_grad():
        q = model.quantizer(model.encode_latents(x))
        from_latents = model.decode_latents(q.quantized)
        from_ids = model.decode_ids(q.indices)
        assert torch.equal(model.encode_ids(x), q.indices)
    torch.testing.assert_close(from_ids, from_latents, rtol=1e-5, atol=1e-5)


def test_vq_forward_reconstruction_is_decoded_codes():
    model = _tiny_vq().eval()
    x = _image(8)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out.reconstruction, model.decode_ids(out.quantizer.indices), rtol=1e-5, atol=1e-5)


# --- KL VAE --------------------------------------------------------------------------------------

def test_kl_matches_monte_carlo_estimate():
    """KL(q || N(0, I)) in closed form vs the mean over samples z ~ q of log q(z) - log p(z)."""
    gen = torch.Generator().manual_seed(1)
    mean = torch.randn(2, 3, 2, 2, generator=gen)  # (B, D, h, w)
    logvar = torch.rand(2, 3, 2, 2, generator=gen) * 3 - 2  # variances from e^-2 to e^1
    post = DiagonalGaussian(mean, logvar)
    samples = torch.stack([post.sample(gen) for _ in range(20000)]).double()  # (S, B, D, h, w)

    def log_normal(z, mu, logv):
        return -0.5 * (math.log(2 * math.pi) + logv + (z - mu) ** 2 / logv.exp())

    log_ratio = log_normal(samples, mean.double(), logvar.double()) - log_normal(
        samples, torch.zeros(()).double(), torch.zeros(()).double()
    )
    per_sample = log_ratio.sum(dim=(2, 3, 4))  # (S, B)
    estimate = per_sample.mean(dim=0)  # (B,)
    stderr = per_sample.std(dim=0) / math.sqrt(per_sample.shape[0])
    closed = post.kl().double()
    assert closed.shape == (2,)
    assert ((closed - estimate).abs() < 5 * stderr).all(), (closed, estimate, stderr)


def test_kl_is_zero_for_the_prior_and_positive_otherwise():
    zeros = torch.zeros(1, 4, 3, 3)
    assert DiagonalGaussian(zeros, zeros).kl().item() == 0.0
    assert DiagonalGaussian(zeros + 0.1, zeros).kl().item() > 0
    assert DiagonalGaussian(zeros, zeros - 0.5).kl().item() > 0


def test_sample_statistics_and_mode():
    mean = torch.full((1, 1, 50, 50), 2.0)
    logvar = torch.full((1, 1, 50, 50), math.log(0.25))  # std 0.5
    post = DiagonalGaussian(mean, logvar)
    z = post.sample(torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - 2.0) < 0.05 and abs(z.std().item() - 0.5) < 0.05
    assert torch.equal(post.mode(), mean)


def test_sample_is_differentiable_in_mean_and_logvar():
    mean = torch.zeros(1, 2, 2, 2, requires_grad=True)
    logvar = torch.zeros(1, 2, 2, 2, requires_grad=True)
    DiagonalGaussian(mean, logvar).sample().sum().backward()
    assert mean.grad is not None and torch.equal(mean.grad, torch.ones_like(mean))
    assert logvar.grad is not None and logvar.grad.abs().sum() > 0


def test_kl_model_forward_and_logvar_clamp():
    config = get_preset("kl-tiny").replace(logvar_clamp=(-1.0, 1.0))
    model = build_model(config).eval()
    x = _image(8)
    with torch.no_grad():
        # Push the log-variance channels far out of range: the clamp must hold them.
        model.quant_conv.bias[config.latent_channels :] += 100.0
        out = model(x, sample=False)
        post = model.posterior(x)
        assert post.logvar.max().item() <= 1.0
        torch.testing.assert_close(out.reconstruction, model.decode_latents(post.mean))
        torch.testing.assert_close(out.kl, post.kl())
        assert not torch.equal(model(x, sample=True).reconstruction, out.reconstruction)


def test_ae_model_has_no_regulariser():
    model = build_model(get_preset("ae-tiny"))
    assert isinstance(model, AEModel)
    x = _image(8)
    out = model(x)
    assert out.latents.shape == (1, 4, 4, 4)
    torch.testing.assert_close(out.reconstruction, model.decode_latents(out.latents))
