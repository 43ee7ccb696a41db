"""Turning whatever a user passes as an image into RGB float tensors in [0, 1], and back.

Accepted: a path, a ``PIL.Image``, a uint8/uint16 numpy array (H, W) or (H, W, C), a uint8 tensor
(C, H, W) or (B, C, H, W) as ``torchvision.io`` returns, a float tensor in [0, 1] of those shapes, or a
list of any of these. Grayscale, palette, RGBA (composited on white), 16-bit and CMYK become RGB; EXIF
orientation is applied. Anything else raises :class:`ImageError` naming the input.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

# Decompression-bomb guard: ~134 megapixels (11585^2), beyond any photo a tokenizer should see whole.
MAX_PIXELS = 1 << 27
# Float tensors may overshoot [0, 1] by rounding; anything beyond this is a range mistake.
_RANGE_TOLERANCE = 1e-3


class ImageError(ValueError):
    """An input image that cannot be read or is not in a supported form."""


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (torch.Tensor, np.ndarray)):
        return f"{type(source).__name__} of shape {tuple(source.shape)} and dtype {source.dtype}"
    if isinstance(source, Image.Image):  # name the file it came from when PIL knows it
        return getattr(source, "filename", "") or f"PIL image (mode {source.mode})"
    return type(source).__name__


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) float in [0, 1] -> (H, W, 3), alpha-blended over a white background."""
    rgb, alpha = rgba[..., :3], rgba[..., 3:4]
    return rgb * alpha + (1.0 - alpha)


def pil_to_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) float32 RGB in [0, 1]."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale (PNG/TIFF): full 16-bit range, not the 8-bit truncation of convert("L").
        gray = np.asarray(image, dtype=np.float32) / 65535.0
        return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=2)
    if mode == "F":
        gray = np.asarray(image, dtype=np.float32)
        gray = gray / 255.0 if gray.max(initial=0.0) > 1.0 else gray
        return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        return _composite_on_white(rgba)
    if mode != "RGB":
        image = image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    return np.asarray(image, dtype=np.float32) / 255.0


# Modes whose RGB conversion is 8 bits per channel with no alpha: for these ``pil_to_array`` is exactly
# ``uint8 / 255``, so keeping the uint8 pixels (a quarter of the memory) and converting later, tile by tile
# (``tokenizer.tiling``), gives the same floats.
_UINT8_MODES = frozenset({"RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"})


def pil_to_uint8(image: Image.Image) -> np.ndarray | None:
    """(H, W, 3) uint8 RGB when ``pil_to_array(image)`` is exactly that array / 255, else None."""
    if image.mode not in _UINT8_MODES or (image.mode == "P" and "transparency" in image.info):
        return None
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def _hwc_to_chw(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) -> (3, H, W): a float array is made contiguous (as before); uint8 stays a strided view."""
    tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    return tensor.permute(2, 0, 1) if tensor.dtype == torch.uint8 else tensor.permute(2, 0, 1).contiguous()


def _pixel_limit(max_pixels: int | None) -> int:
    # Read the module attribute at call time (not as a default argument), so that changing
    # ``tokenizer.image_io.MAX_PIXELS`` takes effect everywhere, including through the API.
    return MAX_PIXELS if max_pixels is None else max_pixels


def _check_size(width: int, height: int, max_pixels: int | None, source: Any) -> None:
    limit = _pixel_limit(max_pixels)
    if width * height > limit:
        raise ImageError(
            f"{_describe(source)}: {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{limit} (decompression-bomb guard); resize it or raise max_pixels"
        )


def read_image(path: str | os.PathLike, max_pixels: int | None = None, keep_uint8: bool = False) -> torch.Tensor:
    """Decode an image file -> (3, H, W) float32 in [0, 1], EXIF orientation applied.

    Args:
        path: image file.
        max_pixels: largest W*H accepted (default: ``MAX_PIXELS``), checked before the pixels are decoded.
        keep_uint8: return 8-bit images as (3, H, W) uint8 (``value / 255`` is the float the default
            gives), a quarter of the memory; images with more bits or alpha are float32 either way.

    Raises:
        FileNotFoundError: the path does not exist.
        ImageError: the file is not a decodable image, is truncated, or exceeds ``max_pixels``.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    return _decode(path, path, max_pixels, keep_uint8)


