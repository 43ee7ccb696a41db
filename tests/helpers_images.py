"""Small synthetic images in every mode and file format the image pipeline must accept (or reject).

Everything is generated here, so the tests need no data files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# EXIF tag 0x0112 (Orientation); 6 = "rotate 90 degrees clockwise to display".
EXIF_ORIENTATION = 0x0112


def gradient_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: smooth ramps plus a little noise, so JPEG round trips stay close."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / max(width - 1, 1), yy / max(height - 1, 1), 0.5 + 0 * xx], axis=2)
    noisy = base * 200 + 20 + rng.integers(0, 16, size=(height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def pil_image(mode: str, height: int = 20, width: int = 28, seed: int = 0) -> Image.Image:
    """A PIL image of ``mode`` (RGB, L, LA, RGBA, P, P+transparency, CMYK, I;16, 1)."""
    rgb = Image.fromarray(gradient_rgb(height, width, seed))
    if mode == "RGB":
        return rgb
    if mode == "I;16":
        ramp = np.linspace(0, 65535, height * width, dtype=np.float64).reshape(height, width)
        return Image.fromarray(ramp.astype(np.uint16))  # Pillow gives mode "I;16" for uint16 2-D arrays
    if mode == "RGBA":
        rgba = rgb.convert("RGBA")
        alpha = np.full((height, width), 255, dtype=np.uint8)
        alpha[:, : width // 2] = 0  # left half fully transparent
        rgba.putalpha(Image.fromarray(alpha))
        return rgba
    if mode == "P+transparency":
        pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        pal.info["transparency"] = 0  # palette index 0 is transparent
        return pal
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return rgb.convert(mode)


def write_image(path: Path, mode: str = "RGB", height: int = 20, width: int = 28, **save_kwargs) -> Path:
    """Save a ``pil_image`` of ``mode`` to ``path`` (format from the suffix)."""
    image = pil_image(mode, height, width)
    if mode == "P+transparency":
        save_kwargs.setdefault("transparency", 0)
    image.save(path, **save_kwargs)
    return path


def write_exif_rotated_jpeg(path: Path, height: int, width: int, orientation: int = 6) -> Path:
    """A JPEG stored as H x W whose EXIF says to rotate it for display (so it shows as W x H)."""
    image = Image.fromarray(gradient_rgb(height, width))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    image.save(path, exif=exif.tobytes(), quality=95)
    return path


def write_truncated(path: Path, source: Path, keep: float = 0.5) -> Path:
    """Copy the first ``keep`` share of ``source``'s bytes to ``path``."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_garbage(path: Path, size: int = 300, seed: int = 0) -> Path:
    """Random bytes under an image suffix."""
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path
