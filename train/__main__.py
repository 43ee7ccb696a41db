"""Command line of the trainer.

    python -m train --preset vq-f8 --data DIR [--data DIR2 ...] --out RUN_DIR [--val-data DIR]
                    [--set key=value ...] [--resume] [--export DIR] [--smoke]

Multi-GPU / multi-node: the same command under ``torchrun --nproc_per_node N -m train ...``.
"""

from __future__ import annotations

import argparse
import sys

from tokenizer.config import ConfigError
from tokenizer.presets import PRESETS

from .config import TrainConfig, smoke
from .loop import run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train", description="Train an imgtok tokenizer or VAE.")
    p.add_argument("--preset", choices=sorted(PRESETS), default="vq-f8", help="model preset")
    p.add_argument("--data", action="append", default=[], help="image folder, glob or list file (repeatable)")
    p.add_argument("--val-data", action="append", default=[], help="held-out images for periodic evaluation")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, samples, export)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training field, or model.FIELD for the model config")
    p.add_argument("--config", help="a train_config.json to start from (e.g. a previous run's)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--export", default=None, help="also write the EMA weights as a model folder here")
    p.add_argument("--smoke", action="store_true", help="shrink everything: the whole pipeline in seconds")
    p.add_argument("--stop-after", type=int, default=0,
                   help="stop this invocation after this step (checkpoint kept; continue with --resume)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = TrainConfig.load(args.config) if args.config else TrainConfig()
        cfg.preset = args.preset if not args.config or "--preset" in (argv or sys.argv) else cfg.preset
        cfg.data = args.data or cfg.data
        cfg.val_data = args.val_data or cfg.val_data
        cfg.out = args.out
        if args.smoke:
            cfg = smoke(cfg)  # before --set, so that explicit overrides win
        cfg.apply_overrides(args.set)
        if not cfg.data:
            raise ConfigError("no training data: pass --data DIR")
        cfg.model_config()  # fail early on bad model overrides
    except (ConfigError, FileNotFoundError) as err:
        print(f"python -m train: error: {err}", file=sys.stderr)
        return 2
    run(cfg, resume=args.resume, export_dir=args.export, stop_after=args.stop_after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
