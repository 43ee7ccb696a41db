"""Model folders: ``config.json`` + ``model.safetensors``, from disk, the bundled defaults or the Hub.

Loading is strict (every key present, every shape equal) and reads safetensors only: pickled
checkpoints can run code, so they are converted by the explicit ``imgtok convert --allow-pickle``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import AutoencoderConfig, ConfigError
from .models import build_model
from .safetensors_check import MalformedSafetensorsError, check_safetensors

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_WEIGHT_NAMES = ("pytorch_model.bin", "model.ckpt", "last.ckpt", "model.pt", "diffusion_pytorch_model.bin")
# Bundled default models shipped as package data (see model_cards/ for how they were trained).
BUNDLED_DIR = Path(__file__).parent / "weights"
BUNDLED = {"vq": BUNDLED_DIR / "imgtok-vq-f8", "kl": BUNDLED_DIR / "imgtok-kl-f8"}


class WeightsError(ValueError):
    """Weights that cannot be read or do not fit their config."""


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
    """The tensors of a safetensors file, whose header is checked first (``safetensors_check``)."""
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


def load_folder(folder: str | Path, expected_type: str | None = None) -> torch.nn.Module:
    """Build the model a folder's ``config.json`` describes and load its ``model.safetensors`` strictly."""
    folder = Path(folder)
    from .interop.diffusers import diffusers_folder  # lazy: interop imports this module

    if diffusers_folder(folder) is not None:  # a diffusers AutoencoderKL/VQModel (or a pipeline's vae/)
        from .interop.diffusers import load_diffusers_folder

        return load_diffusers_folder(folder, expected_type).model
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG_NAME}; expected an imgtok model folder")
    if not weights_path.is_file():
        pickles = [name for name in PICKLE_WEIGHT_NAMES if (folder / name).exists()]
        if pickles:
            raise WeightsError(
                f"{folder}: holds only pickle weights ({', '.join(pickles)}); imgtok loads safetensors only. "
                f"Convert them explicitly with `imgtok convert {folder} OUT --allow-pickle` (pickle can run code)"
            )
        raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME}")
    config = AutoencoderConfig.load(config_path)
    if expected_type is not None and config.model_type != expected_type:
        raise ConfigError(f"{config_path}: holds a {config.model_type!r} model, expected {expected_type!r}")
    model = build_model(config)
    state = read_weights(weights_path)
    check_state_dict(model, state, str(weights_path))
    model.load_state_dict(state, strict=True)
    return model


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_folder(
    name_or_path: str | Path | None,
    model_type: str,
    revision: str | None = None,
    subfolder: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local folder holding ``config.json`` + ``model.safetensors`` for a name, path or Hub repo id.

    ``None`` means the bundled default for ``model_type``.
    """
    if name_or_path is None:
        folder = BUNDLED[model_type]
        if not (folder / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                f"no bundled default {model_type!r} model in this install ({folder}); pass a folder or repo id"
            )
        return folder / subfolder if subfolder else folder
    path = Path(name_or_path)
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: expected a model folder (config.json + model.safetensors), got a file")
        return path / subfolder if subfolder else path
    from .hub import download_folder  # imported lazily: huggingface_hub is only needed for repo ids

    hub_kwargs = dict(revision=revision, subfolder=subfolder, cache_dir=cache_dir, token=token,
                      local_files_only=local_files_only)
    try:
        return download_folder(str(name_or_path), **hub_kwargs)
    except (OSError, WeightsError):
        # Not an imgtok repo: maybe a diffusers autoencoder (or pipeline) repo; else the original error.
        from .interop.hub_fetch import download_diffusers_folder

        folder = download_diffusers_folder(str(name_or_path), **hub_kwargs)
        if folder is None:
            raise
        return folder
