"""Evaluate a tokenizer or VAE on a folder of images, beside classical codecs at the same bits per pixel.

    python scripts/evaluate.py MODEL --data DIR --out DIR [--size S] [--limit N] [--grid-images K]

MODEL is a model folder, a Hub repo id, ``bundled`` (the bundled tokenizer) or ``bundled-kl`` (the bundled
VAE). For every image: PSNR (RGB, 8-bit), SSIM, MS-SSIM (``tokenizer.metrics``) and a perceptual distance
(``tokenizer.perceptual``: LPIPS, or shift-tolerant LPIPS offline, its name recorded) and the mean CIEDE2000
colour difference ``delta_e00`` (``tokenizer.colour``: hue and saturation drift that PSNR hardly sees) of

- the model's reconstruction; rate: tokenizers ids x log2(vocab) / pixels (all depths); a VAE's latents are
  quantised to ``--latent-bits`` (default 8) per value, uniformly between each channel's min and max in
  that image, and those bounds (2 fp32 per channel) are counted too; the metrics are those of the decoded
  *quantised* latents, so rate and quality belong together;
- JPEG (Pillow, ``optimize=True``) and WebP (``method=6``) at the highest quality whose file (headers
  included) does not exceed the model's bits for that image (binary search over quality; if even the
  lowest quality is larger, that is used and the row says ``within_budget: false``);
- bicubic down-sampling by f and back up, the thumbnail stored as 8-bit RGB (24 / f^2 bpp, uncompressed);
- a linear autoencoder: PCA on f x f patches, as many components as fit the model's bits per patch at
  ``--pca-bits`` bits per coefficient (uniform quantiser over +-3 standard deviations of each component).
  The PCA is fitted on the evaluated images' own patches unless ``--pca-fit DIR`` names a held-out set
  (fitting on the test images flatters this baseline, never the model).

Outputs in ``--out``: ``metrics.json`` (per-image rows, means, codebook statistics, rate-distortion
curves), ``metrics.md`` (a Markdown table), ``grid.png`` (original | model | JPEG | WebP) and
``rate_distortion.png`` (needs matplotlib: ``pip install "imgtok[eval]"``).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image, ImageDraw

from tokenizer import inputs
from tokenizer.api import ImageTokenizer, load_any
from tokenizer.checkpoints import WeightsError
from tokenizer.colour import colour_difference, is_grayscale, to_gray
from tokenizer.config import ConfigError
from tokenizer.image_io import ImageError, read_image, to_pil
from tokenizer.metrics import CodebookHistogram, bits_per_pixel, psnr, structural_similarity

# Quality ranges searched at the budget and sampled for the rate-distortion curves.
JPEG_QUALITIES = (1, 95)
WEBP_QUALITIES = (0, 100)
JPEG_CURVE = (2, 5, 10, 20, 30, 50, 70, 90)
WEBP_CURVE = (0, 5, 10, 20, 30, 50, 70, 90)
# PCA fit: at most this many patches (a random subset), enough for a stable (3 f^2)-dim covariance.
PCA_MAX_PATCHES = 200_000
PCA_CLIP_STD = 3.0
GRID_TILE_HEIGHT = 256


# --- images ---------------------------------------------------------------------------------------
def list_images(folder: Path, limit: int | None = None) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"--data {folder}: not a directory")
    return [Path(p) for p in inputs.list_images(folder, "--data", limit)]


def load_eval_image(path: Path, size: int | None) -> torch.Tensor:
    """(3, H, W) in [0, 1] on the 8-bit grid (what every codec sees); with ``size``: the short side resized
    to S and the centre S x S (``tokenizer.inputs.center_crop``)."""
    image = read_image(path)
    return quantize8(inputs.center_crop(image, size) if size is not None else image)


def quantize8(image: torch.Tensor) -> torch.Tensor:
    return (image.clamp(0.0, 1.0) * 255.0).round() / 255.0


# --- classical codecs -----------------------------------------------------------------------------
@dataclass
class CodecResult:
    """One codec encoding: its quality setting, size and decoded image."""

    quality: int
    bytes: int
    bpp: float
    image: torch.Tensor  # (3, H, W) in [0, 1]
    within_budget: bool = True


def codec_encode(image: torch.Tensor, codec: str, quality: int) -> CodecResult:
    """Encode ``image`` with Pillow's JPEG (optimize=True) or WebP (method=6) and decode it back."""
    pil = to_pil(image)
    buffer = io.BytesIO()
    if codec == "jpeg":
        pil.save(buffer, format="JPEG", quality=quality, optimize=True)
    elif codec == "webp":
        pil.save(buffer, format="WEBP", quality=quality, method=6)
    else:
        raise ValueError(f"codec {codec!r}; expected 'jpeg' or 'webp'")
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as decoded:
        array = np.asarray(decoded.convert("RGB"), dtype=np.float32) / 255.0
    height, width = image.shape[-2:]
    recon = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))  # (H, W, 3) -> (3, H, W)
    return CodecResult(quality, len(data), len(data) * 8 / (height * width), recon)


