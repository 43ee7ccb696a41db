"""What a checkpoint is on disk and in memory: the one table of file names, safetensors I/O, strict building.

The bottom of the load path (``tokenizer.pretrained`` is its top): every reader, ours and the importers
in ``tokenizer.interop``, turns its source into a ``Checkpoint`` (an imgtok config and a state dict with
imgtok key names), and ``build`` makes the model from it, checking every key and shape.
Nothing here imports from the rest of the load path, so it is imported by all of it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import AutoencoderConfig
from .models import ENCODER_SIDE, build_model
from .safetensors_check import MalformedSafetensorsError, check_safetensors

# --- the one table of file names ------------------------------------------------------------------
CONFIG_NAME = "config.json"  # imgtok and diffusers alike (diffusers' has "_class_name")
WEIGHTS_NAME = "model.safetensors"  # an imgtok folder's weights
PIPELINE_INDEX_NAME = "model_index.json"  # a diffusers pipeline; its autoencoder sits in a subfolder
# A diffusers autoencoder folder's weights, in order of preference.
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
DIFFUSERS_PICKLES = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")
PIPELINE_SUBFOLDERS = ("vae", "vqvae")  # where a pipeline keeps its autoencoder
# Pickled weights named the way training libraries name them; refused unless the converter opts in.
PICKLE_NAMES = ("pytorch_model.bin", "model.ckpt", "last.ckpt", "model.pt") + DIFFUSERS_PICKLES
SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
WEIGHT_SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)

# Buffers of our quantizer that no other library has; a freshly built model's values are the right start.
FRESH_BUFFERS = ("quantizer.usage", "quantizer.usage_steps", "quantizer.initialized")


class WeightsError(ValueError):
    """Weights that cannot be read or do not fit their config."""


@dataclass
class Checkpoint:
    """A model as read from any source, before it is built.

    config: the imgtok config the weights fit.
    state_dict: tensors under imgtok's key names.
    source: the file the tensors came from, for messages.
    source_format: "imgtok", "diffusers", "taming", "ldm" or "llamagen".
    dropped: keys of the source that are not part of the autoencoder (losses, usage logs).
    notes: fields of the source that imgtok does not represent, said out loud.
    foreign: written by another library (or without its config): the quantizer's bookkeeping buffers
        (``FRESH_BUFFERS``) may be missing and start as in a fresh model.
    """

    config: AutoencoderConfig
    state_dict: dict[str, torch.Tensor]
    source: str
    source_format: str = "imgtok"
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    foreign: bool = True


# --- safetensors I/O ------------------------------------------------------------------------------
def save_folder(model: torch.nn.Module, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (optionally cast to ``dtype``) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save(folder / CONFIG_NAME)
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach()
        if dtype is not None and value.is_floating_point() and not key.startswith("quantizer."):
            value = value.to(dtype)  # codebook stays fp32: low precision flips nearest-code ids
        state[key] = value.contiguous().cpu()
    # One metadata key only: safetensors writes the metadata map in hash order, so with two keys the same
    # weights gave different bytes on every save (a needless new Hub commit, a changing sha256).
    # config.json's imgtok_model_type already says which library wrote the folder.
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    return folder


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, whose header is checked first (``safetensors_check``); a
    WeightsError naming the file and the defect if it cannot be read."""
    path = Path(path)
    try:
        check_safetensors(path)
    except MalformedSafetensorsError as err:
        raise WeightsError(str(err)) from None
    except OSError as err:
        raise WeightsError(f"{path}: cannot read the weights file ({err})") from err
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({err}); the file may be corrupt or truncated") from err


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Codebook statistics that training keeps (usage for dead-code restarts, the EMA update's running sums);
# encoding never reads them, so they do not change any id.
_TRAINING_STATISTICS = ("usage", "usage_steps", "ema_cluster_size", "ema_embed_sum")


def ids_sha256(path: str | Path) -> str:
    """sha256 of what decides the ids (or latents) of a weights file: the name, dtype, shape and bytes of each
    tensor of the ``ENCODER_SIDE`` modules, training statistics left out. Two files with the same digest
    (e.g. before and after a decoder-only fine-tune) give the same ids for every image."""
    digest = hashlib.sha256()
    prefixes = tuple(module + "." for module in ENCODER_SIDE)
    with safe_open(str(path), "pt") as f:
        for key in sorted(f.keys()):
            if not key.startswith(prefixes) or key.rsplit(".", 1)[-1] in _TRAINING_STATISTICS:
                continue
            tensor = f.get_tensor(key).contiguous()
            digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes, any dtype
    return digest.hexdigest()


# --- building -------------------------------------------------------------------------------------
def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise a WeightsError naming the first keys/shapes that do not fit ``model``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    # A float parameter must come from float data (any width: fp16/bf16 exports are cast up), an integer
    # buffer from integers: int32 data in a conv weight is a different tensor, not a precision change.
    kinds = [
        f"{k}: file {str(state[k].dtype).removeprefix('torch.')} vs model {str(v.dtype).removeprefix('torch.')}"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].is_floating_point() != v.is_floating_point()
    ]
    problems = []
    if kinds:
        problems.append(f"{len(kinds)} dtype mismatch(es) (integer vs floating point), first {kinds[:3]}")
    if missing:
        problems.append(f"{len(missing)} missing key(s), first {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), first {unexpected[:3]}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es), first {mismatched[:3]}")
    if problems:
        raise WeightsError(f"{source}: weights do not fit the config: " + "; ".join(problems))


def build(checkpoint: Checkpoint) -> torch.nn.Module:
    """The model of ``checkpoint.config`` with its weights loaded strictly (every key, every shape); eval mode.

    Our own folders must hold every tensor. Other libraries have no quantizer bookkeeping buffers
    (``FRESH_BUFFERS``): those start as in a fresh model, and k-means initialisation is marked done so
    that it never runs over trained codes if the model trains further.
    """
    model = build_model(checkpoint.config)
    expected = model.state_dict()
    state = dict(checkpoint.state_dict)
    if checkpoint.foreign:
        for key in FRESH_BUFFERS:
            if key in expected and key not in state:
                state[key] = expected[key]
        if "quantizer.initialized" in expected:
            state["quantizer.initialized"] = torch.ones_like(expected["quantizer.initialized"])
    check_state_dict(model, state, checkpoint.source)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    return model.eval()
