"""Command line of the trainer.

    python -m train --preset vq-f8 --data DIR [--data DIR2 ...] --out RUN_DIR [--val-data DIR]
                    [--set key=value ...] [--resume] [--export DIR] [--smoke]
    python -m train --init-from MODEL [--decoder-only] --data DIR --out RUN_DIR ...   (fine-tune a model)

Multi-GPU / multi-node: the same command under ``torchrun --nproc_per_node N -m train ...``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

from tokenizer.config import ConfigError
from tokenizer.models import build_model
from tokenizer.pretrained import WeightsError, check_state_dict
from tokenizer.presets import PRESETS

from .config import TrainConfig, check_resume, saved_run_config, smoke
from .init_from import grown_state, read_init_source
from .loop import run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train", description="Train an imgtok tokenizer or VAE.")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="model preset (default vq-f8; with --init-from, the model's own config)")
    p.add_argument("--init-from", default=None, metavar="MODEL",
                   help="start from this model's weights: bundled, bundled-kl, a folder, a Hub repo id, a "
                        "diffusers/taming/LDM/LlamaGen checkpoint or one of our run folders/checkpoints")
    p.add_argument("--allow-pickle", action="store_true",
                   help="let --init-from read pickled checkpoints (.ckpt/.pt/.bin), as `imgtok convert` does")
    p.add_argument("--decoder-only", action="store_true",
                   help="train the decoder only: encoder and codebook frozen, so existing token ids stay valid")
    p.add_argument("--grow", action="store_true",
                   help="with --init-from: residual blocks the model config adds to the source's start as identities "
                        "(e.g. --set model.decoder_layers_per_block=3)")
    p.add_argument("--data", action="append", default=[], help="image folder, glob or list file (repeatable)")
    p.add_argument("--val-data", action="append", default=[], help="held-out images for periodic evaluation")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, samples, export)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training field, or model.FIELD for the model config")
    p.add_argument("--config", help="a train_config.json to start from (e.g. a previous run's)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest checkpoint, with its saved configuration; flags "
                        "given may change only steps, max_minutes and the log/eval/checkpoint/sample intervals")
    p.add_argument("--export", default=None, help="also write the EMA weights as a model folder here")
    p.add_argument("--smoke", action="store_true", help="shrink everything: the whole pipeline in seconds")
    p.add_argument("--stop-after", type=int, default=0,
                   help="stop this invocation after this step (checkpoint kept; continue with --resume)")
    return p.parse_args(argv)


def _apply_flags(cfg: TrainConfig, args: argparse.Namespace, resume: bool) -> TrainConfig:
    """``cfg`` with the command line's flags applied. Resuming, a flag not given keeps the run's value."""
    if args.init_from:
        cfg.init_from, cfg.allow_pickle = args.init_from, args.allow_pickle or cfg.allow_pickle
        if args.preset or not resume:
            cfg.preset = args.preset or ""  # no preset: the model's own config
    elif args.preset or not (args.config or resume):
        cfg.preset = args.preset or "vq-f8"
    if args.decoder_only:
        cfg.train_part = "decoder"
    if args.grow:
        cfg.grow = True
    cfg.data = args.data or cfg.data
    cfg.val_data = args.val_data or cfg.val_data
    cfg.out = args.out
    if args.smoke:
        cfg = smoke(cfg)  # before --set, so that explicit overrides win
    cfg.apply_overrides(args.set)
    return cfg


def config_from_argv(argv: list[str]) -> TrainConfig:
    """The configuration a fresh (not resumed) ``python -m train ARGV`` run trains with; for benchmarks
    that drive ``Trainer`` themselves (scripts/bench_recipe.py)."""
    args = parse_args(argv)
    return _apply_flags(TrainConfig.load(args.config) if args.config else TrainConfig(), args, resume=False)


def _log(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[train] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        saved = saved_run_config(args.out) if args.resume else None
        if saved is not None:
            # A resumed run continues its saved configuration: flags may change only RESUME_MAY_CHANGE.
            run_config, saved_from = saved
            base = TrainConfig.load(args.config) if args.config else copy.deepcopy(run_config)
            cfg = _apply_flags(base, args, resume=True)
            for key, (old, new) in check_resume(run_config, cfg, saved_from).items():
                _log(f"--resume: {key} {old!r} -> {new!r}")
        else:
            cfg = config_from_argv(argv if argv is not None else sys.argv[1:])
        if not cfg.data:
            raise ConfigError("no training data: pass --data DIR")
        source = read_init_source(cfg.init_from, cfg.allow_pickle) if cfg.init_from else None
        model_config = cfg.model_config(source.config if source else None)  # fail early on bad overrides
        if source is not None:  # shapes checked before any run folder is written (meta: no memory)
            with torch.device("meta"):
                meta_model = build_model(model_config)
                state = grown_state(meta_model, source.model)[0] if cfg.grow else source.model
                check_state_dict(meta_model, state, f"--init-from {source.description}")
    except (ConfigError, FileNotFoundError, WeightsError) as err:
        print(f"python -m train: error: {err}", file=sys.stderr)
        return 2
    run(cfg, resume=args.resume, export_dir=args.export, stop_after=args.stop_after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
