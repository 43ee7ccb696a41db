"""Typed configs for every model family, saved as ``config.json`` beside ``model.safetensors``.

One dataclass per family. Each JSON file carries ``imgtok_model_type`` (so it can never be mistaken
for another library's ``config.json``) and ``format_version`` (so an older imgtok refuses a newer
format with a clear message instead of loading garbage).

A tokenizer's quantizer has its own typed config nested under ``"quantizer"`` with a ``"kind"`` key
(``quantizer_config.py``; re-exported here, so ``from tokenizer.config import FSQConfig`` works). Format 1
kept the vector quantizer's fields flat in the tokenizer config; ``from_dict`` moves them under
``"quantizer"``, so configs saved by earlier versions keep loading.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .config_fields import ConfigError, autoencoder_parameters, field_problems, size_problem
from .quantizer_config import (QUANTIZER_CLASSES, BSQConfig, FSQConfig, LFQConfig, QuantizerConfig, ResidualVQConfig,
                               VectorQuantizerConfig, _to_json)

# Bump when the meaning of a saved field or of a weight key changes.
# 2: the quantizer's fields moved from the tokenizer config into a nested "quantizer" object.
FORMAT_VERSION = 2


@dataclass
class AutoencoderConfig:
    """Fields shared by every family: the convolutional encoder/decoder (taming / LDM layout).

    Defaults describe the LDM ``f8`` autoencoder family; presets in ``presets.py`` pick the sizes.
    """

    model_type: ClassVar[str] = "base"

    in_channels: int = 3  # RGB; the image pipeline always converts to RGB.
    out_channels: int = 3
    base_channels: int = 128  # width of the first level; level i has base_channels * channel_mult[i].
    # One entry per resolution level. len(channel_mult) - 1 stride-2 downsamples: f = patch_size * 2**(len - 1).
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    # Space-to-channel stem: the encoder pixel-unshuffles the image by patch_size before its first conv
    # ((B, 3, H, W) -> (B, 3*p*p, H/p, W/p)) and the decoder's last conv emits 3*p*p channels that a
    # pixel-shuffle puts back at full resolution, so that level 0 runs at 1/p of the image size. CPU
    # convolutions at full resolution are memory-bound; this moves the work to where they are efficient
    # (DC-AE, Chen et al. 2024, sec. 3; issue 12 sec. 3). 1 = no stem: the LDM layout of the field's checkpoints.
    patch_size: int = 1
    # Non-parametric residual shortcuts around the resampling convs (DC-AE, Chen et al. 2024, sec. 3.1): the
    # stride-2 conv adds space-to-channel then channel averaging of its input, the upsampling conv adds
    # channel duplication then channel-to-space. With equal widths in and out (this layout's resamplers),
    # those are exactly 2x2 average pooling and nearest-neighbour upsampling. No weights: checkpoint keys
    # are unchanged, but outputs are not, so False (the LDM layout) is what configs without the field mean.
    resample_shortcut: bool = False
    layers_per_block: int = 2  # ResNet blocks per encoder level; the decoder uses one more (taming/LDM).
    # ResNet blocks per decoder level; None = layers_per_block + 1 (taming/LDM). More makes a heavier decoder
    # than encoder (asymmetric VQGAN, Zhu et al. 2023): reconstructions gain capacity while the encoder, and
    # so the ids, stay as they are. How the bundled models grow (train/init_from.py, --grow).
    decoder_layers_per_block: int | None = None
    # Levels (0 = full resolution, or 1/patch_size with a stem) that carry self-attention after each ResNet
    # block. Empty for the LDM/SD family; LlamaGen puts attention at the lowest level.
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
        "patch_size": (1, 8),
        "layers_per_block": (1, 64),
        "decoder_layers_per_block": (1, 64),
        "attn_levels": (0, 5),
        "z_channels": (1, 65536),
        "latent_channels": (1, 65536),
        "norm_groups": (1, 1024),
        "dropout": (0.0, 0.99),
    }

    @property
    def downsample_factor(self) -> int:
        """f: image pixels per latent position along each side (the stem's patch times 2 per level below 0)."""
        return self.patch_size * 2 ** (len(self.channel_mult) - 1)

    @property
    def decoder_blocks(self) -> int:
        """ResNet blocks per decoder level."""
        return self.layers_per_block + 1 if self.decoder_layers_per_block is None else self.decoder_layers_per_block

    @property
    def has_post_quant_conv(self) -> bool:
        return self.use_quant_conv if self.use_post_quant_conv is None else self.use_post_quant_conv

    @property
    def decoder_in_channels(self) -> int:
        """Channels the decoder's conv_in reads (the output of post_quant_conv)."""
        return self.z_channels if self.post_quant_to_z else self.latent_channels

    def field_problems(self) -> list[str]:
        """What is wrong with each field's type and range (``config_fields.field_problems``); empty if nothing."""
        return field_problems(self)

    def parameter_estimate(self) -> int:
        """Parameters the model of this config has, computed from the sizes without building it."""
        return autoencoder_parameters(self, self.z_channels, self.latent_channels)

    def validate(self) -> None:
        """Raise a ConfigError naming the first field whose type, range or combination is wrong."""
        problems = self.field_problems()
        if problems:
            raise ConfigError("; ".join(problems))
        if not 1 <= len(self.channel_mult) <= 6:
            raise ConfigError(f"channel_mult {self.channel_mult} gives f={2 ** (len(self.channel_mult) - 1)}; "
                              "expected 1 to 6 levels (2**(levels - 1) in 1..32)")
        if self.patch_size & (self.patch_size - 1):  # powers of two keep f a power of two, as every f so far
            raise ConfigError(f"field 'patch_size' is {self.patch_size}; expected 1, 2, 4 or 8")
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
            out[f.name] = _to_json(getattr(self, f.name))
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
        data = target._migrate(data, version, source)
        known = {f.name: f for f in dataclasses.fields(target)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown} for {target.__name__}")
        kwargs = {}
        for name, value in data.items():
            if isinstance(value, list):
                value = tuple(value)
            kwargs[name] = value
        try:
            config = target(**kwargs)  # a nested quantizer object is converted (and may be refused) here
            config.validate()
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        return config

    @classmethod
    def _migrate(cls, data: dict[str, Any], version: int, source: str) -> dict[str, Any]:
        """Fields of an older ``format_version`` rewritten in the current format (none for most families)."""
        return data

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
        """A copy with fields replaced; ``"quantizer.<field>"`` keys replace fields of the nested quantizer config."""
        nested = {k: changes.pop(k) for k in [k for k in changes if k.startswith("quantizer.")]}
        new = dataclasses.replace(self, **changes)
        if nested:
            quantizer = getattr(new, "quantizer", None)
            if quantizer is None:
                raise ConfigError(f"{sorted(nested)}: a {self.model_type!r} config has no quantizer")
            new.quantizer = quantizer.replace(**{k[len("quantizer."):]: v for k, v in nested.items()})
        new.validate()
        return new



# Format 1 kept these VectorQuantizerConfig fields at the top level of a "vq" config.
_V1_QUANTIZER_FIELDS = (
    "codebook_size", "code_dim", "l2_normalize", "commitment_beta", "codebook_loss_weight", "use_ema", "ema_decay",
    "ema_epsilon", "dead_code_threshold", "usage_decay", "kmeans_init", "kmeans_iters",
)


@dataclass
class VQConfig(AutoencoderConfig):
    """Discrete tokenizer: encoder -> quantizer -> decoder (VQ-VAE, van den Oord et al. 2017).

    ``quantizer`` picks the family: a ``VectorQuantizerConfig`` (default), ``FSQConfig``, ``LFQConfig``,
    ``BSQConfig`` or ``ResidualVQConfig`` (a dict with a ``"kind"`` key is converted).
    """

    model_type: ClassVar[str] = "vq"

    quantizer: QuantizerConfig = dataclasses.field(default_factory=VectorQuantizerConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.quantizer, QuantizerConfig):
            self.quantizer = QuantizerConfig.from_dict(self.quantizer)

    @property
    def vocab_size(self) -> int:
        """Ids one token can take (one depth's codebook for residual VQ)."""
        return self.quantizer.vocab_size(self.latent_channels)

    @property
    def depth(self) -> int:
        """Ids per grid position: ``num_depths`` for residual VQ, else 1."""
        return self.quantizer.depth

    @property
    def bits_per_position(self) -> float:
        """log2(vocab_size) for every depth: the rate of one grid position."""
        return self.depth * math.log2(self.vocab_size)

    def parameter_estimate(self) -> int:
        return super().parameter_estimate() + self.quantizer.parameter_estimate(self.latent_channels)

    def field_problems(self) -> list[str]:
        if not isinstance(self.quantizer, QuantizerConfig):
            return [f"field 'quantizer' is {self.quantizer!r}; expected a quantizer config"]
        nested = [p.replace("field '", "field 'quantizer.", 1) for p in field_problems(self.quantizer)]
        if isinstance(self.quantizer, ResidualVQConfig) and isinstance(self.quantizer.codebook, QuantizerConfig):
            nested += [p.replace("field '", "field 'quantizer.codebook.", 1)
                       for p in field_problems(self.quantizer.codebook)]
        return super().field_problems() + nested

    def validate(self) -> None:
        super().validate()  # every field's type and range, the quantizer's included
        self.quantizer.validate(self.latent_channels)  # what depends on the latent channels

    @classmethod
    def _migrate(cls, data: dict[str, Any], version: int, source: str) -> dict[str, Any]:
        if version >= 2:
            return data
        # Format 1: the vector quantizer's fields sat at the top level.
        data = dict(data)
        quantizer = {"kind": "vq", **{k: data.pop(k) for k in _V1_QUANTIZER_FIELDS if k in data}}
        data["quantizer"] = quantizer
        return data


@dataclass
class KLConfig(AutoencoderConfig):
    """Continuous VAE with a diagonal-Gaussian posterior (Kingma & Welling 2014; LDM, Rombach et al. 2022)."""

    model_type: ClassVar[str] = "kl"

    # Latents handed to users are (mode - shift_factor) * scaling_factor, so that a diffusion model
    # sees roughly unit variance (LDM sec. 4.3.2). Estimate scaling_factor as 1/std of training latents.
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    logvar_clamp: tuple[float, float] = (-30.0, 20.0)  # as LDM: keeps exp(logvar) finite early on.
    # A linear path from f x f pixel patches to the latent mean and from the latent back to patches, set to the
    # whitened patch PCA of the first training batch, with the trunk's last layers zeroed so that training
    # starts at the best linear autoencoder (``tokenizer.patch_shortcut``: why, and the measurement behind it).
    # Adds weights, so False (the LDM layout) is what configs without the field mean.
    linear_shortcut: bool = False

    field_ranges: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "logvar_clamp": (-80.0, 80.0),  # exp(80) is still finite in fp32
    }

    def parameter_estimate(self) -> int:
        # The encoder emits mean and log-variance stacked on channels ("double_z").
        n = autoencoder_parameters(self, 2 * self.z_channels, 2 * self.latent_channels)
        if self.linear_shortcut:  # two 1x1 convs between (in_channels f^2)-value patches and the latent
            patch = self.in_channels * self.downsample_factor**2
            n += 2 * patch * self.latent_channels + patch + self.latent_channels
        return n

    def validate(self) -> None:
        super().validate()
        if self.scaling_factor == 0:
            raise ConfigError("field 'scaling_factor' is 0; latents would all be 0 (expected a non-zero number)")
        low, high = self.logvar_clamp
        if not low < high:
            raise ConfigError(f"field 'logvar_clamp' is {list(self.logvar_clamp)}; expected [low, high] with low < high")
        if self.linear_shortcut:
            patch = self.in_channels * self.downsample_factor**2
            if self.latent_channels > patch:
                raise ConfigError(f"field 'linear_shortcut' with {self.latent_channels} latent channels from "
                                  f"{patch}-value patches; expected latent_channels <= in_channels * f^2")
            if self.out_channels != self.in_channels:
                raise ConfigError(f"field 'linear_shortcut' needs out_channels == in_channels "
                                  f"(got {self.out_channels} and {self.in_channels})")


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
    "QuantizerConfig",
    "VectorQuantizerConfig",
    "FSQConfig",
    "LFQConfig",
    "BSQConfig",
    "ResidualVQConfig",
    "QUANTIZER_CLASSES",
    "KLConfig",
    "AEConfig",
    "CONFIG_CLASSES",
]
