"""Shared pieces of the importers: renaming keys, reading weight files, inferring a config from shapes.

Every importer turns another library's state dict into imgtok's key layout (taming's module names, see
``tokenizer/blocks.py``) and returns a ``Checkpoint``, which goes through the same strict path as our own
folders (``tokenizer.checkpoints.build``: every key and shape checked). A key no rule knows is refused by
name, never dropped silently.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Callable

import torch

from ..checkpoints import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, WeightsError, read_weights
from ..config import AutoencoderConfig, ConfigError, KLConfig, VectorQuantizerConfig, VQConfig
from ..presets import PRESETS, get_preset
from .safe_unpickle import load_pickle, placeholders_in

# A rule maps a foreign key to (our key, tensor transform) or returns None when it does not apply.
Rule = Callable[[str], "tuple[str, Callable[[torch.Tensor], torch.Tensor] | None] | None"]


def as_conv1x1(t: torch.Tensor) -> torch.Tensor:
    """A Linear weight (C_out, C_in) as the equivalent 1x1 conv weight (C_out, C_in, 1, 1)."""
    return t.reshape(*t.shape, 1, 1) if t.ndim == 2 else t


def rename_state(
    state: dict[str, torch.Tensor], rules: list[Rule], drop: tuple[str, ...], source: str, what: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Apply ``rules`` to every key; keys starting with a ``drop`` prefix are left out and listed.

    Raises a WeightsError naming the first key that no rule maps (e.g. a quantizer type we lack).
    """
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key in sorted(state):
        if key.startswith(drop):
            dropped.append(key)
            continue
        for rule in rules:
            hit = rule(key)
            if hit is not None:
                new_key, transform = hit
                value = state[key]
                out[new_key] = transform(value) if transform is not None else value
                break
        else:
            raise WeightsError(f"{source}: unsupported {what} layout: key {key!r} (shape "
                               f"{tuple(state[key].shape)}) has no counterpart in imgtok")
    return out, dropped


