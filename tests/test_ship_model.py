"""scripts/ship_model.py: a candidate replaces the shipped model only when it is better, stored in fp16."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from tokenizer import ImageTokenizer

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
import ship_model  # noqa: E402


def _photos(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((np.kron(rng.random((4, 5, 3)), np.ones((8, 8, 1))) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def test_only_a_better_candidate_ships_and_it_ships_in_fp16(tmp_path, capsys):
    photos = _photos(tmp_path / "heldout")
    good = ImageTokenizer.from_preset("vq-tiny")
    candidate = good.save_pretrained(tmp_path / "candidate")
    damaged = ImageTokenizer.from_pretrained(candidate)
    with torch.no_grad():
        for p in damaged.model.decoder.parameters():
            p.add_(0.5 * torch.randn_like(p))
    shipped = damaged.save_pretrained(tmp_path / "shipped")
    twin = shutil.copytree(shipped, tmp_path / "twin")

    argv = ["--val-data", str(photos), "--perceptual", "none"]
    assert ship_model.main([str(twin), str(shipped), *argv]) == 0  # equal: not shipped
    out = capsys.readouterr().out
    assert "not shipped" in out
    before = (shipped / "model.safetensors").read_bytes()

    assert ship_model.main([str(candidate), str(shipped), *argv]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[: out.index("\nshipped:") + 1])
    assert report["ship"] and report["psnr_gain"] >= 0.2
    assert (shipped / "model.safetensors").read_bytes() != before
    with safe_open(str(shipped / "model.safetensors"), "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes["decoder.conv_in.weight"] == torch.float16
    assert all(v == torch.float32 for k, v in dtypes.items() if k.startswith("quantizer.") and v.is_floating_point)
    loaded = ImageTokenizer.from_pretrained(shipped)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    image = torch.rand(3, 32, 40)
    # fp16 storage rounds the encoder's weights: nearly every id stays (the codebook itself is exact).
    assert (loaded.encode(image) == good.encode(image)).float().mean() > 0.95
