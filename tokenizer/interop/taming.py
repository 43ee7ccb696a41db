"""taming-transformers VQGAN and LDM autoencoder state dicts -> imgtok ``VQModel`` / ``KLModel``.

imgtok's module names follow taming's ``taming/modules/diffusionmodules/model.py`` (``encoder.down.{i}``,
``mid.block_1``, ``decoder.up.{i}`` at the resolution of ``down.{i}``, ...), so the encoder, decoder and
the 1x1 convs map key for key. What differs:

- taming's ``VectorQuantizer`` keeps its codes in ``quantize.embedding.weight`` (K, embed_dim): our
  ``quantizer.codebook``. Its lookup is Euclidean without normalisation (``l2_normalize=False``), with no
  factorisation (codes live in the ``embed_dim`` channels after ``quant_conv``: ``latent_channels``), and
  ``post_quant_conv`` maps ``embed_dim`` back to ``z_channels`` (``post_quant_to_z``). Its loss puts beta
  on the codebook term (``||sg(z_q) - z||^2 + beta ||z_q - sg(z)||^2``, the bug diffusers keeps as
  ``legacy=True``): ``commitment_beta = 1``, ``codebook_loss_weight = beta``.
- LDM's ``AutoencoderKL`` (the Stable Diffusion VAE's original checkpoints) has the same layout with a
  doubled ``conv_out`` and no quantizer.
- Lightning checkpoints also hold the training loss (``loss.*``: LPIPS and the discriminator), dropped.
- taming ships no config beside the weights; the shapes give every size (``infer_config``) and GroupNorm
  uses 32 groups throughout (``Normalize``). ``--config`` overrides.
Gumbel, EMA and other quantizer variants have other keys and are refused by name.
"""

from __future__ import annotations

import torch

from ..checkpoints import Checkpoint
from ..config import AutoencoderConfig
from .common import infer_config, regex_rule, rename_state

DROP = ("loss.", "model_ema.")
TAMING_BETA = 0.25  # taming VQModel's VectorQuantizer(n_embed, embed_dim, beta=0.25)

_RULES = [
    regex_rule(r"((encoder|decoder)\.[A-Za-z0-9_.]+\.(weight|bias))", r"\1"),
    regex_rule(r"(quant_conv|post_quant_conv)\.(weight|bias)", r"\1.\2"),
    regex_rule(r"quantize\.embedding\.weight", "quantizer.codebook"),
]


def is_taming_layout(keys) -> bool:
    keys = list(keys)
    return any(k.startswith("encoder.down.") for k in keys) and any(k.startswith("decoder.up.") for k in keys)


def read_taming_state(state: dict[str, torch.Tensor], source: str,
                      config: AutoencoderConfig | None = None) -> Checkpoint:
    """A taming VQGAN (``quantize.embedding.weight`` present) or LDM AutoencoderKL state dict -> imgtok.

    Args:
        state: the state dict (Lightning's ``state_dict`` already unwrapped).
        source: name of the file, for messages.
        config: an imgtok config to use instead of the one read off the shapes.
    """
    model_type = "vq" if "quantize.embedding.weight" in state else "kl"
    renamed, dropped = rename_state(state, _RULES, DROP, source, "taming/LDM")
    if config is None:
        fixed = dict(norm_groups=32)
        if model_type == "vq":
            fixed.update(quantizer=dict(l2_normalize=False, commitment_beta=1.0, codebook_loss_weight=TAMING_BETA))
        config = infer_config(renamed, model_type, source, **fixed)
    return Checkpoint(config, renamed, source, "taming" if model_type == "vq" else "ldm", dropped=dropped)
