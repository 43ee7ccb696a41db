"""Image-quality and rate metrics, in plain torch: PSNR, SSIM, MS-SSIM, bits per pixel, codebook usage.

Conventions (the ones the image-coding literature reports, so figures compare with published tables):

- Images are float RGB in [0, 1], shaped (3, H, W) or (B, 3, H, W). Every metric first rounds both images
  to 8 bits (what a saved PNG holds) and works on the 0..255 scale; a batch gives one value per image.
- PSNR = 10 log10(255^2 / MSE) over all three channels.
- SSIM (Wang, Bovik, Sheikh & Simoncelli 2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01,
  K2 = 0.03, L = 255, "valid" filtering (no padding), computed per RGB channel and averaged. No automatic
  down-sampling of large images (the MATLAB ``ssim.m`` reference does that; most ML papers do not).
- MS-SSIM (Wang, Simoncelli & Bovik 2003): five scales with the paper's weights
  (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), 2x2 average pooling between scales, contrast-structure at
  every scale and luminance at the coarsest only. An image too small for five scales (the coarsest must
  still hold an 11-px window, i.e. 176 px on the short side) uses as many scales as fit and renormalises
  their weights to sum to 1; the number used is returned by :func:`ms_ssim_scales`.

Axis letters: B batch, C channels (3), H/W image size, K codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# MS-SSIM weights of the five scales, finest first (Wang, Simoncelli & Bovik 2003, sec. 3.1).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# SSIM constants (Wang et al. 2004, sec. III-C): C1 = (K1 L)^2, C2 = (K2 L)^2 with L = 255 for 8-bit images.
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
DATA_RANGE = 255.0


def _as_batch(x: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    """(3, H, W) or (B, 3, H, W) float in [0, 1] -> (B, 3, H, W) on the 0..255 scale, rounded to 8 bits."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor image, got {type(x).__name__}")
    if x.ndim not in (3, 4):
        raise ValueError(f"{name}: image of shape {tuple(x.shape)}; expected (C, H, W) or (B, C, H, W)")
    single = x.ndim == 3
    batch = x[None] if single else x  # (B, C, H, W)
    if batch.dtype == torch.uint8:
        return batch.float(), single
    if not batch.is_floating_point():
        raise TypeError(f"{name}: dtype {x.dtype}; expected uint8 or float in [0, 1]")
    # Integers 0..255 are exact in fp32; sums are taken in fp64 where it matters (MSE, means).
    return (batch.float().clamp(0.0, 1.0) * DATA_RANGE).round(), single


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    x, single = _as_batch(a, "a")
    y, _ = _as_batch(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}; expected equal shapes")
    return x, y, single


def _out(values: torch.Tensor, single: bool) -> torch.Tensor:
    values = values.float()
    return values[0] if single else values


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error on the 8-bit scale (0..255): a 0-d tensor for one image, (B,) for a batch."""
    x, y, single = _pair(a, b)
    return _out(_mse(x, y), single)


def _mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Squared differences of 8-bit values are exact in fp32; the mean over megapixels is taken in fp64.
    return (x - y).pow(2).mean(dim=(1, 2, 3), dtype=torch.float64)  # (B,)


def psnr_from_mse(value: float | torch.Tensor, data_range: float = DATA_RANGE) -> torch.Tensor:
    """10 log10(L^2 / MSE) in dB (+inf for MSE 0)."""
    value = torch.as_tensor(value, dtype=torch.float64)
    return (10.0 * torch.log10(data_range**2 / value)).float()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of two RGB images in [0, 1] after 8-bit rounding: 0-d tensor or (B,).

    Args:
        a, b: (3, H, W) or (B, 3, H, W) float in [0, 1] (or uint8), same shape.
    """
    x, y, single = _pair(a, b)
    return _out(psnr_from_mse(_mse(x, y)), single)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()  # (size,)


def _window_for(height: int, width: int) -> tuple[int, float]:
    """The standard 11 px / sigma 1.5 window, shrunk (odd size, same sigma-to-size ratio) for tiny images."""
    size = min(SSIM_WINDOW, height, width)
    size = size if size % 2 == 1 else size - 1
    if size < 1:
        raise ValueError(f"image of {height}x{width} pixels is too small for SSIM")
    return size, SSIM_SIGMA * size / SSIM_WINDOW


