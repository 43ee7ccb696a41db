"""The one load path: a name -> a local folder or file -> a ``Checkpoint`` (config + state dict) -> a model.

    resolve(name, options)      a local folder or file first; else a Hub repo (``hub.download``); None is
                                the bundled default
    read_checkpoint(path)       the format from the files (the names in ``tokenizer.checkpoints``) and, for
                                single state-dict files, from their key names: imgtok, diffusers,
                                taming / LDM, LlamaGen
    checkpoints.build(ckpt)     the model, every key and shape checked

``ImageTokenizer.from_pretrained``, ``load_any`` and ``imgtok convert`` all go through ``load_checkpoint``.
Loading reads safetensors only: pickled checkpoints can run code, so only the converter reads them, and
only with its explicit ``allow_pickle`` opt-in.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from . import hub
from .checkpoints import (
    CONFIG_NAME,
    DIFFUSERS_WEIGHTS,
    PICKLE_NAMES,
    PICKLE_SUFFIXES,
    PIPELINE_SUBFOLDERS,
    WEIGHT_SUFFIXES,
    WEIGHTS_NAME,
    Checkpoint,
    WeightsError,
    build,
    check_state_dict,
    read_weights,
    save_folder,
    sha256_of,
)
from .config import AutoencoderConfig, ConfigError
from .hub import HubOptions
from .interop.common import read_state_file
from .interop.diffusers import diffusers_folder, read_diffusers_folder, to_imgtok_state
from .interop.llamagen import is_llamagen_layout, read_llamagen_state
from .interop.taming import is_taming_layout, read_taming_state
from .model_card import ModelCardInfo, render_model_card
from .shipped import WEIGHTS_DIR, default_model, resolve_shipped

# Bundled default models shipped as package data (names, aliases and versions: tokenizer/shipped.py; how they
# were trained: model_cards/).
BUNDLED_DIR = WEIGHTS_DIR
BUNDLED = {kind: default_model(kind).folder for kind in ("vq", "kl")}

__all__ = [
    "BUNDLED", "HubOptions", "Checkpoint", "WeightsError", "resolve", "read_checkpoint", "load_checkpoint",
    "load_model", "load_folder", "save_folder", "read_weights", "check_state_dict", "sha256_of", "push_model_folder",
]


# --- resolve: a name -> a local path -------------------------------------------------------------
def resolve(name_or_path: str | Path | None, options: HubOptions = HubOptions(), model_type: str = "vq",
            allow_pickle: bool = False) -> Path:
    """The local folder or file holding a model: a path as given; else a shipped model's name or alias
    (``imgtok-vq-f8``, ``bundled``, ``imgtok-kl-f8``, ``bundled-kl``: tokenizer/shipped.py), None meaning the
    shipped default for ``model_type``; else a Hub repo's cached snapshot."""
    ship = resolve_shipped(name_or_path, model_type)
    if ship is not None:
        folder = ship.folder
        if not (folder / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{ship.name}: not in this install ({folder}); pass a folder or repo id")
        return folder / options.subfolder if options.subfolder else folder
    if name_or_path is None:
        raise FileNotFoundError(f"no shipped default {model_type!r} model ({BUNDLED_DIR}); pass a folder or repo id")
    path = Path(name_or_path)
    if path.exists():
        return path / options.subfolder if options.subfolder else path
    if str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).endswith(WEIGHT_SUFFIXES):
        raise FileNotFoundError(f"{name_or_path}: no such file or folder{_near_miss(path)}")  # a path, not a repo id
    try:
        return _from_hub(str(name_or_path), options, allow_pickle)
    except hub.RepoNotFoundError as err:  # name both places looked: a mistyped folder name is the usual cause
        raise hub.RepoNotFoundError(
            str(name_or_path), f"no local folder of that name ({path.absolute()}){_near_miss(path)}, and {err.detail}"
        ) from err


def _near_miss(path: Path) -> str:
    """" (did you mean 'x'?)" for an existing sibling whose name is close to ``path``'s, else ""."""
    import difflib

    parent = path.parent if str(path.parent) else Path(".")
    try:
        names = [p.name for p in parent.iterdir()] if parent.is_dir() else []
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.75)
    return f" (did you mean {str(parent / close[0])!r}?)" if close else ""


def _hub_patterns(prefix: str, fallback: bool, allow_pickle: bool) -> list[str]:
    """The files a model needs, at the repo's (sub)folder and in a pipeline's autoencoder subfolders.

    First try only the preferred weights of each layout (a pipeline may hold fp32 and fp16 copies: fetch one);
    the fallback adds the other safetensors names, and the pickles when the converter opted in.
    """
    weights = (WEIGHTS_NAME, *DIFFUSERS_WEIGHTS) if fallback else (WEIGHTS_NAME, DIFFUSERS_WEIGHTS[0])
    if fallback and allow_pickle:
        weights += PICKLE_NAMES
    return [f"{prefix}{sub}{name}" for sub in ("", *(f"{s}/" for s in PIPELINE_SUBFOLDERS))
            for name in (CONFIG_NAME, *weights)]