def codec_at_budget(image: torch.Tensor, codec: str, target_bpp: float) -> CodecResult:
    """The highest quality whose bpp does not exceed ``target_bpp`` (binary search; file size grows with
    quality, and the result is checked, so a non-monotone step can cost quality but never the budget)."""
    low, high = JPEG_QUALITIES if codec == "jpeg" else WEBP_QUALITIES
    best = None
    lowest = codec_encode(image, codec, low)
    if lowest.bpp > target_bpp:
        lowest.within_budget = False
        return lowest
    best = lowest
    lo, hi = low + 1, high
    while lo <= hi:
        mid = (lo + hi) // 2
        result = codec_encode(image, codec, mid)
        if result.bpp <= target_bpp:
            best, lo = result, mid + 1
        else:
            hi = mid - 1
    return best


# --- bicubic and linear-autoencoder baselines -----------------------------------------------------
def bicubic_baseline(image: torch.Tensor, factor: int) -> tuple[torch.Tensor, float]:
    """Down-sample by ``factor`` (bicubic, antialiased), store as 8-bit RGB, up-sample back: (image, bpp)."""
    height, width = image.shape[-2:]
    small_size = (max(1, math.ceil(height / factor)), max(1, math.ceil(width / factor)))
    small = F.interpolate(image[None], size=small_size, mode="bicubic", antialias=True, align_corners=False)
    small = quantize8(small)  # (1, 3, h, w) on the 8-bit grid: 24 bits per thumbnail pixel
    up = F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)[0].clamp(0.0, 1.0)
    return up, 24.0 * small_size[0] * small_size[1] / (height * width)


def to_patches(image: torch.Tensor, factor: int) -> torch.Tensor:
    """(3, H, W) -> (N, 3 f^2) non-overlapping f x f patches, edge-padded like the models' input."""
    height, width = image.shape[-2:]
    pad_h, pad_w = (-height) % factor, (-width) % factor
    x = F.pad(image[None], (0, pad_w, 0, pad_h), mode="replicate")[0]  # (3, H', W')
    return rearrange(x, "c (h p) (w q) -> (h w) (c p q)", p=factor, q=factor)


def from_patches(patches: torch.Tensor, factor: int, height: int, width: int) -> torch.Tensor:
    """(N, 3 f^2) -> (3, H, W), cropping the padding."""
    h, w = math.ceil(height / factor), math.ceil(width / factor)
    x = rearrange(patches, "(h w) (c p q) -> c (h p) (w q)", h=h, w=w, p=factor, q=factor)  # (3, H', W')
    return x[:, :height, :width]


