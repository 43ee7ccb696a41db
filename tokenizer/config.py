"""Typed configs for every model family, saved as ``config.json`` beside ``model.safetensors``.

One dataclass per family. Each JSON file carries ``imgtok_model_type`` (so it can never be mistaken
for another library's ``config.json``) and ``format_version`` (so an older imgtok refuses a newer
format with a clear message instead of loading garbage).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .config_fields import INT_LIMIT, autoencoder_parameters, field_problems, size_problem

# Bump when the meaning of a saved field or of a weight key changes.
FORMAT_VERSION = 1


class ConfigError(ValueError):
    """A config that cannot be built or loaded (unknown field, bad value, unknown version)."""


@dataclass
class AutoencoderConfig:
    """Fields shared by every family: the convolutional encoder/decoder (taming / LDM layout).

    Defaults describe the LDM ``f8`` autoencoder family; presets in ``presets.py`` pick the sizes.
    """

    model_type: ClassVar[str] = "base"

    in_channels: int = 3  # RGB; the image pipeline always converts to RGB.
    out_channels: int = 3
    base_channels: int = 128  # width of the first level; level i has base_channels * channel_mult[i].
    # One entry per resolution level. len(channel_mult) - 1 stride-2 downsamples: f = 2**(len - 1).
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    layers_per_block: int = 2  # ResNet blocks per encoder level; the decoder uses one more (taming/LDM).
    # Levels (0 = full resolution) that carry self-attention after each ResNet block. Empty for the
    # LDM/SD family; LlamaGen puts attention at the lowest level.
    attn_levels: tuple[int, ...] = ()
    mid_attention: bool = True  # self-attention in the mid block, at the lowest resolution.
    z_channels: int = 4  # channels the encoder emits (doubled for the Gaussian posterior).
    latent_channels: int = 4  # channels after quant_conv: the latent or the quantizer's input dim.
    norm_groups: int = 32  # GroupNorm groups; clipped to a divisor of the width in tiny presets.
    dropout: float = 0.0
    # Use 1x1 quant_conv / post_quant_conv between encoder/decoder and the bottleneck (taming, LDM,
    # diffusers all have them; False gives a bottleneck fed directly by the encoder's conv_out).
    use_quant_conv: bool = True
    # post_quant_conv on its own switch; None follows use_quant_conv. diffusers keeps the two apart
    # (the SD3 / FLUX VAEs have neither conv).
    use_post_quant_conv: bool | None = None
    # Where the decoder starts: False = post_quant_conv maps latent_channels -> latent_channels and the
    # decoder's conv_in reads latent_channels (imgtok's own presets); True = post_quant_conv maps
    # latent_channels -> z_channels and conv_in reads z_channels, as taming, LDM, LlamaGen and diffusers'
    # VQModel do (e.g. LlamaGen: 8-d codes -> 256 channels).
    post_quant_to_z: bool = False

    # Inclusive (low, high) per field, checked with each field's type when a config is validated (for a
    # list field, per entry); integer fields not listed are bounded by config_fields.INT_LIMIT. Generous:
    # they stop typos and absurd sizes, the parameter estimate stops absurd combinations.
    field_ranges: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "in_channels": (1, 64),
        "out_channels": (1, 64),
        "base_channels": (1, 16384),
        "channel_mult": (1, 64),
        "layers_per_block": (1, 64),
        "attn_levels": (0, 5),
        "z_channels": (1, 65536),
        "latent_channels": (1, 65536),
        "norm_groups": (1, 1024),
        "dropout": (0.0, 0.99),
    }

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def has_post_quant_conv(self) -> bool:
        return self.use_quant_conv if self.use_post_quant_conv is None else self.use_post_quant_conv

    @property
    def decoder_in_channels(self) -> int:
        """Channels the decoder's conv_in reads (the output of post_quant_conv)."""
        return self.z_channels if self.post_quant_to_z else self.latent_channels

    def parameter_estimate(self) -> int:
        """Parameters the model of this config has, computed from the sizes without building it."""
        return autoencoder_parameters(self, self.z_channels, self.latent_channels)

    def validate(self) -> None:
        """Raise a ConfigError naming the first field whose type, range or combination is wrong."""
        problems = field_problems(self)
        if problems:
            raise ConfigError("; ".join(problems))
        if self.downsample_factor not in (1, 2, 4, 8, 16, 32):
            raise ConfigError(f"channel_mult {self.channel_mult} gives f={self.downsample_factor}; expected "
                              "1 to 6 levels (f = 2**(levels - 1) in 1..32)")
        for level in self.attn_levels:
            if not 0 <= level < len(self.channel_mult):
                raise ConfigError(
                    f"attn_levels entry {level} is outside 0..{len(self.channel_mult) - 1}"
                )
        if not self.use_quant_conv and self.z_channels != self.latent_channels:
            raise ConfigError("use_quant_conv=False needs z_channels == latent_channels")
        if not self.has_post_quant_conv and self.decoder_in_channels != self.latent_channels:
            raise ConfigError("post_quant_to_z without a post_quant_conv needs z_channels == latent_channels")
        too_big = size_problem(self.parameter_estimate())
        if too_big:
            raise ConfigError(too_big)

    # --- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"imgtok_model_type": self.model_type, "format_version": FORMAT_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "AutoencoderConfig":
        data = dict(data)
        model_type = data.pop("imgtok_model_type", None)
        version = data.pop("format_version", None)
        if model_type is None:
            raise ConfigError(
                f"{source}: no 'imgtok_model_type' key; this is not an imgtok config "
                "(another library's checkpoint can be converted with `imgtok convert`)"
            )
        target = CONFIG_CLASSES.get(model_type)
        if target is None:
            raise ConfigError(
                f"{source}: unknown imgtok_model_type {model_type!r}; expected one of {sorted(CONFIG_CLASSES)}"
            )
        if cls is not AutoencoderConfig and target is not cls:
            raise ConfigError(
                f"{source}: holds a {model_type!r} model, expected {cls.model_type!r}"
            )
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigError(f"{source}: 'format_version' is {version!r}; expected a positive integer")
        if version > FORMAT_VERSION:
            raise ConfigError(
                f"{source}: format_version {version!r} is newer than this imgtok understands "
                f"({FORMAT_VERSION}); upgrade imgtok"
            )
        known = {f.name: f for f in dataclasses.fields(target)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown} for {target.__name__}")
        kwargs = {}
        for name, value in data.items():
            if isinstance(value, list):
                value = tuple(value)
            kwargs[name] = value
        config = target(**kwargs)
        try:
            config.validate()
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        return config

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "AutoencoderConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(data, source=str(path))

    def replace(self, **changes: Any) -> "AutoencoderConfig":
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new


