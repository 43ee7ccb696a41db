"""diffusers ``AutoencoderKL`` / ``VQModel`` folders -> imgtok ``KLModel`` / ``VQModel``.

A diffusers autoencoder folder is ``config.json`` (with ``_class_name``) + ``diffusion_pytorch_model.safetensors``;
a pipeline repo keeps it in ``vae/`` (or ``vqvae/``). diffusers re-implements the LDM/taming autoencoder
(``models/autoencoders/vae.py``) under other module names; the maths is the same:

- ``down_blocks.{i}.resnets.{j}`` is our ``down.{i}.block.{j}`` (``conv_shortcut`` is our ``nin_shortcut``);
  ``Attn*Block2D`` levels carry one ``attentions.{j}`` per ResNet block (our ``attn_levels``).
- ``up_blocks`` run from the lowest resolution up, so ``up_blocks.{k}`` is our ``up.{n-1-k}``.
- attention has Linear ``to_q/to_k/to_v/to_out.0`` (one head of width C, scale C**-0.5): the same
  maps as our 1x1 convs, so their (C, C) weights become (C, C, 1, 1).
- ``AutoencoderKL.latent_channels`` is both our ``z_channels`` and ``latent_channels``;
  ``VQModel.latent_channels`` is our ``z_channels`` and its ``vq_embed_dim`` our ``latent_channels`` (the
  code dimension), with ``post_quant_conv`` going back to ``z_channels`` (``post_quant_to_z``).
- ``VQModel``'s quantizer is a plain Euclidean nearest-code lookup (no l2 normalisation) over
  ``quantize.embedding.weight`` (K, vq_embed_dim), trained with the "legacy" loss
  ``||sg(z_q) - z||^2 + beta ||z_q - sg(z)||^2``, i.e. beta on the codebook term: in our terms
  ``commitment_beta = 1`` and ``codebook_loss_weight = beta = 0.25``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import (
    CONFIG_NAME,
    DIFFUSERS_PICKLES,
    DIFFUSERS_WEIGHTS,
    PIPELINE_SUBFOLDERS,
    Checkpoint,
    WeightsError,
)
from ..config import AutoencoderConfig, ConfigError, KLConfig, VectorQuantizerConfig, VQConfig
from .common import as_conv1x1, read_state_file, regex_rule, rename_state

CLASS_TO_TYPE = {"AutoencoderKL": "kl", "VQModel": "vq"}

# diffusers' constructor defaults, for configs written by versions that predate a field.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "AutoencoderKL": dict(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D"],
        block_out_channels=[64], layers_per_block=1, act_fn="silu", latent_channels=4, norm_num_groups=32,
        scaling_factor=0.18215, shift_factor=None, latents_mean=None, latents_std=None, use_quant_conv=True,
        use_post_quant_conv=True, mid_block_add_attention=True,
    ),
    "VQModel": dict(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D"],
        block_out_channels=[64], layers_per_block=1, act_fn="silu", latent_channels=3, num_vq_embeddings=256,
        norm_num_groups=32, vq_embed_dim=None, norm_type="group", mid_block_add_attention=True,
    ),
}
_DOWN_TYPES = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}
_UP_TYPES = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}


# --- finding a diffusers autoencoder --------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def diffusers_folder(folder: str | Path) -> Path | None:
    """The folder holding a diffusers autoencoder's config.json: ``folder`` itself or its ``vae/`` (a
    pipeline repo); None when ``folder`` is no diffusers autoencoder (e.g. an imgtok folder)."""
    folder = Path(folder)
    if (folder / CONFIG_NAME).is_file():  # a model folder: only its own config counts
        candidates = [folder]
    else:  # a pipeline folder (model_index.json): the autoencoder component
        candidates = [folder / sub for sub in PIPELINE_SUBFOLDERS]
    for candidate in candidates:
        data = read_json(candidate / CONFIG_NAME)
        if data is not None and "_class_name" in data and "imgtok_model_type" not in data:
            return candidate
    return None


def model_type_of(folder: Path) -> str:
    """'kl' or 'vq' for a diffusers autoencoder folder (as returned by ``diffusers_folder``)."""
    data = read_json(folder / CONFIG_NAME) or {}
    name = data.get("_class_name")
    if name not in CLASS_TO_TYPE:
        raise ConfigError(
            f"{folder / CONFIG_NAME}: diffusers class {name!r} is not supported; imgtok loads "
            f"{', '.join(CLASS_TO_TYPE)}"
        )
    return CLASS_TO_TYPE[name]


def weights_file(folder: Path, allow_pickle: bool = False) -> Path:
    for name in DIFFUSERS_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    pickles = [name for name in DIFFUSERS_PICKLES if (folder / name).is_file()]
    if pickles and allow_pickle:
        return folder / pickles[0]
    if pickles:
        raise WeightsError(
            f"{folder}: holds only pickle weights ({', '.join(pickles)}); imgtok loads safetensors directly and "
            f"reads pickles only through `imgtok convert {folder} OUT --allow-pickle` (a pickle can run code)"
        )
    raise FileNotFoundError(f"{folder}: diffusers config.json but no {DIFFUSERS_WEIGHTS[0]}")


# --- config ---------------------------------------------------------------------------------------
def config_from_diffusers(data: dict[str, Any], source: str) -> tuple[AutoencoderConfig, list[str]]:
    """The imgtok config of a diffusers AutoencoderKL / VQModel config dict, and notes on what it drops."""
    name = data.get("_class_name")
    if name not in CLASS_TO_TYPE:
        raise ConfigError(
            f"{source}: diffusers class {name!r} is not supported; imgtok loads {', '.join(CLASS_TO_TYPE)}"
        )
    cfg = {**_DEFAULTS[name], **data}
    notes: list[str] = []

    def refuse(field: str, expected: str) -> ConfigError:
        return ConfigError(f"{source}: unsupported {name} config: {field} = {cfg[field]!r}; imgtok supports {expected}")

    if cfg["act_fn"] != "silu":
        raise refuse("act_fn", "'silu'")
    if cfg.get("norm_type", "group") != "group":
        raise refuse("norm_type", "'group' (the spatially conditioned MoVQ norm is not implemented)")
    widths = list(cfg["block_out_channels"])
    base = widths[0]
    if any(w % base for w in widths):
        raise refuse("block_out_channels", "widths that are multiples of the first")
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    if len(down) != len(widths) or len(up) != len(widths):
        raise refuse("down_block_types", f"one down and one up block per entry of block_out_channels ({len(widths)})")
    for field, types, known in (("down_block_types", down, _DOWN_TYPES), ("up_block_types", up, _UP_TYPES)):
        bad = [t for t in types if t not in known]
        if bad:
            raise refuse(field, f"{sorted(known)}, not {bad[0]!r}")
    n = len(widths)
    enc_attn = tuple(i for i, t in enumerate(down) if _DOWN_TYPES[t])
    dec_attn = tuple(sorted(n - 1 - k for k, t in enumerate(up) if _UP_TYPES[t]))  # up_blocks run low -> high res
    if enc_attn != dec_attn:
        raise refuse("up_block_types", f"attention at the same levels as down_block_types (levels {enc_attn})")
    common = dict(
        in_channels=cfg["in_channels"], out_channels=cfg["out_channels"], base_channels=base,
        channel_mult=tuple(w // base for w in widths), layers_per_block=cfg["layers_per_block"],
        attn_levels=enc_attn, mid_attention=bool(cfg["mid_block_add_attention"]),
        norm_groups=cfg["norm_num_groups"], dropout=0.0,
    )
    if name == "AutoencoderKL":
        if cfg.get("latents_mean") is not None or cfg.get("latents_std") is not None:
            notes.append("per-channel latents_mean/latents_std are not represented; encode() scales with "
                         "scaling_factor and shift_factor only")
        config: AutoencoderConfig = KLConfig(
            **common, z_channels=cfg["latent_channels"], latent_channels=cfg["latent_channels"],
            use_quant_conv=bool(cfg["use_quant_conv"]), use_post_quant_conv=bool(cfg["use_post_quant_conv"]),
            scaling_factor=float(cfg["scaling_factor"]),
            shift_factor=float(cfg["shift_factor"]) if cfg.get("shift_factor") is not None else 0.0,
        )
    else:
        z = cfg["latent_channels"]
        embed = cfg["vq_embed_dim"] or z
        notes.append("VQModel's scaling_factor is a latent-diffusion setting; tokens do not use it")
        config = VQConfig(
            **common, z_channels=z, latent_channels=embed, post_quant_to_z=embed != z,
            quantizer=VectorQuantizerConfig(
                codebook_size=cfg["num_vq_embeddings"], code_dim=None, l2_normalize=False,
                # diffusers' VectorQuantizer(beta=0.25, legacy=True): beta weighs the codebook term.
                commitment_beta=1.0, codebook_loss_weight=0.25,
            ),
        )
    try:
        config.validate()
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err
    return config, notes


# --- weights --------------------------------------------------------------------------------------
_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
         # diffusers < 0.14 attention names (still in some uploaded checkpoints)
         "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
_ATTN_RE = "(" + "|".join(n.replace(".", r"\.") for n in _ATTN) + r")\.(weight|bias)"
_RES = r"(norm1|conv1|norm2|conv2|conv_shortcut)\.(weight|bias)"
_MID = {"resnets.0": "block_1", "attentions.0": "attn_1", "resnets.1": "block_2"}


def _res(name: str) -> str:
    return "nin_shortcut" if name == "conv_shortcut" else name


def _rules(num_levels: int) -> list:
    def attn(part: str, param: str) -> str:
        return f"{_ATTN[part]}.{param}"

    def up(k: str) -> int:
        return num_levels - 1 - int(k)

    return [
        regex_rule(r"(encoder|decoder)\.(conv_in|conv_out)\.(weight|bias)", r"\1.\2.\3"),
        regex_rule(r"(encoder|decoder)\.conv_norm_out\.(weight|bias)", r"\1.norm_out.\2"),
        regex_rule(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\." + _RES,
                   lambda m: f"encoder.down.{m[1]}.block.{m[2]}.{_res(m[3])}.{m[4]}"),
        regex_rule(r"encoder\.down_blocks\.(\d+)\.attentions\.(\d+)\." + _ATTN_RE,
                   lambda m: f"encoder.down.{m[1]}.attn.{m[2]}.{attn(m[3], m[4])}", as_conv1x1),
        regex_rule(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)",
                   r"encoder.down.\1.downsample.conv.\2"),
        regex_rule(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\." + _RES,
                   lambda m: f"decoder.up.{up(m[1])}.block.{m[2]}.{_res(m[3])}.{m[4]}"),
        regex_rule(r"decoder\.up_blocks\.(\d+)\.attentions\.(\d+)\." + _ATTN_RE,
                   lambda m: f"decoder.up.{up(m[1])}.attn.{m[2]}.{attn(m[3], m[4])}", as_conv1x1),
        regex_rule(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)",
                   lambda m: f"decoder.up.{up(m[1])}.upsample.conv.{m[2]}"),
        regex_rule(r"(encoder|decoder)\.mid_block\.(resnets\.[01])\." + _RES,
                   lambda m: f"{m[1]}.mid.{_MID[m[2]]}.{_res(m[3])}.{m[4]}"),
        regex_rule(r"(encoder|decoder)\.mid_block\.attentions\.0\." + _ATTN_RE,
                   lambda m: f"{m[1]}.mid.attn_1.{attn(m[2], m[3])}", as_conv1x1),
        regex_rule(r"(quant_conv|post_quant_conv)\.(weight|bias)", r"\1.\2"),
        regex_rule(r"quantize\.embedding\.weight", "quantizer.codebook"),
    ]


def to_imgtok_state(state: dict[str, torch.Tensor], num_levels: int, source: str) -> dict[str, torch.Tensor]:
    """diffusers autoencoder keys -> imgtok keys (Linear attention weights as 1x1 convs)."""
    renamed, _ = rename_state(state, _rules(num_levels), drop=(), source=source, what="diffusers")
    return renamed


def read_diffusers_folder(folder: str | Path, expected_type: str | None = None,
                          allow_pickle: bool = False) -> Checkpoint:
    """A diffusers AutoencoderKL / VQModel folder (or a pipeline folder with ``vae/``) as an imgtok checkpoint.

    Args:
        folder: the model folder, or a pipeline folder whose ``vae/`` holds it.
        expected_type: "kl" or "vq" to refuse the other family (before reading the weights).
        allow_pickle: also read ``diffusion_pytorch_model.bin`` (only ``imgtok convert`` sets this).
    """
    folder = Path(folder)
    found = diffusers_folder(folder)
    if found is None:
        raise FileNotFoundError(f"{folder}: no diffusers config.json (with _class_name) here or in vae/")
    config_path = found / CONFIG_NAME
    model_type = model_type_of(found)
    if expected_type is not None and model_type != expected_type:
        raise ConfigError(
            f"{config_path}: holds a diffusers {read_json(config_path)['_class_name']} (an imgtok {model_type!r} "
            f"model), expected {expected_type!r}"
        )
    config, notes = config_from_diffusers(read_json(config_path) or {}, str(config_path))
    path = weights_file(found, allow_pickle)
    state = to_imgtok_state(read_state_file(path, allow_pickle), len(config.channel_mult), str(path))
    for note in notes:
        if "latents_mean" in note:
            warnings.warn(f"{config_path}: {note}", stacklevel=2)
    return Checkpoint(config, state, str(path), "diffusers", notes=notes)