class PatchPCA:
    """Linear autoencoder on f x f patches with quantised coefficients (the seeds' classical baseline).

    Args:
        factor: patch side f.
        coefficient_bits: bits per stored coefficient.
    """

    def __init__(self, factor: int, coefficient_bits: int):
        if coefficient_bits < 1:
            raise ValueError(f"--pca-bits {coefficient_bits}; expected >= 1")
        self.factor = factor
        self.bits = coefficient_bits
        self.mean: torch.Tensor | None = None  # (P,) with P = 3 f^2
        self.components: torch.Tensor | None = None  # (P, P), columns by decreasing variance
        self.std: torch.Tensor | None = None  # (P,)

    def fit(self, images: list[torch.Tensor], seed: int = 0) -> "PatchPCA":
        patches = torch.cat([to_patches(img, self.factor) for img in images]).double()  # (N, P)
        if patches.shape[0] > PCA_MAX_PATCHES:
            gen = torch.Generator().manual_seed(seed)
            patches = patches[torch.randperm(patches.shape[0], generator=gen)[:PCA_MAX_PATCHES]]
        self.mean = patches.mean(dim=0)
        centred = patches - self.mean
        cov = centred.t() @ centred / max(1, patches.shape[0] - 1)  # (P, P)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        order = torch.argsort(eigvals, descending=True)
        self.components = eigvecs[:, order]
        self.std = eigvals[order].clamp_min(0.0).sqrt()
        return self

    def components_for(self, bits_per_patch: float) -> int:
        """As many components as fit ``bits_per_patch`` (never more than the patch dimension)."""
        assert self.components is not None, "fit() first"
        return max(0, min(self.components.shape[1], int(math.floor(bits_per_patch / self.bits + 1e-9))))

    def reconstruct(self, image: torch.Tensor, num_components: int) -> tuple[torch.Tensor, float]:
        """Project, quantise and reconstruct ``image``: (image, bpp)."""
        if self.components is None:
            raise RuntimeError("PatchPCA.reconstruct before fit()")
        height, width = image.shape[-2:]
        patches = to_patches(image, self.factor).double()  # (N, P)
        basis = self.components[:, :num_components]  # (P, k)
        coeffs = (patches - self.mean) @ basis  # (N, k)
        # Uniform mid-rise quantiser with 2^b levels over +-3 sigma of each component.
        levels = 2**self.bits
        span = 2 * PCA_CLIP_STD * self.std[:num_components].clamp_min(1e-8)  # (k,)
        step = span / levels
        index = torch.floor((coeffs + span / 2) / step).clamp(0, levels - 1)
        coeffs_q = (index + 0.5) * step - span / 2
        recon = from_patches((coeffs_q @ basis.t() + self.mean).float(), self.factor, height, width)
        bpp = patches.shape[0] * num_components * self.bits / (height * width)
        return recon.clamp(0.0, 1.0), bpp


# --- the model ------------------------------------------------------------------------------------
@dataclass
class ModelResult:
    image: torch.Tensor
    bpp: float
    ids: torch.Tensor | None = None


def run_model(model, image: torch.Tensor, latent_bits: int) -> ModelResult:
    height, width = image.shape[-2:]
    # A gray image comes back gray, as from ``reconstruct`` (the ids or latents are the same either way).
    gray = to_gray if is_grayscale(image) else (lambda x: x)
    if isinstance(model, ImageTokenizer):
        ids = model.encode(image)  # (h, w), or (h, w, depth) for residual VQ
        recon = gray(model.decode(ids, size=(height, width)))
        # The actual rate: every id the image was coded into (all depths), log2(vocab) bits each.
        bpp = bits_per_pixel(ids.numel(), model.vocab_size, height * width)
        return ModelResult(recon.cpu(), bpp, ids.cpu())
    z = model.encode(image)  # (C, h, w)
    zq, bits = quantize_latents(z, latent_bits)
    recon = gray(model.decode(zq, size=(height, width)))
    return ModelResult(recon.cpu(), bits / (height * width))