def _model_folder(folder: Path) -> Path | None:
    """The folder holding the model's config.json: ``folder`` or a pipeline's autoencoder subfolder."""
    found = diffusers_folder(folder)
    if found is not None:
        return found
    return folder if (folder / CONFIG_NAME).is_file() else None


def _weights_in(folder: Path, allow_pickle: bool) -> list[str]:
    names = (WEIGHTS_NAME, *DIFFUSERS_WEIGHTS) + (PICKLE_NAMES if allow_pickle else ())
    return [name for name in names if (folder / name).is_file()]


def _from_hub(repo_id: str, options: HubOptions, allow_pickle: bool) -> Path:
    """A Hub repo's model folder in the local cache, with repo-named errors for what it lacks."""
    prefix = options.prefix()
    snapshot = hub.download(repo_id, options, _hub_patterns(prefix, False, allow_pickle))
    model = _model_folder(snapshot / prefix)
    if model is not None and not _weights_in(model, allow_pickle):
        # One snapshot_download again, with the other names: its files still come from one commit.
        snapshot = hub.download(repo_id, options, _hub_patterns(prefix, True, allow_pickle))
        model = _model_folder(snapshot / prefix)
    where = options.where(repo_id)
    if model is None:
        raise hub.HubError(f"{where}: the repo has no {CONFIG_NAME}; expected an imgtok model repo")
    if not _weights_in(model, allow_pickle):
        inside = model.relative_to(snapshot).as_posix()
        here = hub.list_files(repo_id, dataclasses.replace(options, subfolder=None if inside == "." else inside))
        wanted = DIFFUSERS_WEIGHTS[0] if diffusers_folder(model) is not None else WEIGHTS_NAME
        pickles = sorted(f for f in here if f in PICKLE_NAMES or f.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise WeightsError(
                f"{where}: holds only pickle weights ({', '.join(pickles)}), no {wanted}; imgtok loads safetensors "
                f"only. Convert explicitly with `imgtok convert {repo_id} OUT --allow-pickle` (unpickling can run code)"
            )
        other = sorted(f for f in here if f.endswith(".safetensors"))
        also = f" (it has {', '.join(other)})" if other else ""
        raise hub.HubError(f"{where}: the repo has no {wanted}{also}")
    return snapshot / prefix if prefix else snapshot


# --- read: a local path -> a Checkpoint ------------------------------------------------------------
def _is_diffusers_state(keys) -> bool:
    return any(k.startswith("encoder.down_blocks.") for k in keys)


def _is_imgtok_state(keys) -> bool:
    return "quantizer.codebook" in keys


# The layouts of single state-dict files, told apart by their key names (first match wins).
STATE_LAYOUTS = (("llamagen", is_llamagen_layout), ("diffusers", _is_diffusers_state),
                 ("imgtok", _is_imgtok_state), ("taming", is_taming_layout))


def read_state_dict_file(path: Path, allow_pickle: bool = False,
                         config: AutoencoderConfig | None = None) -> Checkpoint:
    """A single weights file with taming / LDM / LlamaGen / diffusers / imgtok key names.

    Args:
        path: ``.safetensors`` (read directly) or a pickle (``.ckpt``, ``.pt``, ``.pth``, ``.bin``).
        allow_pickle: explicit opt-in to read pickles (through ``safe_unpickle``: no code from the file runs).
        config: imgtok config to use; required for imgtok-layout files and diffusers files without config.
    """
    state = read_state_file(path, allow_pickle)
    source = str(path)
    layout = next((name for name, test in STATE_LAYOUTS if test(list(state))), None)
    if layout == "llamagen":
        return read_llamagen_state(state, source, config)
    if layout == "taming":
        return read_taming_state(state, source, config)
    if layout is None:
        sample = ", ".join(sorted(state)[:4])
        raise WeightsError(f"{source}: unrecognised layout (first keys: {sample}); imgtok converts diffusers "
                           "AutoencoderKL/VQModel, taming VQGAN, LDM AutoencoderKL and LlamaGen VQ weights")
    if config is None:
        beside = "no config.json beside it; convert the whole folder, or pass --config with an imgtok config"
        raise ConfigError(f"{source}: {layout} key names but " + (
            beside if layout == "diffusers" else "no config; pass --config PRESET_OR_JSON"))
    if layout == "diffusers":
        return Checkpoint(config, to_imgtok_state(state, len(config.channel_mult), source), source, "diffusers")
    return Checkpoint(config, state, source, "imgtok")


def _single_weights_file(folder: Path) -> Path:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(files) != 1:
        what = "no weights file" if not files else f"several weights files ({', '.join(p.name for p in files)})"
        raise FileNotFoundError(f"{folder}: no {CONFIG_NAME} (an imgtok or diffusers model folder), and {what}; "
                                "pass the file itself")
    return files[0]


def _read_imgtok_folder(folder: Path, expected_type: str | None, allow_pickle: bool) -> Checkpoint:
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    config = AutoencoderConfig.load(config_path)
    if expected_type is not None and config.model_type != expected_type:
        raise ConfigError(f"{config_path}: holds a {config.model_type!r} model, expected {expected_type!r}")
    if weights_path.is_file():
        return Checkpoint(config, read_weights(weights_path), str(weights_path), foreign=False)
    pickles = [name for name in PICKLE_NAMES if (folder / name).is_file()]
    if pickles and allow_pickle:
        path = folder / pickles[0]
        return Checkpoint(config, read_state_file(path, allow_pickle), str(path), foreign=False)
    if pickles:
        raise WeightsError(
            f"{folder}: holds only pickle weights ({', '.join(pickles)}); imgtok loads safetensors only. "
            f"Convert them explicitly with `imgtok convert {folder} OUT --allow-pickle` (pickle can run code)"
        )
    raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME}")


