"""Train a small decoder-only transformer (a token prior) on image token shards, sample it, decode the samples.

Proves that a tokenizer's ids are learnable: the validation cross-entropy, in bits per image code, is
compared against the unigram entropy of the codes (what a model that ignores context would reach) and
against log2(vocabulary). Sequences follow ``tokenizer.TokenLayout`` (raster order, end-of-row tokens).

    # The whole pipeline on made-up images (vq-tiny tokenizer, batch tokenizer, prior, samples): < 2 min on a CPU
    python scripts/train_prior.py --smoke --out runs/prior-smoke

    # Random crops of photos -> token shards (the batch tokenizer) -> prior -> samples, all under --out
    python scripts/train_prior.py --crops-from photos/ --model imgtok-vq-f8 \
        --out runs/prior --crop-size 128 --crops-per-photo 40 --val-photos 5 --max-minutes 10

    # Shards that already exist (scripts/tokenize_dataset.py output); several processes with torchrun
    python scripts/train_prior.py --tokens TOKENS --out runs/prior
    torchrun --nproc_per_node 2 scripts/train_prior.py --tokens TOKENS --out runs/prior

    # More samples from a trained prior, other settings
    python scripts/train_prior.py --sample-from runs/prior/prior --out runs/prior/more --num-samples 16 --top-k 50

The run folder gets log.txt, metrics.json (val bits per code, unigram entropy, history), checkpoints/
(safetensors + JSON; --resume continues from the newest), prior/ (final weights + config.json) and
samples/ (PNGs and grids.safetensors).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tokenizer import ImageTokenizer
from tokenizer.batch_tokenize import TokenizeConfig, tokenize_dataset
from tokenizer.image_io import save_image
from train.data import RandomCrops, list_images
from train.prior import PRIOR_SIZES, sample_grids
from train.prior_loop import PriorTrainConfig, load_prior, run, write_samples


def make_smoke_images(folder: Path, count: int, size: int, seed: int = 0) -> None:
    """``count`` small RGB images with learnable structure: two-colour gradients crossed by a bar."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)  # (S, S) each
    for i in range(count):
        a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        ramp = xx if i % 2 else yy
        image = a * (1 - ramp[..., None]) + b * ramp[..., None]  # (S, S, 3)
        lo = rng.integers(0, size // 2)
        bar = slice(lo, lo + size // 4)
        if i % 3 == 0:
            image[bar, :] = rng.uniform(0, 1, 3)
        else:
            image[:, bar] = rng.uniform(0, 1, 3)
        Image.fromarray((image * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")


def write_crops(photos: list[str], folder: Path, crop_size: int, per_photo: int, seed: int) -> int:
    """``per_photo`` random rescaled crops of each photo (train.data.RandomCrops' scale augmentation, no flips).

    Files that exist are kept, so a rerun is cheap and the crops stay the same.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for p, path in enumerate(photos):
        # One RandomCrops per photo so that every photo gets exactly per_photo crops.
        crops = RandomCrops([path], crop_size, seed=seed + p, hflip=False, cache=True)
        for j in range(per_photo):
            target = folder / f"{Path(path).stem}_{j:03d}.png"
            if not target.exists():
                save_image(crops[(0, j)], target)
                written += 1
    return written


def tokenize(images: Path, out: Path, model: str, size: int, batch_size: int, shard_size: int,
             tok: ImageTokenizer | None = None) -> None:
    result = tokenize_dataset(
        TokenizeConfig(input=str(images), output=str(out), model=model, size=size, batch_size=batch_size,
                       workers=0, shard_size=shard_size, progress=False, rank=0, world_size=1),
        tokenizer=tok,
    )
    print(f"[prior] tokenized {images} -> {out}: {result.num_inputs} inputs, {result.shards_written} shards "
          f"written, {result.shards_skipped} already done, {result.errors} errors, {result.seconds:.1f}s", flush=True)


def wait_for(paths: list[Path], timeout: float = 3600.0) -> None:
    """Ranks other than 0 wait for rank 0's data preparation (the merged index files) under torchrun."""
    started = time.time()
    while not all(p.exists() for p in paths):
        if time.time() - started > timeout:
            raise TimeoutError(f"waited {timeout:.0f}s for {', '.join(map(str, paths))}")
        time.sleep(2.0)


DEFAULTS = dict(prior="prior-s", steps=2000, batch_size=16, lr=1e-3, warmup_steps=100, val_fraction=0.05,
                eval_every=200, checkpoint_every=500, num_samples=8)
# Small and fast: the smoke run must finish in well under two minutes on a CPU.
SMOKE_DEFAULTS = dict(prior="prior-tiny", steps=150, batch_size=16, lr=3e-3, warmup_steps=10, val_fraction=0.2,
                      eval_every=50, checkpoint_every=150, num_samples=4)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_argument_group("data (one of --tokens, --crops-from, --smoke)")
    src.add_argument("--tokens", help="folder of token shards (scripts/tokenize_dataset.py output)")
    src.add_argument("--val-tokens", help="separate shard folder for validation (default: hold out --val-fraction)")
    src.add_argument("--crops-from", help="folder of photos: write random crops and tokenize them first")
    src.add_argument("--smoke", action="store_true", help="made-up images + a vq-tiny tokenizer, a few steps")
    src.add_argument("--sample-from", help="no training: sample a trained prior folder (RUN/prior) into --out")
    ap.add_argument("--sample-size", type=int, nargs=2, metavar=("H", "W"),
                    help="--sample-from: grid size to sample (default: the commonest training shape)")
    src.add_argument("--model", help="tokenizer for --crops-from (imgtok-vq-f8, a folder or a Hub repo id; "
                                     "default imgtok-vq-f8)")
    src.add_argument("--crop-size", type=int, default=128)
    src.add_argument("--crops-per-photo", type=int, default=40)
    src.add_argument("--val-photos", type=int, default=5, help="--crops-from: the last N photos only validate")
    ap.add_argument("--out", help="run folder: everything the run writes goes inside it")
    ap.add_argument("--tokenizer", help="decodes the samples (default: the model named in the shards' metadata)")
    # Defaults of these depend on --smoke (see DEFAULTS / SMOKE_DEFAULTS).
    ap.add_argument("--prior", choices=sorted(PRIOR_SIZES), help="model size (default prior-s; smoke prior-tiny)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch-size", type=int, help="sequences per process and step")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--warmup-steps", type=int)
    ap.add_argument("--val-fraction", type=float, help="images held out when there is no --val-tokens")
    ap.add_argument("--eval-every", type=int)
    ap.add_argument("--checkpoint-every", type=int)
    ap.add_argument("--num-samples", type=int)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--max-minutes", type=float, default=0.0, help="stop training after this long (0: all steps)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int)
    ap.add_argument("--top-p", type=float)
    ap.add_argument("--size-prefix", action="store_true", help="TokenLayout: grid-size tokens after <|image_start|>")
    ap.add_argument("--no-eol", action="store_true", help="TokenLayout: no end-of-row tokens (needs --size-prefix)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "none"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    args = ap.parse_args(argv)
    if sum(bool(x) for x in (args.tokens, args.crops_from, args.smoke, args.sample_from)) != 1:
        ap.error("give exactly one of --tokens, --crops-from, --smoke, --sample-from")
    if not args.out:
        ap.error("--out is required: the run folder, where everything the run writes goes")
    for name, value in (SMOKE_DEFAULTS if args.smoke else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def sample_only(args: argparse.Namespace) -> int:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, layout, config = load_prior(args.sample_from, device)
    h, w = args.sample_size or config["sample_shape"]
    generator = torch.Generator(device=device).manual_seed(args.seed)
    grids = sample_grids(model, layout, args.num_samples, h, w, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, generator=generator)
    tokenizer = args.tokenizer or config.get("tokenizer")
    if not tokenizer:
        raise SystemExit(f"{args.sample_from}: names no tokenizer (the shards' metadata named none); pass --tokenizer")
    paths = write_samples(grids.cpu(), tokenizer, args.out, device)
    print(f"[prior] {len(paths)} samples of {h} x {w} codes in {args.out}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sample_from:
        return sample_only(args)
    rank = int(os.environ.get("RANK", 0))
    tokens, val_tokens, tokenizer = args.tokens, args.val_tokens, args.tokenizer
    if args.smoke:
        out = Path(args.out)
        tokens = out / "tokens"
        if rank == 0:
            make_smoke_images(out / "images", count=128, size=16)
            torch.manual_seed(args.seed)
            tok = ImageTokenizer.from_preset("vq-tiny")  # untrained: ids still carry the images' structure
            model_dir = tok.save_pretrained(out / "vq-tiny")
            tokenize(out / "images", tokens, str(model_dir), size=16, batch_size=32, shard_size=32, tok=tok)
        else:
            wait_for([tokens / "index.jsonl"])
    elif args.crops_from:
        out = Path(args.out)
        photos = list_images([args.crops_from])
        if not 0 < args.val_photos < len(photos):
            raise SystemExit(f"--val-photos {args.val_photos}: expected 1..{len(photos) - 1} ({len(photos)} photos)")
        split = {"train": photos[: -args.val_photos], "val": photos[-args.val_photos :]}
        if rank == 0:
            tok = ImageTokenizer.from_pretrained(args.model)
            for name, paths in split.items():
                made = write_crops(paths, out / "crops" / name, args.crop_size, args.crops_per_photo, args.seed)
                print(f"[prior] {name}: {len(paths)} photos, {made} new crops of {args.crop_size}px", flush=True)
                tokenize(out / "crops" / name, out / "tokens" / name, args.model, args.crop_size, 32, 1000, tok=tok)
        else:
            wait_for([out / "tokens" / name / "index.jsonl" for name in split])
        tokens, val_tokens = out / "tokens" / "train", out / "tokens" / "val"
    else:
        out = Path(args.out)

    cfg = PriorTrainConfig(
        tokens=str(tokens), out=str(out), prior=args.prior, tokenizer=tokenizer, eol=not args.no_eol,
        size_prefix=args.size_prefix, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, val_fraction=args.val_fraction,
        val_tokens=str(val_tokens) if val_tokens else None, eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every, max_minutes=args.max_minutes, num_samples=args.num_samples,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, device=args.device,
        amp=args.amp, threads=args.threads,
    )
    result = run(cfg, resume=args.resume)
    if rank == 0:
        print(f"[prior] val {result.val_bits_per_code:.3f} bits/code "
              f"(before training: {result.first_val_bits_per_code:.3f}); "
              f"unigram entropy {result.unigram_entropy_bits:.3f} bits; uniform {result.uniform_bits:.3f} bits; "
              f"{len(result.samples)} samples; {result.seconds:.1f}s training; run folder {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
