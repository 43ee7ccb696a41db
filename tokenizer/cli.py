"""``imgtok`` command line: encode, decode, reconstruct, info (and the commands other modules register).

Each command is a thin front end over the library: argument parsing, printing, no logic of its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


MODEL_HELP = ("imgtok-vq-f8 / imgtok-kl-f8 (aliases bundled / bundled-kl), a model folder or a Hub repo id "
              "(default: imgtok-vq-f8)")


def _load(args, kind: str | None = None):
    from .api import ImageTokenizer, ImageVAE, load_any

    if kind == "vq":
        model = ImageTokenizer.from_pretrained(args.model, device=args.device)
    elif kind == "kl":
        model = ImageVAE.from_pretrained(args.model, device=args.device)
    else:
        model = load_any(args.model, device=args.device)
    print(f"imgtok: running on {model.device}", file=sys.stderr)  # the default is the GPU when there is one
    return model


def cmd_encode(args) -> int:
    from .ids_file import save_ids
    from .image_io import read_image

    tok = _load(args, "vq")
    image = read_image(args.image)
    height, width = image.shape[-2:]
    ids = tok.encode(image, tile_size=args.tile_size).cpu()
    path = save_ids(args.output, ids.numpy(), tok.vocab_size, (height, width), tok.identity)
    h, w = ids.shape[:2]
    deep = f" x {tok.depth} (depths)" if tok.depth > 1 else ""
    print(f"{args.image}: {height} x {width} (H x W) -> grid {h} x {w}{deep} = {ids.numel()} tokens, "
          f"vocab {tok.vocab_size}, {tok.identity.label} -> {path}")
    if path.suffix == ".npy":
        print(f"note: {path} holds the ids only, not the image size: decode with --size {height} {width} "
              "(or write .npz, which keeps it)")
    return 0


def cmd_decode(args) -> int:
    from .ids_file import load_ids
    from .image_io import save_image
    from .shipped import mismatch

    tok = _load(args, "vq")
    data = load_ids(args.ids)
    grid = "(h, w)" if tok.depth == 1 else f"(h, w, {tok.depth})"
    if data.ids.ndim != (2 if tok.depth == 1 else 3):  # the model's depth tells one deep grid from a batch
        raise ValueError(f"{args.ids}: ids of shape {data.ids.shape}; imgtok decode takes one {grid} grid for this "
                         "model (decode a batch with ImageTokenizer.decode)")
    if data.model is not None and (text := mismatch(data.model, tok.identity)):
        print(f"imgtok decode: warning: {args.ids}: {text}", file=sys.stderr)
    size = tuple(args.size) if args.size else data.size
    try:  # the API checks dtype (float ids are refused, never cast), range and size
        image = tok.decode(data.ids, size=size, tile_size=args.tile_size)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{args.ids}: {err}") from None
    save_image(image, args.output)
    h, w = data.ids.shape[:2]
    print(f"{args.ids}: grid {h} x {w} -> image {image.shape[1]} x {image.shape[2]} (H x W) -> {args.output}")
    if size is None:
        print(f"note: {args.ids} holds no image size: this is the padded grid size; pass --size H W to crop")
    return 0


def cmd_reconstruct(args) -> int:
    from .api import ImageTokenizer
    from .image_io import read_image, save_image
    from .metrics import psnr
    from .tiling import as_float_image

    model = _load(args)
    image = read_image(args.image, keep_uint8=True)  # 8-bit pixels stay uint8: converted tile by tile
    recon = model.reconstruct(image, tile_size=args.tile_size)
    image = as_float_image(image)
    save_image(recon, args.output)
    height, width = image.shape[-2:]
    h, w = model.grid_size(height, width)
    if isinstance(model, ImageTokenizer):
        bpp = model.bits_per_pixel(height, width)
        deep = f" x {model.depth} (depths)" if model.depth > 1 else ""
        what = f"grid {h} x {w}{deep} tokens (vocab {model.vocab_size}), {bpp:.4f} bits per pixel"
    else:
        what = f"latent {model.latent_channels} x {h} x {w} (continuous)"
    print(f"{args.image}: {height} x {width} (H x W), {what}, PSNR {float(psnr(image, recon)):.2f} dB -> {args.output}")
    return 0


def cmd_info(args) -> int:
    from .api import ImageTokenizer
    from .metrics import bits_per_pixel

    if args.model_arg and args.model and args.model_arg != args.model:
        raise ValueError(f"two models given ({args.model_arg!r} and --model {args.model!r}); give one")
    args.model = args.model or args.model_arg
    model = _load(args)
    cfg = model.config
    params = sum(p.numel() for p in model.model.parameters())
    info = {
        **model.identity.to_dict(),  # name, version, sha256 of the weights
        "source": model.source,
        "model_type": cfg.model_type,
        "downsample_factor": cfg.downsample_factor,
        "parameters": params,
        "config": cfg.to_dict(),
    }
    if isinstance(model, ImageTokenizer):
        info["vocab_size"] = model.vocab_size
        info["bits_per_token"] = model.bits_per_token
        info["depth"] = model.depth
        info["quantizer"] = cfg.quantizer.kind
        info["bits_per_pixel"] = bits_per_pixel(model.depth, model.vocab_size, cfg.downsample_factor**2)  # per f x f pixels
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgtok", description="Image tokenizers: images <-> discrete token ids.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = add("encode", cmd_encode, "encode an image to a grid of token ids (.npz: ids, image size, model)")
    p.add_argument("image")
    p.add_argument("-o", "--output", required=True,
                   help="output file: .npz (ids, the image's height and width, the model) or .npy (ids only)")
    p = add("decode", cmd_decode, "decode a grid of token ids (.npz or .npy) to an image")
    p.add_argument("ids")
    p.add_argument("-o", "--output", required=True, help="output image file")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="height then width to crop to (default: the size stored in the .npz)")
    p = add("reconstruct", cmd_reconstruct, "encode and decode an image; print grid, bits per pixel and PSNR")
    p.add_argument("image")
    p.add_argument("-o", "--output", required=True, help="output image file")
    p = add("info", cmd_info, "print a model's config, vocabulary and size")
    p.add_argument("model_arg", nargs="?", default=None, metavar="MODEL", help=MODEL_HELP + " (or --model)")

    for name, p in sub.choices.items():
        p.add_argument("--model", default=None, help=MODEL_HELP)
        if name != "info":
            p.add_argument("--tile-size", type=int, default=None, metavar="PX",
                           help="tile side in pixels (default: tile images above 1 MiP in 512 px tiles; 0: never)")
        p.add_argument("--device", default=None, help="torch device, e.g. cuda:1 or cpu (default: cuda when available, else cpu)")
    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Other modules' commands (tokenize, convert, ...) add themselves here: each takes the subparsers object.
_EXTRA_COMMANDS: list = []


def _register_convert(sub) -> None:
    from .convert import add_convert_command  # imported lazily: keeps start-up light

    add_convert_command(sub)


_EXTRA_COMMANDS.append(_register_convert)


def _register_tokenize(sub) -> None:
    from .batch_tokenize import add_cli_command  # imported lazily, as above

    add_cli_command(sub)


_EXTRA_COMMANDS.append(_register_tokenize)


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError
    from .image_io import ImageError
    from .pretrained import WeightsError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ImageError, ConfigError, WeightsError, ValueError, TypeError, OSError) as err:
        print(f"imgtok {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
