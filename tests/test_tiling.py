"""Tiled encode/decode (tokenizer.tiling): same ids as the whole-image encode, seamless decode, bounded memory.

Small models and small generated images, forced into many tiles with a small ``tile_size``; the memory
test runs in a separate process and asserts no timing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tokenizer import ImageError, ImageTokenizer, ImageVAE, tiling
from tokenizer.tiling import PixelSource, TiledEncoder, choose_tile_size


def photo_like(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(3, H, W) uint8: smooth colour fields, edges and a little noise (not pure noise, not flat)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    base = torch.stack([torch.sin(6 * xx + 2 * yy), torch.cos(5 * yy - 3 * xx), (xx > 0.4).float() - yy])
    img = 0.5 + 0.3 * base + 0.05 * torch.randn(3, height, width, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def test_choose_tile_size_rules():
    t = tiling.TILE_THRESHOLD_PIXELS
    assert choose_tile_size(1024, t // 1024) is None  # at the threshold: whole
    assert choose_tile_size(1024, t // 1024 + 1) == tiling.DEFAULT_TILE_SIZE
    assert choose_tile_size(4000, 3000, 0) is None
    assert choose_tile_size(64, 64, 64) is None  # fits one tile
    assert choose_tile_size(64, 65, 64) == 64
    with pytest.raises(ValueError, match="tile_size"):
        choose_tile_size(10, 10, -1)


def test_small_images_are_not_tiled_and_uint8_gives_the_float_ids(tiny_tokenizer):
    img = photo_like(40, 56)
    ids = tiny_tokenizer.encode(img)
    assert torch.equal(ids, tiny_tokenizer.encode(img, tile_size=0))
    assert torch.equal(ids, tiny_tokenizer.encode(img.float() / 255.0))  # uint8 kept until the batch: same floats


@pytest.mark.parametrize("overrides", [{}, {"attn_levels": (1,)}, {"mid_attention": False}])
def test_tiled_ids_match_untiled(overrides):
    # vq-tiny has mid-block attention (run on the whole map); attn_levels adds attention at f=2.
    tok = ImageTokenizer.from_preset("vq-tiny", **overrides)
    img = photo_like(96, 136)
    ref = tok.encode(img, tile_size=0)
    ids = tok.encode(img, tile_size=32)  # 3 x 5 tiles
    assert ids.shape == ref.shape
    assert (ids == ref).float().mean() >= 0.995


def test_tiled_features_equal_untiled_with_a_whole_image_halo(tiny_tokenizer):
    # With a halo covering the image, only the GroupNorm statistics passes differ from the plain forward.
    tok = tiny_tokenizer
    img = photo_like(48, 64)[None]
    with torch.no_grad():
        ref = tok.model.encoder(tok._to_model_input(img.float() / 255))
        out = TiledEncoder(tok.model.encoder, 16, halo=128)(PixelSource(img, 2, tok.device, tok.dtype))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_tiled_vae_latents_and_decode_match_untiled(tiny_vae):
    img = photo_like(96, 128)
    ref = tiny_vae.encode(img, tile_size=0)
    lat = tiny_vae.encode(img, tile_size=32)
    torch.testing.assert_close(lat, ref, rtol=1e-3, atol=1e-3)
    whole = tiny_vae.decode(ref, tile_size=0)
    tiled = tiny_vae.decode(ref, tile_size=32)
    assert tiled.shape == whole.shape == (3, 96, 128)
    assert (tiled - whole).abs().max() < 1e-3


def test_reconstruct_takes_tile_size(tiny_tokenizer):
    img = photo_like(70, 90)
    out = tiny_tokenizer.reconstruct(img, tile_size=32)
    assert out.shape == (3, 70, 90)
    assert (out - tiny_tokenizer.reconstruct(img, tile_size=0)).abs().max() < 0.02


def test_pixel_limit_refuses_in_memory_images_before_converting(tiny_tokenizer, monkeypatch):
    from tokenizer import image_io

    monkeypatch.setattr(image_io, "MAX_PIXELS", 40 * 40)
    with pytest.raises(ImageError, match=r"41x40 = 1640 pixels exceeds the limit of 1600"):
        tiny_tokenizer.encode(np.zeros((40, 41, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="exceeds the limit"):
        tiny_tokenizer.encode(torch.zeros(3, 41, 40))


MEMORY_SCRIPT = textwrap.dedent(
    """
    import torch
    from tokenizer import ImageTokenizer

    def status(key):  # kB figures of /proc/self/status
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    torch.set_num_threads(2)
    tok = ImageTokenizer.from_preset("vq-tiny", mid_attention=False)
    side = {side}
    img = torch.full((3, side, side), 128, dtype=torch.uint8)
    img[:, ::7] = 30
    # Reset the peak (VmHWM) to the current size, so that what import and set-up touched does not hide
    # the encode's own peak (ru_maxrss cannot be reset: it once made the untiled growth read 0).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    ids = tok.encode(img, tile_size={tile})
    assert ids.shape == (side // 2, side // 2)
    print(status("VmHWM") - before)
    """
)


def _grown(side: int, tile: int) -> int:
    # A fixed mmap threshold: glibc otherwise raises it after the first large free, later tensors land on the
    # heap and freed ones stay resident, so the peak read the allocator's history (tiled 83-125 MiB over runs
    # of one script, once above the "< half" bound) rather than the encode's live memory (54-56 MiB fixed).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT.format(side=side, tile=tile)],
                         capture_output=True, text=True, timeout=1800, env=env)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


def test_tiled_encode_memory_is_bounded():
    # 1024^2 at 8 channels: one full-resolution activation is 32 MiB, and the untiled encoder holds several.
    side = 1024
    activation = 8 * side * side * 4
    untiled, tiled = _grown(side, 0), _grown(side, 256)
    assert untiled > 2 * activation, f"untiled grew only {untiled / 2**20:.0f} MiB"
    assert tiled < untiled / 2, f"tiled {tiled / 2**20:.0f} MiB vs untiled {untiled / 2**20:.0f} MiB"


def test_native_batch_run_records_a_refused_image_and_goes_on(tmp_path, saved_tiny_tokenizer):
    import json

    from PIL import Image

    from tokenizer.batch_tokenize import TokenizeConfig, tokenize_dataset

    folder, _ = saved_tiny_tokenizer
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo_like(40, 40).permute(1, 2, 0).numpy()).save(src / "a_big.png")
    Image.fromarray(photo_like(20, 24).permute(1, 2, 0).numpy()).save(src / "b_small.png")
    config = TokenizeConfig(input=str(src), output=str(tmp_path / "out"), model=str(folder), native=True,
                            workers=0, max_pixels=1000, tile_size=16, progress=False)
    result = tokenize_dataset(config)
    assert (result.images, result.errors) == (1, 1)
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert errors[0]["key"] == "a_big.png" and "40x40 = 1600 pixels exceeds the limit of 1000" in errors[0]["error"]
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["encode"]["tiling"]["tile_size"] == 16
