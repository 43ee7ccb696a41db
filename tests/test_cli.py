"""The `imgtok` command line on a saved vq-tiny folder: encode, decode, reconstruct, info, and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers_images import write_garbage, write_image, write_truncated
from PIL import Image

from tokenizer import ImageTokenizer
from tokenizer.cli import main
from tokenizer.image_io import read_image


@pytest.fixture
def model_dir(saved_tiny_tokenizer):
    return str(saved_tiny_tokenizer[0])


def test_encode_decode_reconstruct(model_dir, tmp_path, capsys):
    image = write_image(tmp_path / "photo.png", height=11, width=14)
    ids_path = tmp_path / "ids.npy"
    assert main(["encode", str(image), "-o", str(ids_path), "--model", model_dir]) == 0
    assert "grid 6 x 7" in capsys.readouterr().out
    ids = np.load(ids_path)
    tok = ImageTokenizer.from_pretrained(model_dir)
    assert ids.shape == (6, 7)
    assert torch.equal(torch.from_numpy(ids.astype(np.int64)), tok.encode(image))

    out = tmp_path / "decoded.png"
    assert main(["decode", str(ids_path), "-o", str(out), "--model", model_dir, "--size", "11", "14"]) == 0
    assert "decoded.png" in capsys.readouterr().out
    with Image.open(out) as decoded:
        assert decoded.size == (14, 11) and decoded.mode == "RGB"
    expected = tok.decode(torch.from_numpy(ids.astype(np.int64)), size=(11, 14))
    assert (read_image(out) - expected).abs().max() <= 0.5 / 255 + 1e-6  # only 8-bit rounding

    recon = tmp_path / "recon.png"
    assert main(["reconstruct", str(image), "-o", str(recon), "--model", model_dir]) == 0
    printed = capsys.readouterr().out
    assert "grid 6 x 7" in printed and "bits per pixel" in printed and "PSNR" in printed
    with Image.open(recon) as rec:
        assert rec.size == (14, 11)


def test_info(model_dir, capsys):
    assert main(["info", model_dir]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_type"] == "vq" and info["vocab_size"] == 64 and info["downsample_factor"] == 2
    assert info["config"]["imgtok_model_type"] == "vq" and info["parameters"] > 0


def test_vae_folder_reconstruct_and_info(tiny_vae, tmp_path, capsys):
    folder = str(tiny_vae.save_pretrained(tmp_path / "kl"))
    image = write_image(tmp_path / "photo.png", height=8, width=10)
    assert main(["reconstruct", str(image), "-o", str(tmp_path / "r.png"), "--model", folder]) == 0
    assert "latent 4 x 4 x 5" in capsys.readouterr().out
    assert main(["info", folder]) == 0
    assert json.loads(capsys.readouterr().out)["model_type"] == "kl"


@pytest.mark.parametrize("command", ["encode", "reconstruct"])
def test_corrupt_image_exits_with_a_clear_message(model_dir, tmp_path, capsys, command):
    bad = write_garbage(tmp_path / "broken.jpg")
    assert main([command, str(bad), "-o", str(tmp_path / "out"), "--model", model_dir]) == 1
    err = capsys.readouterr().err
    assert f"imgtok {command}: error:" in err and "broken.jpg" in err and "cannot decode" in err
    assert "Traceback" not in err


def test_truncated_and_missing_images(model_dir, tmp_path, capsys):
    whole = write_image(tmp_path / "whole.png", height=48, width=48)
    cut = write_truncated(tmp_path / "cut.png", whole)
    assert main(["encode", str(cut), "-o", str(tmp_path / "ids.npy"), "--model", model_dir]) == 1
    assert "cut.png" in capsys.readouterr().err
    assert main(["encode", str(tmp_path / "gone.png"), "-o", str(tmp_path / "ids.npy"), "--model", model_dir]) == 1
    assert "gone.png" in capsys.readouterr().err


def test_decode_errors(model_dir, tmp_path, capsys):
    out = str(tmp_path / "out.png")
    too_big = tmp_path / "big.npy"
    np.save(too_big, np.full((2, 2), 64, dtype=np.int64))
    assert main(["decode", str(too_big), "-o", out, "--model", model_dir]) == 1
    assert "id 64 is outside the vocabulary [0, 64)" in capsys.readouterr().err
    not_npy = tmp_path / "ids.npy"
    not_npy.write_text("hello")
    assert main(["decode", str(not_npy), "-o", out, "--model", model_dir]) == 1
    assert "ids.npy: not a .npy or .npz file" in capsys.readouterr().err


def test_bad_model_folder(tmp_path, capsys):
    image = write_image(tmp_path / "photo.png")
    assert main(["encode", str(image), "-o", str(tmp_path / "ids.npy"), "--model", str(tmp_path)]) == 1
    assert "config.json" in capsys.readouterr().err