def read_checkpoint(path: str | Path, expected_type: str | None = None, allow_pickle: bool = False,
                    config: AutoencoderConfig | None = None) -> Checkpoint:
    """The checkpoint in a local folder (imgtok, diffusers model or pipeline) or weights file.

    Args:
        path: a model folder, a pipeline folder (its ``vae/``), or a single weights file.
        expected_type: "vq", "kl" or "ae" to refuse another family with a clear message.
        allow_pickle: read pickled weights (``imgtok convert --allow-pickle`` only: a pickle can run code).
        config: an imgtok config for sources that ship none (state-dict files); a folder brings its own.
    """
    path = Path(path)
    if path.is_dir() and _model_folder(path) is not None:
        if config is not None:
            raise ConfigError(f"{path}: a model folder carries its own {CONFIG_NAME}; drop --config")
        if diffusers_folder(path) is not None:
            return read_diffusers_folder(path, expected_type, allow_pickle)
        return _read_imgtok_folder(path, expected_type, allow_pickle)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES):
        raise FileNotFoundError(f"{path}: expected a model folder ({CONFIG_NAME} + {WEIGHTS_NAME}) or a weights "
                                f"file ({', '.join(WEIGHT_SUFFIXES)}), got another file")
    checkpoint = read_state_dict_file(path if path.is_file() else _single_weights_file(path), allow_pickle, config)
    if expected_type is not None and checkpoint.config.model_type != expected_type:
        raise ConfigError(f"{checkpoint.source}: holds a {checkpoint.config.model_type!r} model, "
                          f"expected {expected_type!r}")
    return checkpoint


# --- the whole path ---------------------------------------------------------------------------------
def load_checkpoint(name_or_path: str | Path | None = None, options: HubOptions = HubOptions(),
                    expected_type: str | None = None, allow_pickle: bool = False,
                    config: AutoencoderConfig | None = None) -> Checkpoint:
    """Resolve ``name_or_path`` (folder, file, Hub repo id, or None: the bundled default) and read it.

    Args:
        name_or_path: see ``resolve``.
        options: Hub revision / subfolder / cache_dir / token / local_files_only.
        expected_type: the family the caller needs ("vq", "kl", "ae"); also picks the bundled default.
        allow_pickle, config: see ``read_checkpoint`` (the converter's options).
    """
    path = resolve(name_or_path, options, expected_type or "vq", allow_pickle)
    try:
        return read_checkpoint(path, expected_type, allow_pickle, config)
    except (WeightsError, ConfigError) as err:
        if name_or_path is None or Path(name_or_path).exists() or resolve_shipped(name_or_path) is not None:
            raise
        # Downloaded: name the repo, not only the cache path the file landed in.
        where = f"{name_or_path}" + (f"@{options.revision}" if options.revision else "")
        raise type(err)(f"Hub repo {where}: {err}") from err


def load_model(name_or_path: str | Path | None = None, options: HubOptions = HubOptions(),
               expected_type: str | None = None) -> torch.nn.Module:
    """The built model (eval mode) of a folder, file, Hub repo id or the bundled default."""
    return build(load_checkpoint(name_or_path, options, expected_type))


def load_folder(folder: str | Path, expected_type: str | None = None) -> torch.nn.Module:
    """The built model of a local folder (or weights file); see ``read_checkpoint``."""
    return build(read_checkpoint(folder, expected_type))


def push_model_folder(
    folder: str | Path,
    repo_id: str,
    info: ModelCardInfo | None = None,
    private: bool = False,
    commit_message: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    extra_files: dict[str, str | Path | bytes] | None = None,
):
    """Push an existing model folder as it is (weights byte-identical) with a freshly rendered card.

    The folder is loaded strictly first, so a broken export is refused before anything is uploaded.

    Args:
        folder: a model folder (config.json + model.safetensors), e.g. a training run's export.
        repo_id: "namespace/name".
        info: a ``ModelCardInfo`` (datasets, metrics, training notes) for the card.
        private, commit_message, revision, token, extra_files: as in ``hub.push_folder``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    model = load_folder(folder)
    info = info or ModelCardInfo()
    card = render_model_card(model.config, dataclasses.replace(info, repo_id=info.repo_id or repo_id),
                             num_parameters=sum(p.numel() for p in model.parameters()))
    return hub.push_folder(
        folder, repo_id, model_card=card, private=private, commit_message=commit_message, revision=revision,
        token=token, extra_files=extra_files,
    )
