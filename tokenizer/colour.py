"""Colour fidelity: CIELAB and the CIEDE2000 colour difference, and grayscale handling.

PSNR hardly notices a hue shift that a viewer sees at once (a yellow cap coming back orange), so the
evaluation reports the mean CIEDE2000 difference per image as well: about 1 is a just-noticeable difference,
above 5 a clearly different colour. Formulas: IEC 61966-2-1 (sRGB), CIE 15 (CIELAB, D65 white), and
CIEDE2000 as written out by Sharma, Wu & Dalal 2005, "The CIEDE2000 color-difference formula:
implementation notes, supplementary test data, and mathematical observations" (their test pairs are in
tests/test_colour.py).

Axis letters: B batch, H/W image size; images are (3, H, W) or (B, 3, H, W) in [0, 1], sRGB.
"""

from __future__ import annotations

import torch

# sRGB (linear) -> XYZ, D65 white (IEC 61966-2-1).
_RGB_TO_XYZ = torch.tensor(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=torch.float64,
)
_D65_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
# BT.601 luma weights: what "the gray of a colour" means for JPEG and PIL's convert("L").
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _channels_first(image: torch.Tensor, name: str) -> torch.Tensor:
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"{name}: shape {tuple(image.shape)}; expected (3, H, W) or (B, 3, H, W) sRGB in [0, 1]")
    return image


def rgb_to_lab(image: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> CIELAB (L in [0, 100], a/b about [-128, 127]), same shape, float64."""
    rgb = _channels_first(image, "rgb_to_lab").double().clamp(0.0, 1.0)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = torch.einsum("ij,...jhw->...ihw", _RGB_TO_XYZ, linear)  # (..., 3, H, W)
    t = xyz / _D65_WHITE.view(3, 1, 1)
    delta = 6.0 / 29.0
    f = torch.where(t > delta**3, t.clamp_min(1e-12) ** (1.0 / 3.0), t / (3 * delta**2) + 4.0 / 29.0)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)


def ciede2000(lab1: torch.Tensor, lab2: torch.Tensor) -> torch.Tensor:
    """CIEDE2000 difference of two Lab tensors (..., 3, ...) with the channel axis at -3: (..., H, W).

    Parametric factors kL = kC = kH = 1 (reference conditions). Sharma et al. 2005, eqs. 1-23.
    """
    L1, a1, b1 = lab1.double().unbind(-3)
    L2, a2, b2 = lab2.double().unbind(-3)
    c_bar = (torch.hypot(a1, b1) + torch.hypot(a2, b2)) / 2
    g = 0.5 * (1 - torch.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))  # eq. 4: a* rescaling near neutral
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = torch.hypot(a1p, b1), torch.hypot(a2p, b2)
    h1p = torch.rad2deg(torch.atan2(b1, a1p)) % 360.0
    h2p = torch.rad2deg(torch.atan2(b2, a2p)) % 360.0
    neutral = (c1p * c2p) == 0  # hue undefined for a neutral colour: eqs. 10 and 14 set it to 0 / the sum

    dL = L2 - L1
    dC = c2p - c1p
    dh = h2p - h1p
    dh = torch.where(dh > 180, dh - 360, torch.where(dh < -180, dh + 360, dh))
    dh = torch.where(neutral, torch.zeros_like(dh), dh)
    dH = 2 * torch.sqrt(c1p * c2p) * torch.sin(torch.deg2rad(dh) / 2)

    L_bar = (L1 + L2) / 2
    C_bar = (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_bar = torch.where((h1p - h2p).abs() <= 180, h_sum / 2,
                        torch.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2))
    h_bar = torch.where(neutral, h_sum, h_bar)
    rad = torch.deg2rad
    t = (1 - 0.17 * torch.cos(rad(h_bar - 30)) + 0.24 * torch.cos(rad(2 * h_bar))
         + 0.32 * torch.cos(rad(3 * h_bar + 6)) - 0.20 * torch.cos(rad(4 * h_bar - 63)))
    d_theta = 30 * torch.exp(-(((h_bar - 275) / 25) ** 2))
    r_c = 2 * torch.sqrt(C_bar**7 / (C_bar**7 + 25.0**7))
    s_l = 1 + 0.015 * (L_bar - 50) ** 2 / torch.sqrt(20 + (L_bar - 50) ** 2)
    s_c = 1 + 0.045 * C_bar
    s_h = 1 + 0.015 * C_bar * t
    r_t = -torch.sin(rad(2 * d_theta)) * r_c
    terms = (dL / s_l) ** 2 + (dC / s_c) ** 2 + (dH / s_h) ** 2 + r_t * (dC / s_c) * (dH / s_h)
    return torch.sqrt(terms.clamp_min(0.0))


def colour_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean CIEDE2000 between two sRGB images in [0, 1]: a scalar for (3, H, W), (B,) for batches."""
    _channels_first(a, "colour_difference")
    _channels_first(b, "colour_difference")
    if a.shape != b.shape:
        raise ValueError(f"colour_difference: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    return ciede2000(rgb_to_lab(a), rgb_to_lab(b)).mean(dim=(-2, -1)).float()


def mean_saturation(image: torch.Tensor) -> torch.Tensor:
    """Mean CIELAB chroma sqrt(a^2 + b^2): drops when a model washes colours out."""
    lab = rgb_to_lab(image)
    return torch.hypot(lab[..., 1, :, :], lab[..., 2, :, :]).mean(dim=(-2, -1)).float()


def is_grayscale(image: torch.Tensor) -> bool:
    """True when the three channels of a (3, H, W) image are identical (a gray image read as RGB)."""
    return bool(torch.equal(image[..., 0, :, :], image[..., 1, :, :]) and torch.equal(image[..., 1, :, :], image[..., 2, :, :]))


def to_gray(image: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) -> its BT.601 luma in all three channels, same shape and dtype."""
    w = torch.tensor(LUMA_WEIGHTS, dtype=image.dtype, device=image.device).view(3, 1, 1)
    luma = (image * w).sum(dim=-3, keepdim=True)  # (..., 1, H, W)
    return luma.expand_as(image).clone()


__all__ = ["rgb_to_lab", "ciede2000", "colour_difference", "mean_saturation", "is_grayscale", "to_gray",
           "LUMA_WEIGHTS"]
