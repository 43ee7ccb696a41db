"""The VAE latent scale: measured on images, written to the config, unit second moment afterwards."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tokenizer import ImageVAE
from tokenizer.latent_scale import latent_statistics

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
import latent_scale  # noqa: E402


def test_statistics_match_a_direct_computation_and_ignore_the_current_scale(tiny_vae):
    images = [torch.rand(3, 16, 24), torch.rand(3, 20, 12)]
    stats = latent_statistics(tiny_vae, images)
    z = torch.cat([tiny_vae.encode(im).reshape(-1) for im in images]).double()
    assert stats.count == z.numel()
    assert stats.mean == pytest.approx(float(z.mean()), rel=1e-6, abs=1e-9)
    assert stats.std == pytest.approx(float(z.std(unbiased=False)), rel=1e-6)
    tiny_vae.model.config = tiny_vae.config.replace(scaling_factor=0.5, shift_factor=0.25)
    again = latent_statistics(tiny_vae, images)
    assert again.std == pytest.approx(stats.std, rel=1e-5) and again.mean == pytest.approx(stats.mean, abs=1e-6)
    with pytest.raises(ValueError, match="no images"):
        latent_statistics(tiny_vae, [])


def test_script_writes_a_model_whose_latents_have_unit_second_moment(tiny_vae, tmp_path):
    folder = tiny_vae.save_pretrained(tmp_path / "vae")
    data = tmp_path / "photos"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(data / f"{i}.png")
    assert latent_scale.main([str(folder), "--data", str(data), "--out", str(tmp_path / "scaled")]) == 0
    scaled = ImageVAE.from_pretrained(tmp_path / "scaled")
    assert scaled.config.scaling_factor != 1.0 and scaled.config.shift_factor == 0.0
    z = torch.cat([scaled.encode(torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1)).reshape(-1)
                   for p in sorted(data.glob("*.png"))])
    assert float(z.pow(2).mean()) == pytest.approx(1.0, rel=1e-3)
    image = torch.rand(3, 16, 16)  # same weights: the same reconstruction through the scaled latents
    torch.testing.assert_close(scaled.reconstruct(image), tiny_vae.reconstruct(image), atol=1e-5, rtol=0)
