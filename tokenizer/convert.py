"""``imgtok convert SRC DST``: another library's autoencoder -> an imgtok folder (config.json + model.safetensors).

SRC may be a diffusers folder (or pipeline folder with ``vae/``), a Hub repo id of one, an imgtok folder,
or a single weights file: taming-transformers VQGAN / LDM ``.ckpt`` (Lightning), LlamaGen ``.pt``, or a
``.safetensors`` with any of these layouts. The format is recognised from files and key names.

It reads SRC through the same path as ``from_pretrained`` (``tokenizer.pretrained.load_checkpoint``), with
the two options only the converter has: ``allow_pickle`` and ``config``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoints import WEIGHTS_NAME, WeightsError, build, read_weights, save_folder
from .config import AutoencoderConfig
from .hub import HubOptions
from .interop.common import config_from_arg
from .pretrained import load_checkpoint


@dataclass
class ConvertResult:
    """What ``convert`` wrote: the folder, the model's config, the source format and dropped keys."""

    folder: Path
    config: AutoencoderConfig
    source_format: str
    parameters: int
    dropped: list[str]
    notes: list[str]


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
    checkpoint = load_checkpoint(src, HubOptions(revision=revision, subfolder=subfolder), allow_pickle=allow_pickle,
                                 config=config)
    model = build(checkpoint)
    folder = save_folder(model, dst)
    written = read_weights(folder / WEIGHTS_NAME)
    for key, value in model.state_dict().items():
        if not torch.equal(written[key], value.cpu()):
            raise WeightsError(f"{folder}: {key} differs after writing; the output is not trustworthy")
    params = sum(p.numel() for p in model.parameters())
    return ConvertResult(folder, model.config, checkpoint.source_format, params, checkpoint.dropped, checkpoint.notes)


def _describe(config: AutoencoderConfig) -> str:
    if config.model_type == "vq":
        q = config.quantizer
        code = f"{q.codebook_size} codes x {q.code_dim or config.latent_channels}-d" + (
            ", l2-normalised" if q.l2_normalize else "")
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
