"""Model cards: the ``README.md`` that ``save_pretrained`` / ``push_to_hub`` write beside the weights.

A card is Hub YAML front matter (``library_name``, ``license``, ``tags``, ``pipeline_tag``, ``datasets``
and, when metrics are known, ``model-index``) followed by text rendered from the template shipped in the
package (``tokenizer/templates/model_card.md``, ``string.Template`` placeholders). The front matter is
built with ``huggingface_hub.ModelCardData`` so that it follows the Hub's own metadata schema.

``pipeline_tag`` is ``image-to-image``: the Hub has no tag for image tokenizers, and what a user can run
end to end (and what the model-index metrics measure) is image in, reconstruction out. The alternative,
``image-feature-extraction``, would advertise the ids or latents as general-purpose embeddings, which
they are not.
"""

from __future__ import annotations

import json
import math
import re
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .config import (AutoencoderConfig, BSQConfig, FSQConfig, KLConfig, LFQConfig, QuantizerConfig, ResidualVQConfig,
                     VectorQuantizerConfig, VQConfig)

LIBRARY_NAME = "imgtok"
PIPELINE_TAG = "image-to-image"
TEMPLATE = "model_card.md"

# Metric keys as scripts/evaluate.py writes them -> (model-index metric type, display name).
# Also the order in which they are shown.
METRICS: dict[str, tuple[str, str]] = {
    "psnr": ("psnr", "PSNR (dB)"),
    "ssim": ("ssim", "SSIM"),
    "ms_ssim": ("ms_ssim", "MS-SSIM"),
    "lpips": ("lpips", "LPIPS"),
    "stlpips": ("lpips", "LPIPS (shift-tolerant)"),
    # Mean CIEDE2000 colour difference (tokenizer/colour.py): hue and saturation drift that PSNR hardly sees.
    "delta_e00": ("delta_e00", "ΔE00 (CIEDE2000)"),
    "codebook_usage": ("codebook_usage", "Codebook usage"),
    "perplexity": ("perplexity", "Code perplexity"),
    "bits_per_pixel": ("bits_per_pixel", "Bits per pixel"),
}
_PERCEPTUAL = ("lpips", "stlpips")
_CODEBOOK = ("codebook_usage", "perplexity")  # properties of the model, not of a method's images
# Spellings scripts/evaluate.py writes for the same metrics (its per-method "bpp", its codebook "usage").
_ALIASES = {"bpp": "bits_per_pixel", "usage": "codebook_usage"}
# Where evaluate.py's metrics.json keeps its averages (per-image rows sit beside them).
_SUMMARY_KEYS = ("means",)
# evaluate.py's comparison methods: everything else under "means" is the evaluated model.
_BASELINE_PREFIXES = ("jpeg", "webp", "bicubic", "pca")


class ModelCardError(ValueError):
    """A metrics file or card input that cannot be used (named in the message)."""


@dataclass
class Evaluation:
    """What a metrics file says: the model's averages, where they were measured, and the baselines."""

    metrics: dict[str, float]  # keys from METRICS
    dataset: str | None = None  # name of the evaluation set, e.g. "kodak24"
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)  # e.g. {"jpeg": {...}} at the same bpp
    perceptual_metric: str | None = None  # which network the lpips/stlpips figure used, e.g. "stlpips-alex"


