"""Starting a run from an existing model: ``python -m train --init-from MODEL``.

Fine-tuning a public tokenizer on one's own domain is what users of the field ask for most, and it is how
the bundled models improve from one session to the next: each run continues from the shipped weights, so
CPU hours accumulate instead of starting over.

MODEL is anything ``from_pretrained`` or ``imgtok convert`` reads (the bundled models by name, an imgtok
or diffusers folder, a Hub repo id, a taming / LDM / LlamaGen checkpoint; pickled files only with
``--allow-pickle``), or one of our own training checkpoints (a run folder or ``RUN/checkpoints/step_N``),
which also carries the weight EMA and the discriminator. Weights only: optimizer state never carries over.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from tokenizer.blocks import AttnBlock, ResnetBlock
from tokenizer.checkpoints import build, check_state_dict
from tokenizer.config import AutoencoderConfig, ConfigError
from tokenizer.models import ENCODER_SIDE
from tokenizer.pretrained import load_checkpoint
from tokenizer.shipped import resolve_shipped

# What stays fixed with ``train_part="decoder"``: everything that decides the ids (or the latents),
# so that every dataset already tokenized with the source model stays valid.
FROZEN_FOR_DECODER_ONLY = ENCODER_SIDE
TRAIN_PARTS = ("all", "decoder")


@dataclass
class InitSource:
    """The starting point of a run: the model's config and weights, and what else the source holds."""

    description: str
    config: AutoencoderConfig
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None = None  # our checkpoints only; else the EMA starts as the weights
    disc: dict[str, torch.Tensor] | None = None  # a discriminator of our architecture, if the source has one


def _checkpoint_folder(path: Path) -> Path | None:
    """``path`` itself if it is one of our training checkpoints, the newest one if it is a run folder."""
    if (path / "state.json").is_file() and (path / "model.safetensors").is_file() and (path / "ema.safetensors").is_file():
        return path
    found = sorted((path / "checkpoints").glob("step_*")) if (path / "checkpoints").is_dir() else []
    return found[-1] if found else None


def _read_checkpoint(folder: Path) -> InitSource:
    state = json.loads((folder / "state.json").read_text())
    if "model_config" in state:
        config = AutoencoderConfig.from_dict(state["model_config"], source=f"{folder}/state.json")
    else:  # checkpoints written before the model config was stored in them: the run folder has it
        run_config = folder.parent.parent / "model_config.json"
        if not run_config.is_file():
            raise ConfigError(f"{folder}: a training checkpoint without its model config ({run_config} is missing)")
        config = AutoencoderConfig.load(run_config)
    disc = load_file(str(folder / "disc.safetensors")) if (folder / "disc.safetensors").is_file() else None
    return InitSource(f"training checkpoint {folder} (step {state.get('step')})", config,
                      load_file(str(folder / "model.safetensors")), load_file(str(folder / "ema.safetensors")), disc)


def read_init_source(spec: str, allow_pickle: bool = False) -> InitSource:
    """Read MODEL for ``--init-from``; see the module docstring for what it may be."""
    shipped = resolve_shipped(spec)  # imgtok-vq-f8, bundled, ...: one naming (tokenizer/shipped.py)
    path = shipped.folder if shipped is not None else Path(spec)
    if path.is_dir():
        checkpoint = _checkpoint_folder(path)
        if checkpoint is not None:
            return _read_checkpoint(checkpoint)
    # Every other format: the one load path (from_pretrained's and the converter's).
    checkpoint = load_checkpoint(str(path) if path.exists() else spec, allow_pickle=allow_pickle)
    model = build(checkpoint)  # fills what other libraries lack (the quantizer's bookkeeping buffers)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return InitSource(f"{spec} ({checkpoint.source_format})", model.config, state)


