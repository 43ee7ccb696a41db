"""The bundled default models load offline and still reconstruct the shipped example photo well.

The PSNR floors sit a little under the values measured at release (see model_cards/), so a broken
export, a wrong dtype cast or a preprocessing change fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tokenizer
from tokenizer import ImageTokenizer, ImageVAE
from tokenizer.cli import main as cli_main
from tokenizer.image_io import read_image
from tokenizer.metrics import psnr

EXAMPLE = Path(tokenizer.__file__).parent / "assets" / "example.png"
# Measured on example.png at release: see model_cards/imgtok-vq-f8.md and imgtok-kl-f8.md.
VQ_PSNR_FLOOR = 23.9  # measured 24.44 dB (v2), 24.68 dB (v3)
KL_PSNR_FLOOR = 23.5  # measured 24.05 dB


@pytest.fixture(scope="module")
def example() -> torch.Tensor:
    return read_image(EXAMPLE)


def test_bundled_tokenizer_reconstructs_example(example, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no download: the weights ship in the package
    tok = ImageTokenizer.from_pretrained()
    ids = tok.encode(example)
    assert ids.shape == (36, 48) and ids.dtype == torch.long
    assert 0 <= int(ids.min()) and int(ids.max()) < tok.vocab_size
    recon = tok.decode(ids, size=example.shape[-2:])
    assert float(psnr(recon, example)) > VQ_PSNR_FLOOR
    # many distinct codes on a single photo: the codebook is alive
    assert ids.unique().numel() > 0.25 * ids.numel()


def test_bundled_vae_reconstructs_example(example, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vae = ImageVAE.from_pretrained()
    z = vae.encode(example)
    assert z.shape == (vae.latent_channels, 36, 48)
    recon = vae.decode(z, size=example.shape[-2:])
    assert float(psnr(recon, example)) > KL_PSNR_FLOOR


def test_quick_start_command(tmp_path, capsys):
    out = tmp_path / "recon.png"
    assert cli_main(["reconstruct", str(EXAMPLE), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "grid 36 x 48" in printed and "bits per pixel" in printed and "PSNR" in printed
    assert read_image(out).shape == (3, 288, 384)


@pytest.mark.parametrize("name", ["imgtok-vq-f8", "imgtok-kl-f8"])
def test_model_cards_name_no_machine_paths_and_show_the_colour_error(name):
    card = (Path(__file__).parents[1] / "model_cards" / f"{name}.md").read_text()
    for machine in ("/work/", "/home/", "/tmp/", "/root/", "/Users/"):
        assert machine not in card, f"model_cards/{name}.md names a machine path ({machine})"
    assert "ΔE00 (CIEDE2000)" in card  # the colour-error column of the Kodak-24 table