@dataclass
class ModelCardInfo:
    """What a card says beyond the config: names, provenance and measured quality.

    Args:
        repo_id: the Hub repo the card describes (used in the title and the usage example).
        model_name: title and model-index name; default: the repo's name, else "imgtok-<family>-f<f>".
        license: a Hub licence id.
        datasets: Hub dataset ids (or names) the model was trained on.
        tags: extra tags, added to the family's own.
        metrics: evaluation averages keyed like scripts/evaluate.py's metrics.json (psnr, ssim, ...).
        eval_dataset: name of the evaluation set the metrics were measured on (e.g. "kodak24").
        baselines: other methods' averages on the same images (e.g. {"jpeg": {"psnr": ..., "bits_per_pixel": ...}}).
        perceptual_metric: the perceptual network behind lpips/stlpips, shown beside it.
        training: free text (Markdown) about training: command, data, wall time.
        base_model: the Hub repo this model was converted or fine-tuned from, if any.
    """

    repo_id: str | None = None
    model_name: str | None = None
    license: str = "apache-2.0"
    datasets: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    eval_dataset: str | None = None
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    perceptual_metric: str | None = None
    training: str | None = None
    base_model: str | None = None

    @property
    def name(self) -> str | None:
        if self.model_name:
            return self.model_name
        return self.repo_id.split("/")[-1] if self.repo_id else None

    @classmethod
    def from_metrics_file(cls, path: str | Path, **fields: Any) -> "ModelCardInfo":
        """A card info holding a metrics.json's figures; ``fields`` set the rest (repo_id, datasets, ...)."""
        evaluation = load_metrics(path)
        return cls(metrics=evaluation.metrics, eval_dataset=evaluation.dataset, baselines=evaluation.baselines,
                   perceptual_metric=evaluation.perceptual_metric, **fields)


def _known(block: dict[str, Any]) -> dict[str, float]:
    """The known metrics of one flat block."""
    values: dict[str, float] = {}
    for key, value in block.items():
        name = _ALIASES.get(str(key), str(key))
        if name not in METRICS or name in values:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        values[name] = float(value)
    return values


def parse_metrics(data: Any, source: str = "metrics") -> Evaluation:
    """The model's averages, evaluation set and baselines from a metrics dict.

    Reads what writes metrics: scripts/evaluate.py's metrics.json (``means`` per method, the model under
    ``tokenizer``/``vae`` beside ``jpeg``, ``webp``, ...; codebook statistics under ``codebook``; the images'
    folder under ``data``) and ``ModelCardInfo.metrics``' flat ``{"psnr": 25.1, ...}`` (the keys of
    ``METRICS``). Unknown keys and per-image rows are ignored; a file with none of the known metrics is an
    error.
    """
    if not isinstance(data, dict):
        raise ModelCardError(f"{source}: expected a JSON object of metrics, got {type(data).__name__}")
    dataset = data.get("dataset") or data.get("eval_dataset")
    if dataset is None and isinstance(data.get("data"), str):
        dataset = Path(data["data"].rstrip("/")).name or None
    values = _known(data)
    baselines: dict[str, dict[str, float]] = {}
    for key in _SUMMARY_KEYS:
        block = data.get(key)
        if not isinstance(block, dict):
            continue
        per_method = {k: v for k, v in block.items() if isinstance(v, dict) and _known(v) and k not in METRICS}
        if per_method:  # evaluate.py: one entry per method
            for method, entry in per_method.items():
                if method.lower().startswith(_BASELINE_PREFIXES):
                    baselines[method] = _known(entry)
                else:
                    values = {**_known(entry), **values}
        values = {**_known(block), **values}
    codebook = data.get("codebook")
    if isinstance(codebook, dict):
        values = {**_known(codebook), **values}
    if not values:
        raise ModelCardError(f"{source}: no known metric among its keys; expected some of {sorted(METRICS)}")
    perceptual = data.get("perceptual_metric")
    return Evaluation(values, str(dataset) if dataset is not None else None, baselines,
                      perceptual if isinstance(perceptual, str) else None)


def load_metrics(path: str | Path) -> Evaluation:
    """``parse_metrics`` of a JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelCardError(f"{path}: no such metrics file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelCardError(f"{path}: not valid JSON ({err})") from err
    return parse_metrics(data, source=str(path))


def bits_per_pixel(config: AutoencoderConfig) -> float | None:
    """Bits per pixel of a tokenizer's ids (depth x log2(vocab) per f x f pixels); None for continuous latents."""
    if isinstance(config, VQConfig):
        return config.bits_per_position / config.downsample_factor**2
    return None


def _family(config: AutoencoderConfig) -> tuple[str, list[str]]:
    if isinstance(config, VQConfig):
        return "VQ image tokenizer", ["image-tokenizer", "vq-vae", "vector-quantization"]
    if isinstance(config, KLConfig):
        return "continuous KL VAE", ["vae", "autoencoder", "latent-diffusion"]
    return "deterministic autoencoder", ["autoencoder"]


