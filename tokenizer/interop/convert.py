"""``imgtok convert SRC DST``: another library's autoencoder -> an imgtok folder (config.json + model.safetensors).

SRC may be a diffusers folder (or pipeline folder with ``vae/``), a Hub repo id of one, an imgtok folder,
or a single weights file: taming-transformers VQGAN / LDM ``.ckpt`` (Lightning), LlamaGen ``.pt``, or a
``.safetensors`` with any of these layouts. The format is recognised from files and key names.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import AutoencoderConfig, ConfigError
from ..pretrained import WEIGHTS_NAME, WeightsError, load_folder, read_weights, save_folder
from . import diffusers as dfs
from .common import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIX,
    Imported,
    build_loaded,
    config_from_arg,
    read_state_file,
)
from .llamagen import is_llamagen_layout, load_llamagen_state
from .taming import is_taming_layout, load_taming_state

WEIGHT_SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)


@dataclass
class ConvertResult:
    """What ``convert`` wrote: the folder, the model's config, the source format and dropped keys."""

    folder: Path
    config: AutoencoderConfig
    source_format: str
    parameters: int
    dropped: list[str]
    notes: list[str]


def _single_weights_file(folder: Path) -> Path:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(files) != 1:
        what = "no weights file" if not files else f"several weights files ({', '.join(p.name for p in files)})"
        raise FileNotFoundError(f"{folder}: not a diffusers or imgtok folder, and {what}; pass the file itself")
    return files[0]


def load_state_file(path: Path, allow_pickle: bool = False, config: AutoencoderConfig | None = None) -> Imported:
    """A single weights file with taming / LDM / LlamaGen / diffusers / imgtok key names -> imgtok.

    Args:
        path: ``.safetensors`` (read directly) or a pickle (``.ckpt``, ``.pt``, ``.pth``, ``.bin``).
        allow_pickle: explicit opt-in to read pickles (through ``safe_unpickle``: no code from the file runs).
        config: imgtok config to use; required for imgtok-layout files and diffusers files without config.
    """
    state = read_state_file(path, allow_pickle)
    source = str(path)
    keys = list(state)
    if is_llamagen_layout(keys):
        return load_llamagen_state(state, source, config)
    if any(k.startswith("encoder.down_blocks.") for k in keys):
        if config is None:
            raise ConfigError(f"{source}: diffusers key names but no config.json beside it; convert the whole "
                              "folder, or pass --config with an imgtok config")
        state = dfs.to_imgtok_state(state, len(config.channel_mult), source)
        return Imported(build_loaded(config, state, source), "diffusers")
    if "quantizer.codebook" in state:  # imgtok's own layout, saved without its config.json
        if config is None:
            raise ConfigError(f"{source}: imgtok key names but no config; pass --config PRESET_OR_JSON")
        return Imported(build_loaded(config, state, source), "imgtok")
    if is_taming_layout(keys):
        return load_taming_state(state, source, config)
    sample = ", ".join(sorted(keys)[:4])
    raise WeightsError(f"{source}: unrecognised layout (first keys: {sample}); imgtok converts diffusers "
                       "AutoencoderKL/VQModel, taming VQGAN, LDM AutoencoderKL and LlamaGen VQ weights")


def load_checkpoint(src: str | Path, allow_pickle: bool = False, config: AutoencoderConfig | None = None,
                    revision: str | None = None, subfolder: str | None = None) -> Imported:
    """Any supported source (folder, file, Hub repo id) as an imgtok model; see the module docstring."""
    path = Path(src)
    if not path.exists():
        if str(src).endswith(WEIGHT_SUFFIXES) or str(src).startswith((".", "/")):
            raise FileNotFoundError(f"{src}: no such file or folder")
        from .hub_fetch import download_diffusers_folder

        path = download_diffusers_folder(str(src), revision=revision, subfolder=subfolder,
                                         include_pickle=allow_pickle)
        if path is None:
            from ..pretrained import resolve_folder

            path = resolve_folder(str(src), "vq", revision=revision, subfolder=subfolder)
    elif subfolder:
        path = path / subfolder
    if path.is_file():
        return load_state_file(path, allow_pickle, config)
    if dfs.diffusers_folder(path) is not None:
        if config is not None:
            raise ConfigError(f"{path}: a diffusers folder carries its own config.json; drop --config")
        return dfs.load_diffusers_folder(path, allow_pickle=allow_pickle)
    if (path / "config.json").is_file() and (path / WEIGHTS_NAME).is_file():
        return Imported(load_folder(path), "imgtok")
    return load_state_file(_single_weights_file(path), allow_pickle, config)