def _blur(maps: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of M maps, valid region only: (M, H, W) -> (M, H-s+1, W-s+1)."""
    # One depthwise conv over M channels runs about 8x faster on CPU than M single-channel images.
    count, size = maps.shape[0], g.numel()
    x = maps[None]  # (1, M, H, W)
    x = F.conv2d(x, g.view(1, 1, size, 1).expand(count, 1, size, 1), groups=count)  # (1, M, H', W)
    x = F.conv2d(x, g.view(1, 1, 1, size).expand(count, 1, 1, size), groups=count)  # (1, M, H', W')
    return x[0]


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, window: tuple[int, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image luminance*contrast*structure (SSIM) and contrast*structure (cs) means: (B,), (B,)."""
    g = _gaussian_window(window[0], window[1], torch.float64).to(device=x.device, dtype=torch.float32)
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    # Centre each channel on its mean before the fp32 blur: E[x^2] - E[x]^2 then cancels on numbers near 0,
    # not near 65025, so local variances keep their digits (variances and covariances ignore the shift).
    shift_x = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    shift_y = y.mean(dim=(2, 3), keepdim=True)
    xs, ys = x - shift_x, y - shift_y
    batch, channels, height, width = x.shape
    maps = torch.stack([xs, ys, xs * xs, ys * ys, xs * ys]).reshape(5 * batch * channels, height, width)  # (5BC, H, W)
    blurred = _blur(maps, g)  # (5BC, H', W')
    blurred = blurred.reshape(5, batch, channels, *blurred.shape[-2:])  # (5, B, C, H', W')
    mu_xs, mu_ys, e_xx, e_yy, e_xy = blurred.unbind(0)
    # Local (co)variances as E[xy] - E[x]E[y] under the Gaussian weights (Wang et al. 2004, eq. 14-16).
    var_x = e_xx - mu_xs**2
    var_y = e_yy - mu_ys**2
    cov = e_xy - mu_xs * mu_ys
    mu_x, mu_y = mu_xs + shift_x, mu_ys + shift_y
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    lum_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    # The maps are fp32 (relative error ~1e-6 after centring); their means over megapixels are fp64.
    ssim_val = (lum_map * cs_map).mean(dim=(1, 2, 3), dtype=torch.float64)  # over channels and positions: (B,)
    cs_val = cs_map.mean(dim=(1, 2, 3), dtype=torch.float64)  # (B,)
    return ssim_val, cs_val


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM (Wang et al. 2004) of two RGB images in [0, 1] after 8-bit rounding: 0-d tensor or (B,).

    Args:
        a, b: (3, H, W) or (B, 3, H, W), same shape. Images smaller than 11 px use a smaller window.
    """
    x, y, single = _pair(a, b)
    value, _ = _ssim_terms(x, y, _window_for(*x.shape[-2:]))
    return _out(value, single)


def ms_ssim_scales(height: int, width: int) -> int:
    """How many of the five MS-SSIM scales an H x W image holds (the coarsest keeps an 11-px window)."""
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and min(height, width) // 2**scales >= SSIM_WINDOW:
        scales += 1
    return scales


@dataclass
class StructuralSimilarity:
    """SSIM and MS-SSIM of the same pair (their finest scales share one filtering pass)."""

    ssim: torch.Tensor
    ms_ssim: torch.Tensor


def structural_similarity(a: torch.Tensor, b: torch.Tensor) -> StructuralSimilarity:
    """SSIM and MS-SSIM together, each as :func:`ssim` and :func:`ms_ssim` compute them."""
    x, y, single = _pair(a, b)
    ssim_full, ms = _ms_ssim(x, y)
    return StructuralSimilarity(_out(ssim_full, single), _out(ms, single))


def ms_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MS-SSIM (Wang, Simoncelli & Bovik 2003) of RGB images in [0, 1] after 8-bit rounding: 0-d or (B,).

    Args:
        a, b: (3, H, W) or (B, 3, H, W), same shape. Fewer than five scales are used (weights renormalised)
            when the short side is under 176 px; under 11 px it is SSIM with a shrunk window.
    """
    x, y, single = _pair(a, b)
    return _out(_ms_ssim(x, y)[1], single)


def _ms_ssim(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) pair on the 0..255 scale -> (full-resolution SSIM (B,), MS-SSIM (B,))."""
    scales = ms_ssim_scales(*x.shape[-2:])
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=torch.float64, device=x.device)
    weights = weights / weights.sum()
    factors = []
    ssim_full = None
    for scale in range(scales):
        ssim_val, cs_val = _ssim_terms(x, y, _window_for(*x.shape[-2:]))
        ssim_full = ssim_val if ssim_full is None else ssim_full
        # cs can dip below 0 for anti-correlated content; a negative base to a fractional power is NaN,
        # so clamp at 0 (as most open implementations do; it only matters for garbage reconstructions).
        factors.append((ssim_val if scale == scales - 1 else cs_val).clamp_min(0.0))
        if scale < scales - 1:
            x = F.avg_pool2d(x, 2)  # (B, C, H/2, W/2)
            y = F.avg_pool2d(y, 2)
    stacked = torch.stack(factors, dim=0)  # (S, B)
    return ssim_full, torch.prod(stacked ** weights[:, None], dim=0)


def bits_per_pixel(tokens: int, vocab_size: int, pixels: int) -> float:
    """tokens x log2(vocab_size) / pixels: the rate of a fixed-length code of the token grid.

    Args:
        tokens: number of tokens (h * w for one image).
        vocab_size: codebook size K (>= 1).
        pixels: H * W of the original image (not the padded one).
    """
    if tokens < 0 or vocab_size < 1 or pixels < 1:
        raise ValueError(f"bits_per_pixel: tokens={tokens}, vocab_size={vocab_size}, pixels={pixels}; expected "
                         "tokens >= 0, vocab_size >= 1, pixels >= 1")
    return tokens * math.log2(vocab_size) / pixels


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of a code histogram (K,), as a tensor on its device (no host sync): K when all K codes are
    equally used, 1 for a single code, 0 for an empty histogram. Histograms (..., K) give (...) values."""
    total = counts.sum(dim=-1, keepdim=True)  # (..., 1)
    probs = counts / total.clamp_min(1)  # (..., K)
    entropy = -torch.xlogy(probs, probs).sum(dim=-1)  # 0 log 0 = 0, in one op (quantizers call this every step)
    return torch.where(total[..., 0] > 0, entropy.exp(), torch.zeros_like(entropy))


def usage(counts: torch.Tensor) -> torch.Tensor:
    """The share of the K codes used at least once, as a tensor on the histogram's device (in its float
    dtype; float64 for integer counts). Histograms (..., K) give (...) values."""
    dtype = counts.dtype if counts.is_floating_point() else torch.float64
    # = (counts > 0).mean(-1), two ops instead of three
    return torch.count_nonzero(counts, dim=-1).to(dtype) / counts.shape[-1]


def code_perplexity(counts: torch.Tensor) -> float:
    """``perplexity`` of a histogram, in float64, as a Python float (for reports)."""
    return float(perplexity(counts.double()))


@dataclass
class CodebookStats:
    """Summary of a code histogram.

    used_codes: codes used at least once; usage: used_codes / K; perplexity: exp(entropy);
    entropy_bits: log2(perplexity), the rate an ideal entropy coder would reach on these ids (i.i.d. model);
    tokens: total tokens counted.
    """

    codebook_size: int
    tokens: int
    used_codes: int
    usage: float
    perplexity: float
    entropy_bits: float


class CodebookHistogram:
    """Counts every id over a whole evaluation set (a full K-bin histogram, not a rolling window).

    Args:
        codebook_size: K.
    Example:
        >>> hist = CodebookHistogram(4096)
        >>> hist.update(ids)            # any shape of integer ids
        >>> hist.stats().usage          # share of the 4096 codes used at least once
    """

    def __init__(self, codebook_size: int):
        if codebook_size < 1:
            raise ValueError(f"codebook_size {codebook_size}; expected >= 1")
        self.codebook_size = codebook_size
        self.counts = torch.zeros(codebook_size, dtype=torch.long)  # (K,)

    def update(self, ids: torch.Tensor) -> None:
        flat = ids.detach().reshape(-1).long().cpu()  # (...) -> (N,)
        if flat.numel() == 0:
            return
        low, high = int(flat.min()), int(flat.max())
        if low < 0 or high >= self.codebook_size:
            raise ValueError(f"id {low if low < 0 else high} outside the codebook [0, {self.codebook_size})")
        self.counts += torch.bincount(flat, minlength=self.codebook_size)

    def stats(self) -> CodebookStats:
        used = int((self.counts > 0).sum())
        perplexity = code_perplexity(self.counts)
        return CodebookStats(
            codebook_size=self.codebook_size,
            tokens=int(self.counts.sum()),
            used_codes=used,
            usage=float(usage(self.counts)),
            perplexity=perplexity,
            entropy_bits=math.log2(perplexity) if perplexity > 0 else 0.0,
        )