def _model_name(config: AutoencoderConfig, info: ModelCardInfo) -> str:
    return info.name or f"{LIBRARY_NAME}-{config.model_type}-f{config.downsample_factor}"


def card_data(config: AutoencoderConfig, info: ModelCardInfo):
    """The card's Hub metadata as ``huggingface_hub.ModelCardData``."""
    from huggingface_hub import EvalResult, ModelCardData

    family_tags = _family(config)[1]
    tags = [LIBRARY_NAME] + family_tags + [f"f{config.downsample_factor}"]
    tags += [t for t in info.tags if t not in tags]
    name = _model_name(config, info)
    results = None
    if info.metrics:
        dataset = info.eval_dataset or "evaluation-set"
        results = [
            EvalResult(
                task_type=PIPELINE_TAG, task_name="Image reconstruction", dataset_type=dataset,
                dataset_name=dataset, metric_type=METRICS[key][0], metric_name=METRICS[key][1],
                metric_value=round(info.metrics[key], 6),
                metric_config=info.perceptual_metric if key in _PERCEPTUAL else None,
            )
            for key in METRICS
            if key in info.metrics
        ]
    return ModelCardData(
        library_name=LIBRARY_NAME, license=info.license, tags=tags, pipeline_tag=PIPELINE_TAG,
        datasets=list(info.datasets) or None, base_model=info.base_model,
        model_name=name if results else None,  # the Hub reads the name only inside model-index
        eval_results=results,
    )


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"


def _facts(config: AutoencoderConfig, num_parameters: int | None) -> list[tuple[str, str]]:
    f = config.downsample_factor
    rows = [("library", f"`{LIBRARY_NAME}` (`tokenizer` in Python)"), ("family", _family(config)[0]),
            ("downsampling factor f", f"{f} (a H x W image -> ceil(H/{f}) x ceil(W/{f}) grid)")]
    if isinstance(config, VQConfig):
        bpp = bits_per_pixel(config)
        vocab = config.vocab_size
        if config.depth > 1:
            rows += [("vocabulary", f"{vocab} codes per depth ({math.log2(vocab):.4g} bits per token), "
                                    f"{config.depth} tokens per grid position"),
                     ("bits per pixel", f"{bpp:.4g} (depth x log2(vocab) / f^2)")]
        else:
            rows += [("vocabulary", f"{vocab} codes ({math.log2(vocab):.4g} bits per token)"),
                     ("bits per pixel", f"{bpp:.4g} (log2(vocab) / f^2)")]
    else:
        rows += [("latent channels", str(config.latent_channels)),
                 ("latent values per pixel", f"{config.latent_channels / f**2:.4g} (C / f^2, continuous)")]
    if num_parameters is not None:
        rows.append(("parameters", f"{num_parameters / 1e6:.2f} M"))
    rows.append(("weights", "`model.safetensors` + `config.json`"))
    return rows


def _quantizer_line(q: QuantizerConfig, dim: int) -> str:
    """One sentence on the quantizer, citing its paper."""
    if isinstance(q, VectorQuantizerConfig):
        lookup = ("cosine similarity on l2-normalised codes (ViT-VQGAN, Yu et al. 2021)" if q.l2_normalize
                  else "Euclidean distance")
        dims = f"factorised {q.code_dim}-d codes with in/out projections" if q.code_dim else f"{dim}-d codes"
        update = "EMA codebook updates" if q.use_ema else "codebook loss"
        grad = "rotation-trick gradients (Fifty et al. 2024)" if q.rotation_trick else "straight-through gradients"
        return (f"vector quantizer (VQ-VAE, van den Oord et al. 2017): {q.codebook_size} {dims}, nearest code by "
                f"{lookup}; {update}, commitment weight {q.commitment_beta}; {grad}")
    if isinstance(q, FSQConfig):
        return (f"finite scalar quantization (FSQ, Mentzer et al. 2023): levels {list(q.levels)} per channel, "
                f"{q.vocab_size(dim)} implicit codes; id digits in mixed radix, channel 0 least significant")
    if isinstance(q, LFQConfig):
        name = ("binary spherical quantization (BSQ, Zhao et al. 2024)" if isinstance(q, BSQConfig)
                else "lookup-free quantization (LFQ, MAGVIT-v2, Yu et al. 2024)")
        return (f"{name}: the sign of each of {dim} channels is one bit of the id (channel 0 most significant); "
                f"entropy penalty weight {q.entropy_weight}, commitment weight {q.commitment_beta}")
    if isinstance(q, ResidualVQConfig):
        share = "one codebook shared by all depths" if q.shared_codebook else "one codebook per depth"
        drop = "; quantizer dropout (SoundStream)" if q.quantizer_dropout else ""
        return (f"residual vector quantization (SoundStream, Zeghidour et al. 2021; RQ-VAE, Lee et al. 2022): "
                f"{q.num_depths} depths, {share}{drop}; each depth a " + _quantizer_line(q.codebook, dim))
    return f"{q.kind} quantizer"