@dataclass
class VQConfig(AutoencoderConfig):
    """Discrete tokenizer: encoder -> VectorQuantizer -> decoder (VQ-VAE, van den Oord et al. 2017)."""

    model_type: ClassVar[str] = "vq"

    codebook_size: int = 16384
    # Factorised codes (ViT-VQGAN, Yu et al. 2021, sec. 3.2): look codes up in a low-dimensional space
    # through in/out projections. None = codes live in latent_channels dimensions.
    code_dim: int | None = None
    l2_normalize: bool = True  # cosine-similarity lookup on the unit sphere (ViT-VQGAN / LlamaGen).
    commitment_beta: float = 0.25  # VQ-VAE eq. 3; 0.25 as in the paper.
    codebook_loss_weight: float = 1.0
    use_ema: bool = False  # EMA codebook updates (VQ-VAE appendix A.1) instead of the codebook loss.
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    # Dead-code restart (Jukebox, Dhariwal et al. 2020; Zeghidour et al. 2021): a code whose EMA usage
    # falls under this many assignments per step is re-seeded from an encoder output. 0 disables it.
    dead_code_threshold: float = 0.0
    usage_decay: float = 0.99  # decay of the per-code usage statistic the restart reads.
    kmeans_init: bool = False  # initialise the codebook by k-means on the first training batch.
    kmeans_iters: int = 10

    field_ranges: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "codebook_size": (2, INT_LIMIT),  # the size estimate refuses a codebook that cannot be allocated
        "code_dim": (1, 65536),
        "commitment_beta": (0.0, None),
        "codebook_loss_weight": (0.0, None),
        "ema_decay": (0.0, 1.0),
        "ema_epsilon": (1e-12, 1.0),
        "dead_code_threshold": (0.0, None),
        "usage_decay": (0.0, 1.0),
        "kmeans_iters": (0, 10000),
    }

    def parameter_estimate(self) -> int:
        dim, code_dim = self.latent_channels, self.code_dim or self.latent_channels
        codebook = self.codebook_size * code_dim
        projections = 2 * dim * code_dim + dim + code_dim if code_dim != dim else 0
        return super().parameter_estimate() + codebook + projections


@dataclass
class KLConfig(AutoencoderConfig):
    """Continuous VAE with a diagonal-Gaussian posterior (Kingma & Welling 2014; LDM, Rombach et al. 2022)."""

    model_type: ClassVar[str] = "kl"

    # Latents handed to users are (mode - shift_factor) * scaling_factor, so that a diffusion model
    # sees roughly unit variance (LDM sec. 4.3.2). Estimate scaling_factor as 1/std of training latents.
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    logvar_clamp: tuple[float, float] = (-30.0, 20.0)  # as LDM: keeps exp(logvar) finite early on.

    field_ranges: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "logvar_clamp": (-80.0, 80.0),  # exp(80) is still finite in fp32
    }

    def parameter_estimate(self) -> int:
        # The encoder emits mean and log-variance stacked on channels ("double_z").
        return autoencoder_parameters(self, 2 * self.z_channels, 2 * self.latent_channels)

    def validate(self) -> None:
        super().validate()
        if self.scaling_factor == 0:
            raise ConfigError("field 'scaling_factor' is 0; latents would all be 0 (expected a non-zero number)")
        low, high = self.logvar_clamp
        if not low < high:
            raise ConfigError(f"field 'logvar_clamp' is {list(self.logvar_clamp)}; expected [low, high] with low < high")


@dataclass
class AEConfig(AutoencoderConfig):
    """Plain deterministic autoencoder (no bottleneck regulariser), for comparisons."""

    model_type: ClassVar[str] = "ae"


CONFIG_CLASSES: dict[str, type[AutoencoderConfig]] = {
    cls.model_type: cls for cls in (VQConfig, KLConfig, AEConfig)
}

__all__ = [
    "FORMAT_VERSION",
    "ConfigError",
    "AutoencoderConfig",
    "VQConfig",
    "KLConfig",
    "AEConfig",
    "CONFIG_CLASSES",
]
