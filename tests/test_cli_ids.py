"""``imgtok encode``/``decode`` keep the image size and the model with the ids (issue 17, points 3-5).

Sizes read H then W everywhere (``--size H W``, printed ``H x W``); ``.npz`` carries ids, height, width and
the model, so decode crops to the original size by itself; ``.npy`` still works and says what it does not
keep; a size larger than the grid covers is refused; file errors name the file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers_images import write_image
from PIL import Image

from tokenizer import ImageTokenizer, ImageVAE
from tokenizer.cli import main


@pytest.fixture
def model_dir(saved_tiny_tokenizer):
    return str(saved_tiny_tokenizer[0])


def test_npz_keeps_size_and_model_and_decode_uses_them(model_dir, tmp_path, capsys):
    image = write_image(tmp_path / "photo.png", height=11, width=14)
    ids_path = tmp_path / "ids.npz"
    assert main(["encode", str(image), "-o", str(ids_path), "--model", model_dir]) == 0
    printed = capsys.readouterr().out
    assert "11 x 14 (H x W) -> grid 6 x 7" in printed and model_dir in printed
    with np.load(ids_path) as data:
        assert data["ids"].shape == (6, 7) and (int(data["height"]), int(data["width"])) == (11, 14)
        assert str(data["model_name"]) == model_dir and len(str(data["model_sha256"])) == 64
    out = tmp_path / "out.png"
    assert main(["decode", str(ids_path), "-o", str(out), "--model", model_dir]) == 0  # no --size needed
    assert "image 11 x 14 (H x W)" in capsys.readouterr().out
    with Image.open(out) as decoded:
        assert decoded.size == (14, 11)  # PIL: (W, H)


def test_npy_named_explicitly_says_the_size_is_not_kept(model_dir, tmp_path, capsys):
    image = write_image(tmp_path / "photo.png", height=11, width=14)
    ids_path = tmp_path / "ids.npy"
    assert main(["encode", str(image), "-o", str(ids_path), "--model", model_dir]) == 0
    assert "holds the ids only, not the image size: decode with --size 11 14" in capsys.readouterr().out
    assert np.load(ids_path).shape == (6, 7)
    assert main(["decode", str(ids_path), "-o", str(tmp_path / "a.png"), "--model", model_dir]) == 0
    assert "holds no image size" in capsys.readouterr().out
    assert main(["encode", str(image), "-o", str(tmp_path / "ids.txt"), "--model", model_dir]) == 1
    assert "expected a .npz" in capsys.readouterr().err


def test_sizes_larger_than_the_grid_are_refused(model_dir, tmp_path, capsys):
    tok = ImageTokenizer.from_pretrained(model_dir)
    ids = torch.zeros(4, 5, dtype=torch.long)  # f = 2: covers 8 x 10
    assert tok.decode(ids, size=(8, 10)).shape == (3, 8, 10)
    with pytest.raises(ValueError, match=r"does not fit the decoded image 8 x 10 \(grid 4 x 5"):
        tok.decode(ids, size=(100, 100))  # before: silently (3, 8, 10)
    with pytest.raises(ValueError, match="does not fit the decoded image"):
        tok.decode(ids, size=(10, 8))  # swapped
    vae = ImageVAE.from_preset("kl-tiny")
    with pytest.raises(ValueError, match="does not fit the decoded image"):
        vae.decode(torch.zeros(4, 4, 5), size=(9, 10))
    path = tmp_path / "ids.npy"
    np.save(path, np.zeros((4, 5), np.uint16))
    assert main(["decode", str(path), "-o", str(tmp_path / "x.png"), "--size", "10", "8", "--model", model_dir]) == 1
    err = capsys.readouterr().err
    assert "ids.npy" in err and "does not fit the decoded image" in err


def test_decode_errors_name_the_file(model_dir, tmp_path, capsys):
    out = str(tmp_path / "out.png")
    oov = tmp_path / "oov.npy"
    np.save(oov, np.full((2, 2), 64, dtype=np.int64))
    assert main(["decode", str(oov), "-o", out, "--model", model_dir]) == 1
    err = capsys.readouterr().err
    assert "oov.npy" in err and "id 64 is outside the vocabulary [0, 64)" in err  # before: no file named
    text = tmp_path / "text.npy"
    text.write_text("hello")
    assert main(["decode", str(text), "-o", out, "--model", model_dir]) == 1
    err = capsys.readouterr().err
    assert "not a .npy or .npz file" in err and "pickled" not in err  # before: "pickled (object) data"
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    assert main(["decode", str(tmp_path / "other.npz"), "-o", out, "--model", model_dir]) == 1
    assert "without an 'ids' array" in capsys.readouterr().err


def test_decode_with_other_weights_warns_by_name(model_dir, tmp_path, capsys):
    image = write_image(tmp_path / "photo.png", height=8, width=8)
    ids_path = tmp_path / "ids.npz"
    assert main(["encode", str(image), "-o", str(ids_path), "--model", model_dir]) == 0
    other = ImageTokenizer.from_preset("vq-tiny").save_pretrained(tmp_path / "other", model_card=False)
    capsys.readouterr()
    assert main(["decode", str(ids_path), "-o", str(tmp_path / "x.png"), "--model", str(other)]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and f"made with {model_dir}" in err and f"decoded with {other}" in err


def test_info_takes_model_flag_and_positional(model_dir, capsys):
    assert main(["info", "--model", model_dir]) == 0  # before: "unrecognized arguments: --model"
    info = json.loads(capsys.readouterr().out)
    assert info["vocab_size"] == 64 and info["name"] == model_dir and len(info["sha256"]) == 64
    assert main(["info", model_dir]) == 0
    assert json.loads(capsys.readouterr().out)["vocab_size"] == 64


def test_image_messages(model_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    assert main(["encode", str(folder), "-o", str(tmp_path / "i.npz"), "--model", model_dir]) == 1
    assert "is a folder, not an image file" in capsys.readouterr().err  # before: "no such image file"
    tok = ImageTokenizer.from_pretrained(model_dir)
    with pytest.raises(ValueError) as info:
        tok.encode(torch.rand(3, 8, 8) * 2)  # [0, 2]: a scaling slip, not 8-bit data
    assert "expected [0, 1]" in str(info.value) and "[0, 255]" not in str(info.value)
    with pytest.raises(ValueError, match=r"looks like \[0, 255\]"):
        tok.encode(torch.rand(3, 8, 8) * 255)


def test_ctrl_c_during_tokenize_prints_one_line(model_dir, tmp_path, capsys, monkeypatch):
    import tokenizer.batch_tokenize as bt

    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        write_image(images / f"{i}.png", height=8, width=8)
    real = bt.tokenize_dataset

    def interrupted_after_one_shard(config, **kwargs):
        config.max_shards = 1
        real(config, **kwargs)
        raise KeyboardInterrupt  # what Ctrl-C raises in the middle of the next shard

    monkeypatch.setattr(bt, "tokenize_dataset", interrupted_after_one_shard)
    out = tmp_path / "tokens"
    argv = ["tokenize", "--model", model_dir, "--input", str(images), "--output", str(out), "--size", "8",
            "--shard-size", "2", "--workers", "0", "--no-progress"]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    # Before: a 48-line KeyboardInterrupt traceback.
    assert err == f"interrupted: 1 of 2 shards complete in {out}; finished shards are kept: re-run the same " \
                  "command to resume"
    monkeypatch.setattr(bt, "tokenize_dataset", real)
    assert main(argv) == 0 and "1 already done" in capsys.readouterr().out