def _architecture(config: AutoencoderConfig) -> str:
    widths = [config.base_channels * m for m in config.channel_mult]
    attn = (f"self-attention at levels {list(config.attn_levels)}" if config.attn_levels
            else "no self-attention in the levels")
    lines = [
        "## Architecture",
        "",
        "Convolutional encoder and decoder in the taming-transformers / latent-diffusion layout (ResNet blocks "
        "with GroupNorm and SiLU, strided down- and upsampling, a mid block).",
        "",
    ]
    p = config.patch_size
    if p > 1:
        lines.append(f"- space-to-channel stem (DC-AE, Chen et al. 2024): the encoder pixel-unshuffles the image "
                     f"by {p} before its first convolution and the decoder pixel-shuffles its last one's output, so "
                     f"level 0 runs at 1/{p} of the image size (f = {p} x 2^{len(widths) - 1} = "
                     f"{config.downsample_factor})")
    if config.resample_shortcut:
        lines.append("- residual shortcuts around the resampling convs (DC-AE, Chen et al. 2024): 2x2 average pooling "
                     "beside each stride-2 conv, nearest-neighbour upsampling beside each upsampling conv")
    lines += [
        f"- widths per level: {widths}; {config.layers_per_block} ResNet block(s) per encoder level "
        f"({config.decoder_blocks} per decoder level); {attn}; mid-block attention: {'yes' if config.mid_attention else 'no'}",
        f"- encoder output: {config.z_channels} channels; bottleneck input: {config.latent_channels} channels",
    ]
    if isinstance(config, VQConfig):
        lines.append("- " + _quantizer_line(config.quantizer, config.latent_channels))
    elif isinstance(config, KLConfig):
        lines.append(
            f"- diagonal-Gaussian posterior (LDM, Rombach et al. 2022); latents handed out as "
            f"(mode - {config.shift_factor}) x {config.scaling_factor}"
        )
        if config.linear_shortcut:
            f = config.downsample_factor
            lines.append(
                f"- linear patch shortcut: 1x1 convolutions from each {f} x {f} patch's {config.in_channels * f * f} "
                f"values to the latent mean and from the latent back to the patch, beside the trunk; set to the "
                f"whitened patch PCA of the first training batch, with the trunk's last layers zeroed, so that "
                f"training starts at the best linear autoencoder"
            )
    return "\n".join(lines)


def _usage(config: AutoencoderConfig, repo: str) -> str:
    if isinstance(config, VQConfig):
        return (
            "from tokenizer import ImageTokenizer\n\n"
            f'tok = ImageTokenizer.from_pretrained("{repo}")\n'
            'ids = tok.encode("photo.jpg")    # torch.long (h, w), values in [0, tok.vocab_size)\n'
            "image = tok.decode(ids)          # (3, H, W) float in [0, 1]"
        )
    return (
        "from tokenizer import ImageVAE\n\n"
        f'vae = ImageVAE.from_pretrained("{repo}")\n'
        'z = vae.encode("photo.jpg")      # (C, h, w) scaled latents\n'
        "image = vae.decode(z)            # (3, H, W) float in [0, 1]"
    )


