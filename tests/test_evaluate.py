"""scripts/evaluate.py: the codec budget search, the baselines' bit counts, and a full run on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers_images import gradient_rgb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import evaluate  # noqa: E402  (scripts/ is not a package)


def _photo_like(height: int = 48, width: int = 64, seed: int = 0) -> torch.Tensor:
    """(3, H, W) on the 8-bit grid: ramps, an edge and noise, so codecs have something to spend bits on."""
    array = gradient_rgb(height, width, seed).astype(np.int16)
    array[:, width // 2 :, 0] = 255 - array[:, width // 2 :, 0]
    return torch.from_numpy(array.astype(np.uint8)).permute(2, 0, 1).float() / 255  # (H, W, 3) -> (3, H, W)


@pytest.mark.parametrize("codec", ["jpeg", "webp"])
def test_codec_search_hits_its_budget(codec):
    image = _photo_like()
    target = evaluate.codec_encode(image, codec, 60).bpp
    found = evaluate.codec_at_budget(image, codec, target)
    assert found.within_budget and found.bpp <= target
    assert found.quality >= 55  # quality 60 fits, so the search must not stop far below it
    assert found.bpp == pytest.approx(found.bytes * 8 / (48 * 64))
    assert found.image.shape == image.shape
    impossible = evaluate.codec_at_budget(image, codec, 1e-3)
    assert not impossible.within_budget and impossible.quality == (1 if codec == "jpeg" else 0)


def test_baselines_count_their_bits():
    image = _photo_like(50, 60)
    up, bpp = evaluate.bicubic_baseline(image, 4)
    assert up.shape == image.shape and bpp == pytest.approx(24 * 13 * 15 / (50 * 60))
    pca = evaluate.PatchPCA(4, coefficient_bits=6).fit([image])
    k = pca.components_for(12.0)
    assert k == 2
    recon, pca_bpp = pca.reconstruct(image, k)
    assert recon.shape == image.shape and pca_bpp == pytest.approx(13 * 15 * 2 * 6 / (50 * 60))
    # All 48 components at 12 bits reproduce the image closely (a check of the patch layout round trip).
    full = evaluate.PatchPCA(4, coefficient_bits=12).fit([image])
    assert float(evaluate.psnr(image, full.reconstruct(image, 48)[0])) > 40
    zq, bits = evaluate.quantize_latents(torch.randn(4, 5, 6), 8)
    assert bits == 4 * 5 * 6 * 8 + 4 * 2 * 32 and zq.shape == (4, 5, 6)


def _write_images(folder: Path) -> Path:
    folder.mkdir()
    Image.fromarray(gradient_rgb(32, 40, 1)).save(folder / "a.png")
    Image.fromarray(gradient_rgb(27, 35, 2)).convert("L").save(folder / "b_gray_odd.png")  # odd size, grayscale
    Image.fromarray(gradient_rgb(36, 36, 3)).save(folder / "c.jpg", quality=90)
    (folder / "d_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def test_evaluate_runs_end_to_end_on_a_tiny_tokenizer(saved_tiny_tokenizer, tmp_path, capsys):
    folder, tok = saved_tiny_tokenizer
    data = _write_images(tmp_path / "images")
    out = tmp_path / "eval"
    code = evaluate.main([str(folder), "--data", str(data), "--out", str(out), "--perceptual", "none",
                          "--grid-images", "2"])
    assert code == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["num_images"] == 3 and [f["image"] for f in result["failures"]] == ["d_corrupt.png"]
    assert set(result["means"]) == {"tokenizer", "jpeg", "webp", "bicubic_x2", "pca"}
    for method, means in result["means"].items():
        assert {"bpp", "psnr", "ssim", "ms_ssim", "delta_e00"} <= set(means), method
        assert means["delta_e00"] >= 0
    for row in result["images"]:
        h, w = row["height"], row["width"]
        assert row["tokenizer"]["bpp"] == pytest.approx(math.ceil(h / 2) * math.ceil(w / 2) * 6 / (h * w))
        for codec in ("jpeg", "webp"):
            if row[codec]["within_budget"]:
                assert row[codec]["bpp"] <= row["tokenizer"]["bpp"]
        assert row["pca"]["bpp"] <= row["tokenizer"]["bpp"] + 1e-12
    assert result["images"][1]["height"] == 27 and result["images"][1]["width"] == 35
    codebook = result["codebook"]
    assert sum(codebook["histogram"]) == codebook["tokens"] == 16 * 20 + 14 * 18 + 18 * 18
    assert codebook["used_codes"] == sum(c > 0 for c in codebook["histogram"]) <= 64
    assert "| tokenizer |" in (out / "metrics.md").read_text()
    assert Image.open(out / "grid.png").size[1] > 2 * evaluate.GRID_TILE_HEIGHT
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "rate_distortion.png").stat().st_size > 0
        assert len(result["rate_distortion"]["jpeg"]) == len(evaluate.JPEG_CURVE)
    assert "| jpeg |" in capsys.readouterr().out


def test_evaluate_a_vae_with_size_and_limit(tiny_vae, tmp_path):
    folder = tiny_vae.save_pretrained(tmp_path / "kl-tiny")
    data = _write_images(tmp_path / "images")
    out = tmp_path / "eval"
    assert evaluate.main([str(folder), "--data", str(data), "--out", str(out), "--perceptual", "none",
                          "--size", "24", "--limit", "2", "--grid-images", "0", "--no-curves"]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["num_images"] == 2 and "codebook" not in result
    row = result["images"][0]
    assert (row["height"], row["width"]) == (24, 24)
    assert row["vae"]["bpp"] == pytest.approx((4 * 12 * 12 * 8 + 4 * 64) / (24 * 24))
    assert not (out / "grid.png").exists()


def test_evaluate_reports_a_bad_data_folder(saved_tiny_tokenizer, tmp_path, capsys):
    folder, _ = saved_tiny_tokenizer
    assert evaluate.main([str(folder), "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1
    assert "not a directory" in capsys.readouterr().err


perceptual = pytest.importorskip("tokenizer.perceptual")


@pytest.mark.skipif(not perceptual.perceptual_available(), reason='needs pip install "imgtok[perceptual]"')
def test_evaluate_with_the_perceptual_metric(saved_tiny_tokenizer, tmp_path):
    folder, _ = saved_tiny_tokenizer
    data = _write_images(tmp_path / "images")
    out = tmp_path / "eval"
    assert evaluate.main([str(folder), "--data", str(data), "--out", str(out), "--size", "32", "--limit", "1",
                          "--grid-images", "0", "--no-curves", "--perceptual-all"]) == 0
    result = json.loads((out / "metrics.json").read_text())
    key = "lpips" if result["perceptual_metric"].startswith("lpips") else "stlpips"
    assert key in result["metric_keys"]
    for method in result["means"]:
        assert result["means"][method][key] >= 0.0
    assert result["perceptual_metric"] == perceptual.load_perceptual("auto").name
    assert f"| {key} |" in (out / "metrics.md").read_text()
