"""Quality per CPU-minute: train several recipes for the same minutes, interleaved, and evaluate them.

    python scripts/bench_recipe.py --data photos/train --val-data photos/val --minutes 30 --points 10 20 30 \\
        --recipe "base=--preset vq-f8-cpu --set crop_size=128 --set lr=1e-3" \\
        --recipe "lr5e-4=--preset vq-f8-cpu --set crop_size=128 --set lr=5e-4" --out recipes.jsonl

Each ``--recipe NAME=ARGS`` is a ``python -m train`` command line (preset, ``--set`` overrides,
``--init-from``...); ``--data`` and ``--val-data`` are shared. The recipes train in turns of
``--slice-seconds`` each (round robin), so a slow spell of a noisy machine costs every recipe alike; only
training time counts, never evaluation. Time is the process's CPU time by default (``--clock cpu``: with
``--threads 1`` that is CPU-minutes exactly, and other processes on the machine, or pausing this one, do not
change it); ``--clock wall`` counts wall time instead (what a user with the machine to themselves waits).
When a recipe's training time reaches one of ``--points`` (minutes), its EMA weights are evaluated on the held-out photos at full resolution: PSNR,
shift-tolerant LPIPS (alex, if the ``perceptual`` extra is installed), mean CIEDE2000 colour difference,
and for tokenizers code usage and perplexity over the held-out ids. One JSON line per point is appended to
``--out``; a table is printed at the end. Compare recipes only within one invocation.

``--export DIR`` saves each recipe's final EMA weights as a model folder (what ``scripts/ship_model.py``
takes); ``--keep-checkpoint`` also saves its final training checkpoint to ``DIR/NAME-checkpoint`` (weights,
weight EMA, discriminator and optimizer state, the run's configs), so that the next run's
``--init-from DIR/NAME-checkpoint`` continues the adversarial game instead of restarting the discriminator.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tokenizer.api import API_CLASSES
from tokenizer.colour import colour_difference
from tokenizer.image_io import read_image
from tokenizer.inputs import list_images
from tokenizer.metrics import CodebookHistogram, psnr
from train.__main__ import config_from_argv
from train.loop import Trainer

@dataclass
class Contender:
    name: str
    trainer: Trainer
    step: int = 0
    seconds: float = 0.0  # training time so far (CPU or wall, --clock)
    points: list[float] = field(default_factory=list)  # minutes still to evaluate at


def parse_recipe(spec: str) -> tuple[str, list[str]]:
    name, sep, args = spec.partition("=")
    if not sep or not name.strip():
        raise SystemExit(f"--recipe {spec!r}: expected NAME=ARGS, e.g. 'base=--preset vq-f8-cpu'")
    return name.strip(), shlex.split(args)


def load_held_out(sources: list[str], limit: int) -> list[tuple[str, torch.Tensor]]:
    paths = list_images(sources)[:limit] if limit > 0 else list_images(sources)
    if not paths:
        raise SystemExit(f"--val-data {sources}: no images")
    return [(Path(str(p)).name, read_image(p)) for p in paths]


@torch.no_grad()
def evaluate(trainer: Trainer, images: list[tuple[str, torch.Tensor]], perceptual) -> dict[str, float]:
    """The EMA weights on the held-out photos, through the public API as a user would run them."""
    model = copy.deepcopy(trainer.ema).float().eval()
    return evaluate_model(API_CLASSES[model.config.model_type](model), images, perceptual)


@torch.no_grad()
def evaluate_model(api, images: list[tuple[str, torch.Tensor]], perceptual) -> dict[str, float]:
    """Mean PSNR, CIEDE2000, ST-LPIPS (if ``perceptual``) and, for tokenizers, usage and perplexity."""
    model = api.model
    psnrs, lpips, colour = [], [], []
    hist = CodebookHistogram(model.vocab_size) if hasattr(model, "vocab_size") else None
    for _, image in images:
        if hist is not None:
            ids = api.encode(image)
            hist.update(ids)
            recon = api.decode(ids, size=tuple(image.shape[-2:]))
        else:
            recon = api.reconstruct(image)
        recon = (recon * 255).round() / 255  # the 8-bit image a user saves
        psnrs.append(float(psnr(image, recon)))
        colour.append(float(colour_difference(image, recon)))
        if perceptual is not None:
            lpips.append(float(perceptual(recon[None] * 2 - 1, image[None] * 2 - 1)[0]))
    row = {"psnr": sum(psnrs) / len(psnrs), "delta_e00": sum(colour) / len(colour)}
    if lpips:
        row["stlpips"] = sum(lpips) / len(lpips)
    if hist is not None:
        stats = hist.stats()
        row.update(usage=stats.usage, perplexity=stats.perplexity)
    return row


def train_for(contender: Contender, seconds: float, lr_minutes: float = 0.0, clock=time.process_time) -> None:
    """Train ``contender`` for about ``seconds`` of ``clock`` time (whole steps).

    ``lr_minutes`` > 0: the learning-rate schedule spans that much training time instead of ``cfg.steps``.
    Before each step the schedule's length in steps is re-estimated from the recipe's own measured rate, so a
    slow recipe (a perceptual loss, a bigger model) ends its cosine decay at the same minute as a fast one
    instead of being compared half-way through its schedule.
    """
    trainer, cfg = contender.trainer, contender.trainer.cfg
    trainer.train_mode()
    end = clock() + seconds
    while clock() < end and (lr_minutes > 0 or contender.step < cfg.steps):
        if lr_minutes > 0 and contender.step >= cfg.warmup_steps:
            rate = contender.step / max(contender.seconds, 1e-9)  # steps per second so far
            cfg.steps = max(contender.step + 1, round(rate * lr_minutes * 60))
        started = clock()
        batch = torch.stack([trainer.dataset[(contender.step, slot)] for slot in range(cfg.batch_size)])
        trainer.train_step(contender.step, batch)
        contender.step += 1
        contender.seconds += clock() - started


def keep_checkpoint(contender: Contender, folder: Path) -> Path:
    """The contender's training state at its last step, as a checkpoint folder ``--init-from`` reads.

    Written through the Trainer's own checkpointing (so the format is the one training runs resume from),
    then moved out of the temporary run folder. An existing ``folder`` is replaced whole, never merged.
    """
    contender.trainer.checkpoint(contender.step)
    written = contender.trainer.run_dir / "checkpoints" / f"step_{contender.step:07d}"
    if not written.is_dir():  # the naming is train/checkpoint.py's; fail loudly if it ever changes
        raise RuntimeError(f"{contender.name}: expected the checkpoint {written}, found none")
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(written, folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", action="append", required=True, metavar="NAME=ARGS",
                   help="a name and a `python -m train` command line (repeatable)")
    p.add_argument("--data", action="append", required=True, help="training images (folder, list or glob)")
    p.add_argument("--val-data", action="append", required=True, help="held-out images, evaluated at full size")
    p.add_argument("--val-limit", type=int, default=0, help="evaluate on the first N held-out images only")
    p.add_argument("--minutes", type=float, required=True, help="training minutes per recipe")
    p.add_argument("--points", type=float, nargs="*", default=None,
                   help="minutes at which to evaluate (default: every quarter of --minutes)")
    p.add_argument("--slice-seconds", type=float, default=60.0, help="round-robin turn length")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="count training time as this process's CPU time (default) or wall time")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads, the same for every recipe")
    p.add_argument("--perceptual", default="stlpips-alex", help="perceptual metric spec, or 'none'")
    p.add_argument("--out", required=True, help="JSON lines file to append the points to")
    p.add_argument("--lr-over-minutes", action="store_true",
                   help="each recipe's learning-rate decay spans --minutes of its training time, not its steps")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="save each recipe's final EMA weights to DIR/NAME (config.json + model.safetensors)")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="with --export: also save each recipe's final training checkpoint (with its weight EMA "
                        "and discriminator) to DIR/NAME-checkpoint, for a later --init-from")
    args = p.parse_args(argv)
    if args.keep_checkpoint and not args.export:
        p.error("--keep-checkpoint needs --export DIR (the checkpoint goes to DIR/NAME-checkpoint)")

    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    points = sorted(args.points) if args.points else [args.minutes * q / 4 for q in (1, 2, 3, 4)]
    images = load_held_out(args.val_data, args.val_limit)
    perceptual = None
    if args.perceptual != "none":
        from tokenizer.perceptual import PerceptualUnavailable, load_perceptual

        try:
            perceptual = load_perceptual(args.perceptual).eval()
        except PerceptualUnavailable as err:
            print(f"perceptual metric skipped: {err}", file=sys.stderr)

    workdir = Path(tempfile.mkdtemp(prefix="bench_recipe_"))
    contenders = []
    for spec in args.recipe:
        name, train_argv = parse_recipe(spec)
        train_argv += [a for d in args.data for a in ("--data", d)] + ["--out", str(workdir / name)]
        cfg = config_from_argv(train_argv)
        cfg.threads, cfg.val_data, cfg.max_minutes = args.threads, [], 0.0
        contenders.append(Contender(name, Trainer(cfg), points=list(points)))
    out = Path(args.out)
    table: dict[float, dict[str, dict]] = {}
    while any(c.points for c in contenders):
        for c in contenders:
            if not c.points:
                continue
            train_for(c, min(args.slice_seconds, c.points[0] * 60 - c.seconds),
                      args.minutes if args.lr_over_minutes else 0.0, clock)
            done = c.step >= c.trainer.cfg.steps and not args.lr_over_minutes
            if c.seconds >= c.points[0] * 60 - 1e-6 or done:
                minute = c.points.pop(0)
                row = {"recipe": c.name, "minutes": minute, "train_seconds": round(c.seconds, 1), "step": c.step,
                       "images": c.step * c.trainer.cfg.batch_size, "threads": args.threads, "clock": args.clock,
                       **evaluate(c.trainer, images, perceptual)}
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                table.setdefault(minute, {})[c.name] = row
                print(json.dumps(row), flush=True)
                if not c.points and args.export:
                    folder = c.trainer.export(Path(args.export) / c.name)
                    print(f"{c.name}: exported EMA weights after {c.step} steps to {folder}", flush=True)
                    if args.keep_checkpoint:
                        kept = keep_checkpoint(c, Path(args.export) / f"{c.name}-checkpoint")
                        print(f"{c.name}: kept the training checkpoint in {kept}", flush=True)
    keys = [k for k in ("psnr", "stlpips", "delta_e00", "usage", "perplexity") if any(
        k in r for rows in table.values() for r in rows.values())]
    print("\n| minutes | recipe | steps | " + " | ".join(keys) + " |")
    print("|" + " --- |" * (3 + len(keys)))
    for minute, rows in sorted(table.items()):
        for name, r in rows.items():
            cells = [f"{r[k]:.4g}" if k in r else "-" for k in keys]
            print(f"| {minute:g} | {name} | {r['step']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