def _evaluation(info: ModelCardInfo) -> str:
    """A table: the model and its baselines (rows) by image metric (columns), then the codebook figures."""
    if not info.metrics:
        return ""
    methods = {"this model": info.metrics, **info.baselines}
    columns = [k for k in METRICS if k not in _CODEBOOK and any(k in m for m in methods.values())]
    if "bits_per_pixel" in columns:  # the rate first: the other columns only compare at equal bpp
        columns.insert(0, columns.pop(columns.index("bits_per_pixel")))
    where = f" on {info.eval_dataset}" if info.eval_dataset else ""
    compared = "; baselines on the same images, each at its own bits per pixel" if info.baselines else ""
    lines = ["## Evaluation", "", f"Reconstruction quality{where}, averaged over the images (measured with "
             f"`scripts/evaluate.py`{compared}):", ""]
    if columns:
        names = [METRICS[k][1] for k in columns]
        lines += ["| method | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(columns)]
        for method, values in methods.items():
            cells = [_fmt(values[k]) if k in values else "-" for k in columns]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if info.perceptual_metric and any(k in columns for k in _PERCEPTUAL):
        lines += [f"Perceptual distance: `{info.perceptual_metric}` (lower is better).", ""]
    if "delta_e00" in columns:
        lines += ["ΔE00: mean CIEDE2000 colour difference per pixel (lower is better; about 1 is a just-noticeable "
                  "difference).", ""]
    lines += [f"- {METRICS[k][1]}: {_fmt(info.metrics[k])}" for k in _CODEBOOK if k in info.metrics]
    return "\n".join(lines) + "\n"


def render_model_card(
    config: AutoencoderConfig, info: ModelCardInfo | None = None, num_parameters: int | None = None
) -> str:
    """The full ``README.md`` text: YAML front matter + the package template filled in.

    Args:
        config: the model's config (architecture, vocabulary, f).
        info: names, datasets, metrics and training notes; default: none known.
        num_parameters: shown in the facts table when given.
    """
    info = info or ModelCardInfo()
    for key in info.metrics:
        if key not in METRICS:
            raise ModelCardError(f"unknown metric {key!r} in ModelCardInfo.metrics; expected some of {sorted(METRICS)}")
    data = card_data(config, info)
    repo = info.repo_id or "path/to/model-folder"
    facts = _facts(config, num_parameters)
    if info.datasets:
        facts.append(("training data", ", ".join(info.datasets)))
    summary = (
        f"An image {'tokenizer' if isinstance(config, VQConfig) else 'autoencoder'} made with "
        f"imgtok: a {_family(config)[0]} at f = {config.downsample_factor}"
    )
    if isinstance(config, VQConfig):
        summary += (f", turning an image into a grid of integer token ids from a vocabulary of "
                    f"{config.vocab_size}" + (f" ({config.depth} per position)" if config.depth > 1 else "")
                    + ", and ids back into an image.")
    else:
        summary += f", turning an image into {config.latent_channels}-channel continuous latents and back."
    limitations = (
        "A tokenizer at this rate loses detail (fine texture and small text first); measure it on images like "
        "your own before relying on it. Inputs are converted to RGB; sizes that are not a multiple of "
        f"{config.downsample_factor} are edge-padded on encode and cropped back on decode."
    )
    license_text = (
        "Apache-2.0, like the imgtok code." if info.license == "apache-2.0" else f"`{info.license}` (see the metadata)."
    )
    template = resources.files("tokenizer").joinpath("templates", TEMPLATE).read_text(encoding="utf-8")
    body = string.Template(template).substitute(
        title=_model_name(config, info),
        summary=summary,
        facts="\n".join(f"| {k} | {v} |" for k, v in facts),
        architecture=_architecture(config),
        usage=_usage(config, repo),
        evaluation=_evaluation(info),
        training=f"## Training\n\n{info.training.strip()}\n" if info.training else "",
        limitations=limitations,
        license_text=license_text,
    )
    body = re.sub(r"\n{3,}", "\n\n", body)  # empty optional sections leave runs of blank lines
    return f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n"


def split_front_matter(text: str) -> tuple[str, str]:
    """(YAML, body) of a card; ("", text) when it has no front matter."""
    if not text.startswith("---\n"):
        return "", text
    end = text.find("\n---\n", 4)
    if end < 0:
        raise ModelCardError("model card: front matter opened with '---' is never closed")
    return text[4:end], text[end + 5 :]
