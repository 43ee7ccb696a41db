"""LlamaGen VQ tokenizer state dicts -> imgtok ``VQModel``.

LlamaGen (Sun et al. 2024, ``tokenizer/tokenizer_image/vq_model.py``) re-implements taming's autoencoder
under other names:

- ``encoder.conv_blocks.{i}.res.{j}`` / ``.attn.{j}`` / ``.downsample`` is our ``encoder.down.{i}.block.{j}`` /
  ``.attn.{j}`` / ``.downsample``; ``mid.0 / mid.1 / mid.2`` are ``mid.block_1 / attn_1 / block_2``.
- the decoder's ``conv_blocks`` run from the lowest resolution up: ``decoder.conv_blocks.{k}`` is our
  ``decoder.up.{n-1-k}``.
- attention sits after every ResNet block of the lowest-resolution level, encoder and decoder alike
  (``attn_levels = (n-1,)``), besides the mid block.
- the quantizer l2-normalises latents and codes before a Euclidean lookup (cosine similarity, 8-dim
  codes: ``l2_normalize=True``, ``latent_channels = codebook_embed_dim``), ``post_quant_conv`` maps the
  codes back to ``z_channels`` (``post_quant_to_z``); ``quantize.codebook_used`` is a training-time usage
  log, dropped. Its loss is the standard VQ-VAE one with ``commit_loss_beta = 0.25``.
- GroupNorm uses 32 groups (``Normalize``). Checkpoints are ``{"model": state_dict, ...}`` pickles.
"""

from __future__ import annotations

import re

import torch

from ..checkpoints import Checkpoint, WeightsError
from ..config import AutoencoderConfig
from .common import infer_config, regex_rule, rename_state

DROP = ("quantize.codebook_used",)
_MID = {"0": "block_1", "1": "attn_1", "2": "block_2"}
_PARAM = r"([A-Za-z0-9_.]+\.(?:weight|bias))"


def is_llamagen_layout(keys) -> bool:
    return any(k.startswith("encoder.conv_blocks.") for k in keys)


def _rules(num_levels: int) -> list:
    def up(k: str) -> int:
        return num_levels - 1 - int(k)

    return [
        regex_rule(r"(encoder|decoder)\.(conv_in|norm_out|conv_out)\.(weight|bias)", r"\1.\2.\3"),
        regex_rule(r"(encoder|decoder)\.mid\.([012])\." + _PARAM, lambda m: f"{m[1]}.mid.{_MID[m[2]]}.{m[3]}"),
        regex_rule(r"encoder\.conv_blocks\.(\d+)\.res\.(\d+)\." + _PARAM, r"encoder.down.\1.block.\2.\3"),
        regex_rule(r"encoder\.conv_blocks\.(\d+)\.attn\.(\d+)\." + _PARAM, r"encoder.down.\1.attn.\2.\3"),
        regex_rule(r"encoder\.conv_blocks\.(\d+)\.downsample\." + _PARAM, r"encoder.down.\1.downsample.\2"),
        regex_rule(r"decoder\.conv_blocks\.(\d+)\.res\.(\d+)\." + _PARAM,
                   lambda m: f"decoder.up.{up(m[1])}.block.{m[2]}.{m[3]}"),
        regex_rule(r"decoder\.conv_blocks\.(\d+)\.attn\.(\d+)\." + _PARAM,
                   lambda m: f"decoder.up.{up(m[1])}.attn.{m[2]}.{m[3]}"),
        regex_rule(r"decoder\.conv_blocks\.(\d+)\.upsample\." + _PARAM,
                   lambda m: f"decoder.up.{up(m[1])}.upsample.{m[2]}"),
        regex_rule(r"(quant_conv|post_quant_conv)\.(weight|bias)", r"\1.\2"),
        regex_rule(r"quantize\.embedding\.weight", "quantizer.codebook"),
    ]


def read_llamagen_state(state: dict[str, torch.Tensor], source: str,
                        config: AutoencoderConfig | None = None) -> Checkpoint:
    """A LlamaGen ``VQModel`` state dict -> imgtok.

    Args:
        state: the state dict (the checkpoint's ``"model"`` entry, already unwrapped).
        source: name of the file, for messages.
        config: an imgtok config to use instead of the one read off the shapes.
    """
    levels = {int(m.group(1)) for k in state if (m := re.match(r"decoder\.conv_blocks\.(\d+)\.", k))}
    if not levels:
        raise WeightsError(f"{source}: no decoder.conv_blocks.* keys; not a LlamaGen VQ state dict")
    renamed, dropped = rename_state(state, _rules(max(levels) + 1), DROP, source, "LlamaGen")
    if config is None:
        config = infer_config(renamed, "vq", source, norm_groups=32,
                              quantizer=dict(l2_normalize=True, commitment_beta=0.25, codebook_loss_weight=1.0))
    return Checkpoint(config, renamed, source, "llamagen", dropped=dropped)