def regex_rule(pattern: str, template: str | Callable[[re.Match], str],
               transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Rule:
    """A rule from a full-match regex and a replacement template (or a function of the match)."""
    compiled = re.compile(pattern)

    def rule(key: str):
        m = compiled.fullmatch(key)
        if m is None:
            return None
        new_key = template(m) if callable(template) else m.expand(template)
        return new_key, transform

    return rule


# --- reading weight files -------------------------------------------------------------------------
def read_state_file(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a pickled checkpoint when ``allow_pickle`` is set.

    A pickle can name any Python callable for the reader to run, so pickles are refused unless the caller
    opted in, and even then read by ``safe_unpickle.load_pickle``: tensors are rebuilt, every other object
    (Lightning callbacks, hyper-parameters, anything malicious) becomes an inert placeholder, listed in a
    warning. No code from the file runs, whatever the flags.
    """
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        return strip_prefix(read_weights(path))
    if path.suffix not in PICKLE_SUFFIXES:
        raise WeightsError(f"{path}: unknown weights file type {path.suffix!r}; expected .safetensors, "
                           f"or a pickle ({', '.join(PICKLE_SUFFIXES)}) with --allow-pickle")
    if not allow_pickle:
        raise WeightsError(
            f"{path}: is a pickled checkpoint; imgtok reads pickles only through "
            "`imgtok convert SRC DST --allow-pickle` (with a restricted unpickler that runs no code from the file)"
        )
    try:
        obj = load_pickle(path)
    except Exception as err:  # pickle, zipfile and torch each raise their own types for a broken file
        raise WeightsError(
            f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err}); it may be corrupt or truncated"
        ) from err
    skipped = placeholders_in(obj)
    if skipped:
        shown = ", ".join(skipped[:6]) + (f" and {len(skipped) - 6} more" if len(skipped) > 6 else "")
        warnings.warn(f"{path}: objects of {len(skipped)} class(es) were not rebuilt (kept as inert placeholders, "
                      f"no code from the file ran): {shown}", stacklevel=2)
    return unwrap_checkpoint(obj, str(path))


def unwrap_checkpoint(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint: Lightning's ``state_dict``, LlamaGen's ``model``."""
    if not isinstance(obj, dict):
        raise WeightsError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    for wrapper in ("state_dict", "model", "module"):
        inner = obj.get(wrapper)
        if isinstance(inner, dict) and inner and all(isinstance(k, str) for k in inner):
            obj = inner
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise WeightsError(f"{source}: holds no tensors (top-level keys {sorted(map(str, obj))[:8]})")
    return strip_prefix(state)


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The autoencoder's tensors of a state dict that nests it: DDP's ``module.``, a full Stable
    Diffusion checkpoint's ``first_stage_model.`` (the rest, the UNet and text encoder, is left out)."""
    for prefix in ("module.", "first_stage_model.", "vq_model.", "vae."):
        if any(k.startswith(prefix + "encoder.") for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


# --- configs --------------------------------------------------------------------------------------
def config_from_arg(spec: str) -> AutoencoderConfig:
    """A preset name or the path of an imgtok config JSON (``imgtok convert --config``)."""
    if spec in PRESETS:
        return get_preset(spec)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--config {spec!r}: neither a preset ({', '.join(sorted(PRESETS))}) nor a JSON file")
    return AutoencoderConfig.load(path)


def _shape(state: dict[str, torch.Tensor], key: str, source: str) -> tuple[int, ...]:
    if key not in state:
        raise WeightsError(f"{source}: expected key {key!r} (after renaming to imgtok's layout) is missing; "
                           "unsupported layout, or pass --config")
    return tuple(state[key].shape)


def _indices(state: dict[str, torch.Tensor], pattern: str) -> list[int]:
    compiled = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state if (m := compiled.match(k))})


def infer_config(state: dict[str, torch.Tensor], model_type: str, source: str, **fixed) -> AutoencoderConfig:
    """The config whose model has exactly these tensors (imgtok key names), read off their shapes.

    What shapes cannot tell (GroupNorm groups, l2-normalised lookup, loss weights) comes in ``fixed``
    from the source library's documented defaults.
    """
    base, in_channels = _shape(state, "encoder.conv_in.weight", source)[:2]
    levels = _indices(state, r"encoder\.down\.(\d+)\.")
    if not levels or levels != list(range(len(levels))):
        raise WeightsError(f"{source}: encoder levels {levels} are not 0..n-1")
    mult = []
    for i in levels:
        key = f"encoder.down.{i}.block.0.conv1.weight"
        width = _shape(state, key, source)[0]
        if width % base:
            raise WeightsError(f"{source}: {key} has width {width}, not a multiple of conv_in's {base}")
        mult.append(width // base)
    layers = len(_indices(state, r"encoder\.down\.0\.block\.(\d+)\.conv1\.weight"))
    enc_out = _shape(state, "encoder.conv_out.weight", source)[0]
    use_quant_conv = "quant_conv.weight" in state
    has_post = "post_quant_conv.weight" in state
    dec_in = _shape(state, "decoder.conv_in.weight", source)[1]
    z = enc_out // 2 if model_type == "kl" else enc_out
    if use_quant_conv:
        bottleneck = _shape(state, "quant_conv.weight", source)[0]
        latent = bottleneck // 2 if model_type == "kl" else bottleneck
    else:
        latent = z
    fields = dict(
        in_channels=in_channels,
        out_channels=_shape(state, "decoder.conv_out.weight", source)[0],
        base_channels=base,
        channel_mult=tuple(mult),
        layers_per_block=max(layers, 1),
        attn_levels=tuple(i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in state),
        mid_attention="encoder.mid.attn_1.q.weight" in state,
        z_channels=z,
        latent_channels=latent,
        use_quant_conv=use_quant_conv,
        use_post_quant_conv=None if has_post == use_quant_conv else has_post,
        post_quant_to_z=dec_in != latent,
    )
    quantizer_fixed = fixed.pop("quantizer", {})  # VectorQuantizerConfig fields shapes cannot tell
    if model_type == "vq":
        codebook_size, code_dim = _shape(state, "quantizer.codebook", source)
        fields["quantizer"] = VectorQuantizerConfig(codebook_size=codebook_size,
                                                    code_dim=None if code_dim == latent else code_dim,
                                                    **quantizer_fixed)
    fields.update(fixed)
    cls = {"vq": VQConfig, "kl": KLConfig}[model_type]
    try:
        config = cls(**fields)
        config.validate()
    except (ConfigError, TypeError) as err:
        raise WeightsError(f"{source}: the tensors describe no valid imgtok {model_type!r} config ({err})") from err
    return config