def grown_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` completed with the residual blocks ``model`` has and the source lacks, each set to the identity.

    A new block's last convolution (a ResNet block's ``conv2``, an attention block's ``proj_out``) is zeroed,
    so the block adds nothing to its shortcut and the grown model computes exactly what the source did; its
    other weights keep their fresh initialisation, so the zeroed conv gets gradients from the first step
    (zero-initialised residual branches: Goyal et al. 2017, Zhang et al. 2019 "Fixup"). Only whole blocks that
    keep their width can start as the identity; anything else the source lacks is left missing, for
    ``check_state_dict`` to name. Returns the completed state and the names of the new blocks.
    """
    missing = set(model.state_dict()) - set(state)
    completed, grown = dict(state), []
    for name, module in model.named_modules():
        if isinstance(module, ResnetBlock) and isinstance(module.nin_shortcut, torch.nn.Identity):
            last = "conv2"
        elif isinstance(module, AttnBlock):
            last = "proj_out"
        else:
            continue  # not a residual block, or one that changes width: no identity to start from
        fresh = {f"{name}.{k}": v for k, v in module.state_dict().items()}
        if not fresh.keys() <= missing:
            continue  # the source has this block (or part of it: then check_state_dict names the rest)
        completed.update({k: v.detach().clone() for k, v in fresh.items()})
        for param in ("weight", "bias"):
            completed[f"{name}.{last}.{param}"].zero_()
        missing -= fresh.keys()
        grown.append(name)
    return completed, grown


def load_init_weights(source: InitSource, model: torch.nn.Module, ema: torch.nn.Module,
                      disc: torch.nn.Module | None, grow: bool = False) -> list[str]:
    """Copy the source's weights into the run's modules (strict); returns what was loaded, for the log.

    ``grow``: the run's model may have residual blocks the source lacks (a deeper config); they start as
    identities (``grown_state``), in the weights and the EMA alike.
    """
    model_state, ema_state = source.model, source.ema if source.ema is not None else source.model
    grown: list[str] = []
    if grow:
        model_state, grown = grown_state(model, model_state)
        new = {k: v for k, v in model_state.items() if k not in source.model}
        ema_state = {**ema_state, **new}  # the same identity blocks in the EMA
    check_state_dict(model, model_state, f"--init-from {source.description}")
    model.load_state_dict(model_state, strict=True)
    check_state_dict(ema, ema_state, f"--init-from {source.description} (EMA)")
    ema.load_state_dict(ema_state, strict=True)
    loaded = ["weights", "EMA" if source.ema is not None else "EMA (= weights)"]
    if grown:
        loaded.append(f"{len(grown)} new block(s) as identities ({', '.join(grown[:4])}{', ...' if len(grown) > 4 else ''})")
    if disc is not None and source.disc is not None:
        try:
            check_state_dict(disc, source.disc, f"--init-from {source.description} (discriminator)")
        except ValueError:
            loaded.append("discriminator from scratch (a different architecture)")
        else:
            disc.load_state_dict(source.disc, strict=True)
            loaded.append("discriminator")
    elif disc is not None:
        loaded.append("discriminator from scratch")
    return loaded


def frozen_from_ema(model: torch.nn.Module, ema: torch.nn.Module, part: str) -> list[str]:
    """Set what ``part`` freezes in ``model`` to the EMA's values; returns the modules that differed.

    The exported model is the EMA. A training checkpoint's raw weights differ from its EMA, so freezing the raw
    encoder would let the EMA's encoder drift toward it, step by step, and the export's ids would change:
    decoder-only promises the ids of the model the run starts from, which are the EMA's.
    """
    if part == "all":
        return []
    changed = []
    for name in FROZEN_FOR_DECODER_ONLY:
        try:
            target, source = model.get_submodule(name), ema.get_submodule(name)
        except AttributeError:  # not in this model
            continue
        state, ema_state = target.state_dict(), source.state_dict()
        if any(not torch.equal(state[k], ema_state[k]) for k in state):
            target.load_state_dict(ema_state, strict=True)
            changed.append(name)
    return changed


def apply_train_part(model: torch.nn.Module, part: str) -> None:
    """Freeze what ``part`` leaves fixed. Frozen modules also stay in eval mode, so the quantizer makes no
    EMA codebook updates or dead-code restarts: the ids a frozen encoder + codebook give cannot change."""
    if part not in TRAIN_PARTS:
        raise ConfigError(f"train_part={part!r}: expected one of {TRAIN_PARTS}")
    if part == "all":
        return
    for name in FROZEN_FOR_DECODER_ONLY:
        try:
            module = model.get_submodule(name)
        except AttributeError:  # not in this model (a VQ model has no shortcut, a KL model no quantizer)
            continue
        module.requires_grad_(False).eval()


__all__ = ["InitSource", "read_init_source", "grown_state", "load_init_weights", "frozen_from_ema", "apply_train_part",
           "TRAIN_PARTS"]