def decode_image_bytes(data: bytes, name: str, max_pixels: int | None = None) -> torch.Tensor:
    """Decode an encoded image held in memory (e.g. a tar member) exactly as ``read_image`` decodes a file.

    Args:
        data: the file's bytes (PNG, JPEG, ...).
        name: what to call the image in errors (e.g. ``shard.tar:key.jpg``).
        max_pixels: largest W*H accepted (default: ``MAX_PIXELS``).
    """
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(file: Path | io.BytesIO, name: Any, max_pixels: int | None, keep_uint8: bool = False) -> torch.Tensor:
    """An open-able file or buffer -> (3, H, W) float32 in [0, 1]; every PIL failure becomes an ImageError."""
    try:
        with Image.open(file) as image:
            _check_size(*image.size, max_pixels, name)
            image.load()  # full decode here, so truncation raises now and not later
            image = ImageOps.exif_transpose(image)
            array = (pil_to_uint8(image) if keep_uint8 else None)
            array = pil_to_array(image) if array is None else array
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(f"{name}: image too large ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for unknown/corrupt/truncated files
        raise ImageError(f"{name}: cannot decode image ({err}); expected a valid PNG/JPEG/WebP/... file") from err
    return _hwc_to_chw(array)  # (H, W, 3) -> (3, H, W)


def _array_to_tensor(array: np.ndarray, source: Any, max_pixels: int | None = None,
                     keep_uint8: bool = False) -> torch.Tensor:
    """(H, W) or (H, W, C) uint8/uint16/float array -> (3, H, W) float in [0, 1]."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"{_describe(source)}: expected an (H, W) or (H, W, C) array with C in 1, 3, 4")
    _check_not_empty(array.shape[0], array.shape[1], None, source)
    _check_size(array.shape[1], array.shape[0], max_pixels, source)  # before any float copy
    if array.dtype == np.uint8 and keep_uint8 and array.shape[2] == 3:
        return _hwc_to_chw(array)
    if array.dtype == np.uint8:
        data = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        data = array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        data = array.astype(np.float32)
        _check_unit_range(torch.from_numpy(data), source)
    else:
        raise ImageError(f"{_describe(source)}: unsupported dtype {array.dtype}; expected uint8, uint16 or float")
    return _channels_to_rgb(torch.from_numpy(np.ascontiguousarray(data.transpose(2, 0, 1))), source)


def _check_not_empty(height: int, width: int, batch: int | None, source: Any) -> None:
    """A 0-pixel image (or a batch of none) has no tokens: say so before any reduction or conv sees it."""
    if height == 0 or width == 0:
        raise ImageError(f"{_describe(source)}: image of {height} x {width} pixels; expected at least 1 x 1")
    if batch == 0:
        raise ImageError(f"{_describe(source)}: a batch of 0 images; expected at least one")


def _check_unit_range(t: torch.Tensor, source: Any) -> None:
    if not torch.isfinite(t).all():  # NaN slips through min/max comparisons and poisons every id
        raise ImageError(f"{_describe(source)}: float image contains NaN or infinite values")
    low, high = float(t.min()), float(t.max())
    if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
        hint = " (it looks like [-1, 1]; map it with (x + 1) / 2)" if low < -_RANGE_TOLERANCE else ""
        # Only values well past 1 look like 8-bit data; [0, 2] is more likely a scaling slip than [0, 255].
        hint = hint or (" (it looks like [0, 255]; divide by 255 or pass uint8)" if high > 2.5 else "")
        raise ImageError(
            f"{_describe(source)}: float image values span [{low:.3g}, {high:.3g}]; expected [0, 1]{hint}"
        )


def _channels_to_rgb(t: torch.Tensor, source: Any) -> torch.Tensor:
    """(..., C, H, W) float with C in 1, 3, 4 -> (..., 3, H, W)."""
    channels = t.shape[-3]
    if channels == 3:
        return t
    if channels == 1:
        return t.expand(*t.shape[:-3], 3, *t.shape[-2:]).contiguous()
    if channels == 4:
        rgb, alpha = t[..., :3, :, :], t[..., 3:4, :, :]
        return rgb * alpha + (1.0 - alpha)  # composite on white, as for RGBA files
    raise ImageError(f"{_describe(source)}: {channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")


def _tensor_to_float(t: torch.Tensor, source: Any, max_pixels: int | None = None,
                     keep_uint8: bool = False) -> torch.Tensor:
    """uint8 or float tensor (C, H, W) / (B, C, H, W) -> float32 in [0, 1] with 3 channels."""
    if t.ndim not in (3, 4):
        raise ImageError(f"{_describe(source)}: expected (C, H, W) or (B, C, H, W)")
    if t.shape[-3] not in (1, 3, 4):
        raise ImageError(
            f"{_describe(source)}: channel axis (dim {t.ndim - 3}) has {t.shape[-3]} entries; "
            "expected channels-first with 1, 3 or 4 channels"
        )
    _check_not_empty(t.shape[-2], t.shape[-1], t.shape[0] if t.ndim == 4 else None, source)
    _check_size(t.shape[-1], t.shape[-2], max_pixels, source)  # before any float copy
    if t.dtype == torch.uint8 and keep_uint8 and t.shape[-3] == 3:
        return t
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.dtype == torch.uint16:
        t = t.float() / 65535.0
    elif t.is_floating_point():
        t = t.float()
        _check_unit_range(t, source)
        t = t.clamp(0.0, 1.0)
    else:
        raise ImageError(f"{_describe(source)}: unsupported dtype {t.dtype}; expected uint8 or float in [0, 1]")
    return _channels_to_rgb(t, source)


def to_tensor(image: Any, max_pixels: int | None = None, keep_uint8: bool = False) -> torch.Tensor:
    """One image in any accepted form -> (3, H, W) float32 in [0, 1]; a 4-D tensor -> (B, 3, H, W).

    Images above ``max_pixels`` (default ``MAX_PIXELS``) raise ``ImageError`` before any float copy is
    made. ``keep_uint8``: 8-bit RGB stays uint8 (see ``read_image``).
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, max_pixels, keep_uint8)
    if isinstance(image, Image.Image):
        # A PIL image from Image.open is not decoded yet: the guard still saves the decode.
        _check_size(*image.size, max_pixels, image)
        image = ImageOps.exif_transpose(image)
        array = pil_to_uint8(image) if keep_uint8 else None
        return _hwc_to_chw(pil_to_array(image) if array is None else array)
    if isinstance(image, np.ndarray):
        return _array_to_tensor(image, image, max_pixels, keep_uint8)
    if isinstance(image, torch.Tensor):
        return _tensor_to_float(image, image, max_pixels, keep_uint8)
    raise ImageError(
        f"unsupported image type {type(image).__name__}; expected a path, PIL.Image, numpy array, tensor or a list"
    )


def as_image_list(images: Any, max_pixels: int | None = None,
                  keep_uint8: bool = False) -> tuple[list[torch.Tensor], str]:
    """Normalise the input of ``encode`` into a list of (3, H, W) tensors and its form.

    The form is "single" (one image), "batch" (a 4-D tensor) or "list"; outputs mirror it.
    """
    if isinstance(images, (list, tuple)):
        return [to_tensor(item, max_pixels, keep_uint8) for item in _flat(images)], "list"
    tensor = to_tensor(images, max_pixels, keep_uint8)
    if tensor.ndim == 4:
        return list(tensor.unbind(0)), "batch"
    return [tensor], "single"


def _flat(items: Sequence[Any]) -> list[Any]:
    for item in items:
        if isinstance(item, torch.Tensor) and item.ndim == 4:
            raise ImageError("a list entry is a 4-D batch tensor; pass the batch itself or a list of (C, H, W) images")
    return list(items)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] -> 8-bit RGB ``PIL.Image`` (rounded, not truncated)."""
    array = (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())  # (3, H, W) -> (H, W, 3)


def save_image(image: torch.Tensor, path: str | os.PathLike) -> None:
    to_pil(image).save(path)
