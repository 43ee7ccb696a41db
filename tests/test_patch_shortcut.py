"""The VAE's linear patch shortcut (``linear_shortcut``): it starts as the patch PCA, keeps its fit, tiles,
trains, and the EMA follows its data-dependent initialisation.

Axis letters: B batch, P patch values, N patches, D latent channels.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from einops import rearrange
from PIL import Image

from tokenizer import ConfigError, ImageVAE, KLConfig, build_model, get_preset
from tokenizer import patch_shortcut
from tokenizer.pretrained import load_folder, save_folder
from train.__main__ import main as train_main
from train.loop import update_ema

from test_tiling import photo_like  # noqa: E402  (one photo-like test image for the tiling tests)


def _shortcut_config() -> KLConfig:
    return get_preset("kl-tiny").replace(linear_shortcut=True)  # f = 2: 12-value patches, 4 latent channels


def _batch(seed: int = 0) -> torch.Tensor:
    images = [photo_like(32, 48, seed=seed + i) for i in range(3)]
    return torch.stack(images).float() / 127.5 - 1  # (B, 3, H, W) in [-1, 1]


def _pca_reconstruction(x: torch.Tensor, f: int, k: int) -> torch.Tensor:
    """The rank-k PCA of x's f x f patches, computed independently of the module (numpy, float64)."""
    patches = rearrange(x, "b c (h p) (w q) -> (b h w) (c p q)", p=f, q=f).double().numpy()  # (N, P)
    mean = patches.mean(axis=0)
    eigvals, eigvecs = np.linalg.eigh(np.cov(patches - mean, rowvar=False))
    basis = eigvecs[:, np.argsort(eigvals)[::-1][:k]]  # (P, k)
    recon = (patches - mean) @ basis @ basis.T + mean
    return rearrange(torch.from_numpy(recon).float(), "(b h w) (c p q) -> b c (h p) (w q)",
                     b=x.shape[0], h=x.shape[2] // f, w=x.shape[3] // f, p=f, q=f)


def test_untrained_model_is_the_patch_pca_of_its_first_batch():
    model = build_model(_shortcut_config())
    x = _batch()
    with torch.no_grad():
        model.eval()
        assert model.decode_latents(model.posterior(x).mode()).abs().max() == 0  # nothing before the fit
        model.train()
        model(x)  # the first training forward fits the shortcut
        model.eval()
        post = model.posterior(x)
        recon = model.decode_latents(post.mode())
    assert int(model.shortcut.initialized) == 1
    torch.testing.assert_close(recon, _pca_reconstruction(x, 2, 4), rtol=0, atol=1e-4)
    # Whitened: each latent channel has unit variance and zero mean over the fitting batch.
    torch.testing.assert_close(post.mean.std(dim=(0, 2, 3)), torch.ones(4), rtol=0, atol=1e-3)
    torch.testing.assert_close(post.mean.mean(dim=(0, 2, 3)), torch.zeros(4), rtol=0, atol=1e-4)
    assert post.std.max() < 0.02  # the posterior noise starts small (about exp(-5)) against unit-variance latents


def test_fit_is_saved_and_never_repeated(tmp_path):
    model = build_model(_shortcut_config()).train()
    model(_batch(0))
    fitted = copy.deepcopy(model.shortcut.state_dict())
    save_folder(model, tmp_path / "m")
    loaded = load_folder(tmp_path / "m").train()
    loaded(_batch(10))  # another batch: a repeated fit would change the weights
    for name, value in fitted.items():
        assert torch.equal(loaded.shortcut.state_dict()[name], value), name
    model(_batch(10))
    assert torch.equal(model.shortcut.encode_proj.weight, fitted["encode_proj.weight"])


def test_ema_copies_the_fit_instead_of_averaging_from_zero():
    model = build_model(_shortcut_config()).train()
    ema = copy.deepcopy(model)  # as the trainer makes it, before the first step
    model(_batch())
    stale = copy.deepcopy(ema)
    update_ema(stale, model, decay=0.999, check_fresh=False)
    assert stale.shortcut.encode_proj.weight.abs().max() < 0.01 * model.shortcut.encode_proj.weight.abs().max()
    update_ema(ema, model, decay=0.999, check_fresh=True)
    assert torch.equal(ema.shortcut.encode_proj.weight, model.shortcut.encode_proj.weight)
    assert int(ema.shortcut.initialized) == 1


def test_tiled_encoding_matches_whole(monkeypatch):
    monkeypatch.setattr(patch_shortcut, "SOURCE_BAND_ROWS", 5)  # several bands, the last one short
    model = build_model(_shortcut_config()).train()
    model(_batch())
    vae = ImageVAE(model.eval())
    img = photo_like(70, 90, seed=3)
    whole = vae.encode(img, tile_size=0)
    torch.testing.assert_close(vae.encode(img, tile_size=32), whole, rtol=1e-3, atol=1e-3)
    assert (vae.decode(whole, tile_size=32) - vae.decode(whole, tile_size=0)).abs().max() < 1e-3


def test_config_checks_and_old_configs():
    with pytest.raises(ConfigError, match="linear_shortcut"):
        build_model(_shortcut_config().replace(latent_channels=13, z_channels=13))  # 12-value patches
    config = get_preset("kl-f8-cpu-pca")
    assert config.linear_shortcut and config.parameter_estimate() == sum(p.numel() for p in build_model(config).parameters())
    data = get_preset("kl-tiny").to_dict()
    data.pop("linear_shortcut", None)
    assert KLConfig.from_dict(data).linear_shortcut is False  # configs from before the field: no shortcut


def test_training_from_the_preset_starts_at_the_fit(tmp_path):
    data = tmp_path / "photos"
    data.mkdir()
    for i in range(3):
        Image.fromarray(photo_like(40, 56, seed=i).permute(1, 2, 0).numpy()).save(data / f"{i}.png")
    run = tmp_path / "run"
    argv = ["--preset", "kl-tiny", "--set", "model.linear_shortcut=true", "--data", str(data), "--out", str(run),
            "--smoke", "--set", "steps=3", "--set", "amp=none", "--set", "ckpt_every=100"]
    assert train_main(argv) == 0
    vae = ImageVAE.from_pretrained(run / "export")
    assert vae.config.linear_shortcut and int(vae.model.shortcut.initialized) == 1
    assert vae.model.shortcut.encode_proj.weight.abs().sum() > 0  # the export carries the fit, not the zeros
    img = photo_like(40, 56, seed=0)
    out = vae.reconstruct(img)
    assert out.shape == (3, 40, 56) and torch.isfinite(out).all()

    # Decoder-only fine-tuning from it: the latents stay those of the source (the shortcut's encoder half is
    # frozen with the encoder), the decoder half moves.
    tuned = tmp_path / "tuned"
    argv = ["--init-from", str(run / "export"), "--decoder-only", "--data", str(data), "--out", str(tuned),
            "--smoke", "--set", "steps=3", "--set", "amp=none", "--set", "ckpt_every=100", "--set", "lr=1e-2"]
    assert train_main(argv) == 0
    after = ImageVAE.from_pretrained(tuned / "export")
    assert torch.equal(after.encode(img), vae.encode(img))
    assert not torch.equal(after.model.shortcut.decode_proj.weight, vae.model.shortcut.decode_proj.weight)


def test_model_card_describes_the_shortcut():
    from tokenizer.model_card import render_model_card

    assert "linear patch shortcut" in render_model_card(get_preset("kl-f8-cpu-pca"))
    assert "linear patch shortcut" not in render_model_card(get_preset("kl-f8-cpu"))