def quantize_latents(z: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """Uniform ``bits``-bit quantisation per channel between its min and max: (dequantised, total bits)."""
    channels = z.shape[0]
    flat = z.reshape(channels, -1).float()  # (C, h, w) -> (C, h*w)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    levels = 2**bits - 1
    scale = (high - low).clamp_min(1e-12) / levels
    zq = ((flat - low) / scale).round() * scale + low
    total = flat.numel() * bits + channels * 2 * 32  # values + two fp32 bounds per channel
    return zq.reshape(z.shape).to(z.dtype), total


def describe_model(model) -> dict:
    cfg = model.config
    info = {
        **model.identity.to_dict(),  # name, version, weights sha256: push_to_hub.py checks them
        "source": getattr(model, "source", None),
        "model_type": cfg.model_type,
        "downsample_factor": cfg.downsample_factor,
        "parameters": sum(p.numel() for p in model.model.parameters()),
        "device": str(model.device),
        "config": cfg.to_dict(),
    }
    if isinstance(model, ImageTokenizer):
        info.update(vocab_size=model.vocab_size, bits_per_token=model.bits_per_token, depth=model.depth,
                    quantizer=cfg.quantizer.kind)
    else:
        info["latent_channels"] = model.latent_channels
    return info


def load_model(spec: str, device: str | None):
    return load_any(spec, device=device)  # shipped names (imgtok-vq-f8, bundled-kl, ...) included


# --- metrics of one reconstruction ----------------------------------------------------------------
class Scorer:
    """Image metrics of reconstructions of one original; the original's perceptual features are reused."""

    def __init__(self, original: torch.Tensor, perceptual, perceptual_key: str | None):
        self.original = original
        self.perceptual = perceptual
        self.key = perceptual_key
        self._features = None

    def __call__(self, recon: torch.Tensor, with_perceptual: bool = True) -> dict:
        structural = structural_similarity(self.original, recon)
        row = {"psnr": float(psnr(self.original, recon)), "ssim": float(structural.ssim),
               "ms_ssim": float(structural.ms_ssim),
               # Hue and saturation drift that PSNR hardly sees (tokenizer/colour.py; ~1 = just noticeable).
               "delta_e00": float(colour_difference(self.original, quantize8(recon)))}
        if self.perceptual is not None and with_perceptual:
            with torch.no_grad():
                if self._features is None:
                    self._features = self.perceptual.features(self.original[None] * 2 - 1)
                feats = self.perceptual.features(quantize8(recon)[None] * 2 - 1)  # the 8-bit image, as saved
                row[self.key] = float(self.perceptual.distance(self._features, feats)[0])
        return row


# --- outputs --------------------------------------------------------------------------------------
def write_grid(path: Path, rows: list[dict[str, torch.Tensor]], captions: list[dict[str, str]]) -> None:
    """A PNG grid: one row per image, columns original | model | JPEG | WebP, a caption under each tile."""
    columns = list(rows[0].keys())
    tiles = []
    for row in rows:
        tiles.append([])
        for name in columns:
            pil = to_pil(row[name])
            scale = GRID_TILE_HEIGHT / pil.height
            tiles[-1].append(pil.resize((max(1, round(pil.width * scale)), GRID_TILE_HEIGHT), Image.Resampling.LANCZOS))
    caption_h, header_h = 16, 18
    col_w = [max(r[c].width for r in tiles) for c in range(len(columns))]
    canvas = Image.new("RGB", (sum(col_w), header_h + len(tiles) * (GRID_TILE_HEIGHT + caption_h)), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for c, name in enumerate(columns):
        draw.text((x + 4, 3), name, fill="black")
        y = header_h
        for r, tile_row in enumerate(tiles):
            canvas.paste(tile_row[c], (x, y))
            draw.text((x + 4, y + GRID_TILE_HEIGHT + 2), captions[r].get(name, ""), fill="black")
            y += GRID_TILE_HEIGHT + caption_h
        x += col_w[c]
    canvas.save(path)


def write_plot(path: Path, curves: dict[str, list[dict]], points: dict[str, dict], title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('rate-distortion plot skipped: matplotlib is missing (pip install "imgtok[eval]")', file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, curve in curves.items():
        ax.plot([p["bpp"] for p in curve], [p["psnr"] for p in curve], marker=".", label=f"{name} (quality sweep)")
    markers = iter("o*sD^vP")
    for name, point in points.items():
        ax.scatter([point["bpp"]], [point["psnr"]], marker=next(markers), s=80 if name == "model" else 40,
                   zorder=3, label=point.get("label", name))
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR (dB, RGB 8-bit)")
    ax.set_title(title, fontsize=9)
    top = max([p["bpp"] for c in curves.values() for p in c] + [p["bpp"] for p in points.values()])
    ax.set_xlim(0, min(top, 4 * max(p["bpp"] for p in points.values())) * 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def markdown_table(result: dict) -> str:
    keys = result["metric_keys"]
    perceptual = result["perceptual_metric"] or "not computed (--perceptual none, or the extra imgtok[perceptual] is missing)"
    head = "| method | bpp | " + " | ".join(keys) + " | notes |"
    lines = [
        f"# Evaluation of {result['model']['source']} on {result['data']}",
        "",
        f"{result['num_images']} images, {result['resolution']}; perceptual metric: {perceptual}.",
        "",
        head,
        "|" + " --- |" * (len(keys) + 3),
    ]
    for method, means in result["means"].items():
        cells = [method, f"{means['bpp']:.4f}"] + [
            "-" if k not in means else (f"{means[k]:.2f}" if k == "psnr" else f"{means[k]:.4f}") for k in keys
        ]
        lines.append("| " + " | ".join(cells) + f" | {result['notes'].get(method, '')} |")
    codebook = result.get("codebook")
    if codebook:
        lines += [
            "",
            f"Codebook over the whole set: {codebook['used_codes']} of {codebook['codebook_size']} codes used "
            f"({100 * codebook['usage']:.1f}%), perplexity {codebook['perplexity']:.1f}, entropy "
            f"{codebook['entropy_bits']:.2f} bits per token (of {math.log2(codebook['codebook_size']):.2f}), "
            f"{codebook['tokens']} tokens.",
        ]
    return "\n".join(lines) + "\n"


def mean_rows(rows: list[dict], methods: list[str]) -> dict[str, dict[str, float]]:
    means = {}
    for method in methods:
        entries = [r[method] for r in rows]
        keys = [k for k, v in entries[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        means[method] = {k: float(np.mean([e[k] for e in entries])) for k in keys}
    return means


# --- main -----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="imgtok-vq-f8 / imgtok-kl-f8 (aliases bundled / bundled-kl), a model folder or a Hub repo id")
    p.add_argument("--data", required=True, type=Path, help="folder of images")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--size", type=int, default=None, help="resize the short side to S and centre-crop S x S "
                   "(default: full resolution, padded to a multiple of f inside the model)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images (sorted by name)")
    p.add_argument("--grid-images", type=int, default=4, help="images in grid.png (0: no grid)")
    p.add_argument("--perceptual", default="auto", help="'auto', 'alex', 'vgg', 'lpips-alex', 'stlpips-vgg', ... "
                   "or 'none' (default auto: LPIPS-alex if its weights are available, else shift-tolerant LPIPS-alex)")
    p.add_argument("--perceptual-all", action="store_true", help="perceptual distance of the bicubic and PCA "
                   "baselines too (default: model, JPEG and WebP only; about 1 s per 768x512 image each on 2 cores)")
    p.add_argument("--latent-bits", type=int, default=8, help="bits per VAE latent value (default 8)")
    p.add_argument("--pca-bits", type=int, default=4, help="bits per PCA coefficient (default 4)")
    p.add_argument("--pca-fit", type=Path, default=None, help="fit the PCA on this held-out folder "
                   "(default: on the evaluated images themselves)")
    p.add_argument("--no-curves", action="store_true", help="skip the JPEG/WebP quality sweeps of the R-D plot")
    p.add_argument("--device", default=None, help="torch device for the model (default: cuda when available, else cpu)")
    return p


def load_perceptual_metric(spec: str):
    if spec == "none":
        return None
    from tokenizer.perceptual import PerceptualUnavailable, load_perceptual

    try:
        return load_perceptual(spec)
    except PerceptualUnavailable as err:
        print(f"perceptual metric skipped: {err}", file=sys.stderr)
        return None


def evaluate(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    started = time.time()
    files = list_images(args.data, args.limit)
    model = load_model(args.model, args.device)
    log(f"model on {model.device}")
    factor = model.downsample_factor
    is_tokenizer = isinstance(model, ImageTokenizer)
    perceptual = load_perceptual_metric(args.perceptual)
    perceptual_key = None
    if perceptual is not None:
        perceptual_key = "lpips" if perceptual.name.startswith("lpips") else "stlpips"
    histogram = CodebookHistogram(model.vocab_size) if is_tokenizer else None
    args.out.mkdir(parents=True, exist_ok=True)

    images: list[tuple[Path, torch.Tensor]] = []
    failures = []
    for path in files:
        try:
            images.append((path, load_eval_image(path, args.size)))
        except (ImageError, OSError) as err:
            failures.append({"image": path.name, "error": str(err)})
            log(f"{path.name}: skipped ({err})")
    if not images:
        raise ImageError(f"--data {args.data}: none of the {len(files)} images could be read")

    pca = PatchPCA(factor, args.pca_bits)
    if args.pca_fit is not None:
        pca.fit([load_eval_image(p, args.size) for p in list_images(args.pca_fit)])
        pca_fit = f"held-out folder {args.pca_fit}"
    else:
        pca.fit([img for _, img in images])
        pca_fit = "the evaluated images themselves"

    model_label = "tokenizer" if is_tokenizer else "vae"
    methods = [model_label, "jpeg", "webp", f"bicubic_x{factor}", "pca"]
    rows, grid_rows, grid_captions = [], [], []
    curve_acc: dict[str, dict[int, list[tuple[float, float]]]] = {"jpeg": {}, "webp": {}}
    for index, (path, image) in enumerate(images):
        t0 = time.time()
        height, width = image.shape[-2:]
        try:
            result = run_model(model, image, args.latent_bits)
        except (RuntimeError, ValueError) as err:
            failures.append({"image": path.name, "error": f"model: {err}"})
            log(f"{path.name}: model failed ({err})")
            continue
        if histogram is not None:
            histogram.update(result.ids)
        row = {"image": path.name, "height": height, "width": width}
        score = Scorer(image, perceptual, perceptual_key)
        row[model_label] = {"bpp": result.bpp, **score(result.image)}
        codecs = {}
        for codec in ("jpeg", "webp"):
            enc = codec_at_budget(image, codec, result.bpp)
            codecs[codec] = enc
            row[codec] = {"bpp": enc.bpp, "quality": enc.quality, "bytes": enc.bytes,
                          "within_budget": enc.within_budget,
                          **score(enc.image)}
        bicubic, bicubic_bpp = bicubic_baseline(image, factor)
        row[f"bicubic_x{factor}"] = {"bpp": bicubic_bpp, **score(bicubic, args.perceptual_all)}
        k = pca.components_for(result.bpp * factor * factor)
        pca_image, pca_bpp = pca.reconstruct(image, k)
        row["pca"] = {"bpp": pca_bpp, "components": k, **score(pca_image, args.perceptual_all)}
        rows.append(row)
        if not args.no_curves:
            for codec, qualities in (("jpeg", JPEG_CURVE), ("webp", WEBP_CURVE)):
                for quality in qualities:
                    enc = codec_encode(image, codec, quality)
                    curve_acc[codec].setdefault(quality, []).append((enc.bpp, float(psnr(image, enc.image))))
        if len(grid_rows) < args.grid_images:
            grid_rows.append({"original": image, model_label: result.image, "JPEG": codecs["jpeg"].image,
                              "WebP": codecs["webp"].image})
            grid_captions.append({
                "original": path.name,
                model_label: f"{result.bpp:.3f} bpp {row[model_label]['psnr']:.2f} dB",
                "JPEG": f"q{codecs['jpeg'].quality} {codecs['jpeg'].bpp:.3f} bpp {row['jpeg']['psnr']:.2f} dB",
                "WebP": f"q{codecs['webp'].quality} {codecs['webp'].bpp:.3f} bpp {row['webp']['psnr']:.2f} dB",
            })
        log(f"[{index + 1}/{len(images)}] {path.name} {width}x{height}: {model_label} {result.bpp:.4f} bpp "
            f"{row[model_label]['psnr']:.2f} dB | jpeg q{row['jpeg']['quality']} {row['jpeg']['bpp']:.4f} bpp "
            f"{row['jpeg']['psnr']:.2f} dB | webp q{row['webp']['quality']} {row['webp']['bpp']:.4f} bpp "
            f"{row['webp']['psnr']:.2f} dB ({time.time() - t0:.1f} s)")
    if not rows:
        raise RuntimeError(f"no image could be evaluated; failures: {failures}")

    means = mean_rows(rows, methods)
    for codec in ("jpeg", "webp"):
        means[codec]["within_budget"] = float(np.mean([r[codec]["within_budget"] for r in rows]))
    curves = {
        codec: [{"quality": q, "bpp": float(np.mean([v[0] for v in vals])), "psnr": float(np.mean([v[1] for v in vals]))}
                for q, vals in sorted(acc.items())]
        for codec, acc in curve_acc.items() if acc
    }
    metric_keys = ["psnr", "ssim", "ms_ssim"] + ([perceptual_key] if perceptual_key else []) + ["delta_e00"]
    over = {c: sum(not r[c]["within_budget"] for r in rows) for c in ("jpeg", "webp")}
    pca_components = sorted({r["pca"]["components"] for r in rows})
    notes = {
        model_label: (f"{model.vocab_size} codes, f{factor}" if is_tokenizer
                      else f"{model.latent_channels} latent channels at {args.latent_bits} bits, f{factor}"),
        "jpeg": "Pillow optimize=True, quality searched per image" + (f"; over budget on {over['jpeg']} images at q1" if over["jpeg"] else ""),
        "webp": "Pillow method=6, quality searched per image" + (f"; over budget on {over['webp']} images at q0" if over["webp"] else ""),
        f"bicubic_x{factor}": f"8-bit RGB thumbnail at 1/{factor} (uncompressed, 24/f^2 bpp)",
        "pca": f"{'/'.join(map(str, pca_components))} components of {3 * factor * factor} x {args.pca_bits} bits, fitted on {pca_fit}",
    }
    result = {
        "model": describe_model(model),
        "data": str(args.data),
        "num_images": len(rows),
        "resolution": f"{args.size}x{args.size} centre crops" if args.size else "full resolution (padded to a multiple of f inside the model)",
        "perceptual_metric": perceptual.name if perceptual is not None else None,
        "metric_keys": metric_keys,
        "settings": {"latent_bits": args.latent_bits, "pca_bits": args.pca_bits, "pca_fit": pca_fit,
                     "jpeg_qualities": list(JPEG_QUALITIES), "webp_qualities": list(WEBP_QUALITIES)},
        "means": means,
        "notes": notes,
        "images": rows,
        "failures": failures,
        "rate_distortion": curves,
        "seconds": round(time.time() - started, 1),
    }
    if histogram is not None:
        result["codebook"] = {**asdict(histogram.stats()), "histogram": histogram.counts.tolist()}

    (args.out / "metrics.json").write_text(json.dumps(result, indent=1))
    (args.out / "metrics.md").write_text(markdown_table(result))
    if grid_rows:
        write_grid(args.out / "grid.png", grid_rows, grid_captions)
    points = {name: {"bpp": means[name]["bpp"], "psnr": means[name]["psnr"], "label": f"{name} (mean)"}
              for name in methods}
    points[model_label]["label"] = f"{model_label}: {result['model']['source']}"
    write_plot(args.out / "rate_distortion.png", curves, points,
               f"{result['model']['source']} on {args.data.name} ({len(rows)} images)")
    log(f"wrote {args.out}/metrics.json, metrics.md, grid.png, rate_distortion.png in {result['seconds']} s")
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = evaluate(args)
    except (FileNotFoundError, ImageError, ConfigError, WeightsError, ValueError, OSError, RuntimeError) as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 1
    print(markdown_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