def convert(src: str | Path, dst: str | Path, allow_pickle: bool = False,
            config: AutoencoderConfig | str | None = None, revision: str | None = None,
            subfolder: str | None = None) -> ConvertResult:
    """Load ``src`` in any supported format and write it to ``dst`` as an imgtok folder.

    The written folder is read back and compared tensor by tensor with the loaded model.

    Args:
        src: folder, weights file or Hub repo id.
        dst: output folder (created).
        allow_pickle: read pickled checkpoints at all (through ``safe_unpickle``: no code from the file runs).
        config: imgtok config (or preset name / JSON path) for formats that ship none.
        revision, subfolder: for Hub repos and pipeline folders.
    """
    if isinstance(config, str):
        config = config_from_arg(config)
    imported = load_checkpoint(src, allow_pickle=allow_pickle, config=config, revision=revision, subfolder=subfolder)
    folder = save_folder(imported.model, dst)
    written = read_weights(folder / WEIGHTS_NAME)
    for key, value in imported.model.state_dict().items():
        if not torch.equal(written[key], value.cpu()):
            raise WeightsError(f"{folder}: {key} differs after writing; the output is not trustworthy")
    params = sum(p.numel() for p in imported.model.parameters())
    return ConvertResult(folder, imported.model.config, imported.source_format, params, imported.dropped,
                         imported.notes)


def _describe(config: AutoencoderConfig) -> str:
    if config.model_type == "vq":
        code = f"{config.codebook_size} codes x {config.code_dim or config.latent_channels}-d" + (
            ", l2-normalised" if config.l2_normalize else "")
    else:
        code = (f"{config.latent_channels} latent channels, scaling {config.scaling_factor:g}, "
                f"shift {config.shift_factor:g}")
    return f"{config.model_type!r}, f{config.downsample_factor}, {code}"


def cmd_convert(args: argparse.Namespace) -> int:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = convert(args.src, args.dst, allow_pickle=args.allow_pickle, config=args.config,
                             revision=args.revision, subfolder=args.subfolder)
        finally:  # what was said about the file matters most when the conversion then fails
            for w in caught:
                print(f"imgtok convert: warning: {w.message}")
    print(f"{args.src}: {result.source_format} -> {result.folder} ({_describe(result.config)}, "
          f"{result.parameters:,} parameters)")
    if result.dropped:
        prefixes = sorted({k.split(".")[0] + "." for k in result.dropped})
        print(f"  dropped {len(result.dropped)} non-autoencoder key(s): {', '.join(p + '*' for p in prefixes)}")
    for note in result.notes:
        print(f"  note: {note}")
    return 0


def add_convert_command(sub) -> None:
    """Register ``imgtok convert`` on the CLI's subparsers object."""
    help_text = "convert a diffusers / taming / LDM / LlamaGen checkpoint into an imgtok model folder"
    description = help_text + ". " + __doc__.split("\n\n")[1].replace("``", "")
    p = sub.add_parser("convert", help=help_text, description=description)
    p.add_argument("src", help="folder, weights file (.safetensors, .ckpt, .pt, .pth, .bin) or Hub repo id")
    p.add_argument("dst", help="output folder (config.json + model.safetensors)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read pickled checkpoints (.ckpt/.pt/.pth/.bin), through a restricted unpickler: "
                        "tensors are rebuilt, every other object (Lightning callbacks, hyper-parameters) is kept "
                        "as an inert placeholder and listed; no code named by the file runs")
    p.add_argument("--config", default=None,
                   help="imgtok preset name or config JSON for formats without a config (default: read the "
                        "sizes off the tensor shapes)")
    p.add_argument("--subfolder", default=None, help="subfolder of SRC holding the model (e.g. vae)")
    p.add_argument("--revision", default=None, help="Hub revision when SRC is a repo id")
    p.set_defaults(func=cmd_convert)
