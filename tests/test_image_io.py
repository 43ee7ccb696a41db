"""Image input: every accepted form and mode becomes RGB in [0, 1]; every bad input a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_images import (
    gradient_rgb,
    pil_image,
    write_exif_rotated_jpeg,
    write_garbage,
    write_image,
    write_truncated,
)
from PIL import Image

import tokenizer.image_io as image_io
from tokenizer import ImageError
from tokenizer.image_io import as_image_list, read_image, to_tensor

H, W = 20, 28


def _rgb_expected(height: int = H, width: int = W) -> torch.Tensor:
    return torch.from_numpy(gradient_rgb(height, width)).permute(2, 0, 1).float() / 255.0  # (H, W, 3) -> (3, H, W)


def _check_rgb(t: torch.Tensor, height: int = H, width: int = W) -> None:
    assert t.shape == (3, height, width) and t.dtype == torch.float32
    assert t.min() >= 0 and t.max() <= 1


# --- accepted forms ------------------------------------------------------------------------------

@pytest.mark.parametrize("as_str", [True, False], ids=["str", "Path"])
def test_png_path_is_lossless(tmp_path, as_str):
    path = write_image(tmp_path / "rgb.png")
    out = to_tensor(str(path) if as_str else path)
    _check_rgb(out)
    assert torch.equal(out, _rgb_expected())


def test_jpeg_path(tmp_path):
    out = to_tensor(write_image(tmp_path / "rgb.jpg", quality=95))
    _check_rgb(out)
    assert (out - _rgb_expected()).abs().mean() < 0.03  # JPEG is lossy


def test_pil_numpy_and_tensor_forms_agree():
    expected = _rgb_expected()
    array = gradient_rgb(H, W)  # (H, W, 3) uint8
    assert torch.equal(to_tensor(Image.fromarray(array)), expected)
    assert torch.equal(to_tensor(array), expected)
    chw = torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, H, W) uint8 as torchvision.io returns
    assert torch.equal(to_tensor(chw), expected)
    assert torch.equal(to_tensor(chw[None].repeat(2, 1, 1, 1)), expected[None].repeat(2, 1, 1, 1))
    assert torch.equal(to_tensor(expected.clone()), expected)
    assert torch.equal(to_tensor(expected[None].clone()), expected[None])
    torch.testing.assert_close(to_tensor(array.astype(np.float32) / 255), expected)


def test_uint16_numpy_uses_full_range():
    array = np.zeros((4, 5, 3), dtype=np.uint16)
    array[0, 0] = 65535
    array[1, 1] = 32768
    out = to_tensor(array)
    _check_rgb(out, 4, 5)
    assert out[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert out[0, 1, 1].item() == pytest.approx(32768 / 65535)


def test_grayscale_array_and_tensor_become_rgb():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = to_tensor(gray)
    assert out.shape == (3, 3, 4)
    assert torch.equal(out[0], out[2]) and torch.equal(out[0], torch.from_numpy(gray).float() / 255)
    one_channel = torch.rand(1, 3, 4)
    assert torch.equal(to_tensor(one_channel), one_channel.expand(3, 3, 4))


def test_four_channel_tensor_composited_on_white():
    rgba = torch.zeros(4, 2, 2)
    rgba[3, 0, :] = 1.0  # top row opaque black, bottom row transparent
    out = to_tensor(rgba)
    assert out[:, 0].abs().max() == 0 and out[:, 1].min() == 1


@pytest.mark.parametrize(
    "mode,suffix",
    [("L", "png"), ("L", "jpg"), ("LA", "png"), ("1", "png"), ("P", "png"), ("RGBA", "png"),
     ("P+transparency", "png"), ("I;16", "png"), ("CMYK", "jpg")],
)
def test_file_modes_become_rgb(tmp_path, mode, suffix):
    path = write_image(tmp_path / f"img.{suffix}", mode, quality=95) if suffix == "jpg" else write_image(
        tmp_path / f"img.{suffix}", mode
    )
    with Image.open(path) as check:
        assert check.mode == mode.split("+")[0], "the file does not have the mode this test is about"
    out = to_tensor(path)
    _check_rgb(out)
    if mode in ("L", "LA", "1", "I;16"):
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])  # gray stays gray
    if mode == "CMYK":
        assert (out - _rgb_expected()).abs().mean() < 0.05
    if mode == "P":
        expected = torch.from_numpy(np.array(pil_image("P").convert("RGB"))).permute(2, 0, 1) / 255.0
        assert torch.equal(out, expected.float())


def test_sixteen_bit_png_keeps_sixteen_bits(tmp_path):
    path = write_image(tmp_path / "deep.png", "I;16")
    out = to_tensor(path)
    ramp = np.linspace(0, 65535, H * W).reshape(H, W).astype(np.uint16)
    torch.testing.assert_close(out[0], torch.from_numpy(ramp.astype(np.float32) / 65535), rtol=0, atol=1e-6)
    # More distinct levels than 8 bits can hold: no truncation to 8 bits on the way.
    assert out[0].unique().numel() > 256


def test_rgba_transparent_pixels_become_white(tmp_path):
    out = to_tensor(write_image(tmp_path / "alpha.png", "RGBA"))
    assert out[:, :, : W // 2].min() == 1.0  # transparent half
    assert torch.equal(out[:, :, W // 2 :], _rgb_expected()[:, :, W // 2 :])  # opaque half unchanged


def test_palette_transparency_becomes_white(tmp_path):
    path = write_image(tmp_path / "pal.png", "P+transparency")
    with Image.open(path) as image:
        index = np.asarray(image)
    out = to_tensor(path)
    transparent = torch.from_numpy(index == 0)
    assert transparent.any() and (~transparent).any()
    assert (out[:, transparent] == 1.0).all()


def test_exif_orientation_is_applied(tmp_path):
    path = write_exif_rotated_jpeg(tmp_path / "rotated.jpg", height=H, width=W, orientation=6)
    out = to_tensor(path)
    assert out.shape == (3, W, H)  # displayed size: transposed
    # Orientation 6 = the stored pixels shown rotated 90 degrees clockwise.
    stored = _rgb_expected()
    clockwise = torch.rot90(stored, k=-1, dims=(1, 2))
    assert (out - clockwise).abs().mean() < 0.03
    # The same through PIL (as a user who opens the file themselves).
    with Image.open(path) as image:
        assert to_tensor(image).shape == (3, W, H)


def test_as_image_list_forms():
    images, form = as_image_list(torch.rand(3, 5, 6))
    assert form == "single" and len(images) == 1
    images, form = as_image_list(torch.rand(2, 3, 5, 6))
    assert form == "batch" and len(images) == 2 and images[0].shape == (3, 5, 6)
    mixed = [torch.rand(3, 5, 6), gradient_rgb(7, 4), Image.fromarray(gradient_rgb(9, 9))]
    images, form = as_image_list(mixed)
    assert form == "list" and [tuple(i.shape) for i in images] == [(3, 5, 6), (3, 7, 4), (3, 9, 9)]


# --- errors --------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        to_tensor(path)


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_corrupt_file(tmp_path, suffix):
    path = write_garbage(tmp_path / f"corrupt.{suffix}")
    with pytest.raises(ImageError, match=rf"corrupt\.{suffix}.*cannot decode"):
        to_tensor(path)


def test_empty_and_text_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image\n")
    for path in (empty, text):
        with pytest.raises(ImageError, match=path.name):
            to_tensor(path)


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_truncated_file(tmp_path, suffix):
    whole = write_image(tmp_path / f"whole.{suffix}", height=64, width=64)
    path = write_truncated(tmp_path / f"truncated.{suffix}", whole, keep=0.6)
    with pytest.raises(ImageError, match=rf"truncated\.{suffix}"):
        to_tensor(path)


def test_size_limit_module_setting(tmp_path, monkeypatch, tiny_tokenizer):
    path = write_image(tmp_path / "big.png", height=H, width=W)
    monkeypatch.setattr(image_io, "MAX_PIXELS", H * W - 1)
    with pytest.raises(ImageError, match=rf"big\.png.*{H * W}.*limit"):
        to_tensor(path)
    with pytest.raises(ImageError, match="limit"):
        tiny_tokenizer.encode(path)  # the API obeys the module setting too
    with pytest.raises(ImageError, match=r"big\.png.*limit"), Image.open(path) as opened:
        tiny_tokenizer.encode(opened)
    monkeypatch.setattr(image_io, "MAX_PIXELS", H * W)
    assert to_tensor(path).shape == (3, H, W)  # exactly at the limit is fine


def test_size_limit_argument(tmp_path):
    path = write_image(tmp_path / "big.png")
    with pytest.raises(ImageError, match="decompression-bomb"):
        read_image(path, max_pixels=100)
    assert read_image(path, max_pixels=H * W).shape == (3, H, W)


def test_float_in_minus_one_one_is_an_error_that_says_so():
    with pytest.raises(ImageError, match=r"\[-1, 1\]") as info:
        to_tensor(torch.rand(3, 8, 8) * 2 - 1)
    assert "Tensor of shape (3, 8, 8)" in str(info.value)
    with pytest.raises(ImageError, match=r"\[-1, 1\]"):
        to_tensor(np.random.default_rng(0).uniform(-1, 1, (8, 8, 3)).astype(np.float32))


def test_float_in_0_255_is_an_error_that_says_so():
    with pytest.raises(ImageError, match=r"\[0, 255\]"):
        to_tensor(torch.rand(3, 8, 8) * 255)


def test_non_finite_float_is_an_error():
    image = torch.rand(3, 8, 8)
    image[0, 0, 0] = float("nan")
    with pytest.raises(ImageError, match="NaN"):
        to_tensor(image)


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.rand(8, 8), r"\(C, H, W\)"),
        (torch.rand(8, 8, 3), "channels-first"),
        (torch.rand(5, 8, 8), "channels-first"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), "dtype"),
        (np.zeros((8, 8, 2), dtype=np.uint8), r"\(H, W, C\)"),
        (np.zeros((8, 8, 3), dtype=np.int64), "dtype"),
        (42, "unsupported image type int"),
        ([torch.rand(2, 3, 8, 8)], "4-D batch"),
    ],
    ids=["2d-tensor", "hwc-tensor", "5-channels", "int32", "2-channel-array", "int64-array", "int", "nested-batch"],
)
def test_bad_forms(bad, match):
    with pytest.raises(ImageError, match=match):
        as_image_list(bad)
