"""Training throughput: images/s of full training steps (forward, losses, backward, AdamW, EMA).

    python scripts/bench_train.py --presets vq-f8 kl-f8 --crop 128 --batch 16 [--perceptual both]

Runs the real ``train.loop.Trainer.train_step`` on random crops of generated images, after warm-up
steps, and prints images/s per preset with and without the perceptual loss. Also prints the CPU's
bf16/fp32 matmul peak measured in the same run, since this machine's speed varies over time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from train.config import TrainConfig
from train.loop import Trainer


def matmul_gflops(dtype: torch.dtype, n: int = 1024, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def measure(preset: str, data: str, crop: int, batch: int, perceptual: bool, steps: int, amp: str) -> float:
    cfg = TrainConfig(preset=preset, data=[data], out=tempfile.mkdtemp(), crop_size=crop, batch_size=batch,
                      perceptual_weight=1.0 if perceptual else 0.0, amp=amp, warmup_steps=1)
    trainer = Trainer(cfg)
    trainer.model.train()
    batches = [torch.stack([trainer.dataset[(s, i)] for i in range(batch)]) for s in range(steps + 1)]
    trainer.train_step(0, batches[0])  # warm-up (allocations, k-means init)
    start = time.perf_counter()
    for s in range(1, steps + 1):
        trainer.train_step(s, batches[s])
    return steps * batch / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["vq-f8", "kl-f8"])
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--amp", default="auto", help="auto | bf16 | none")
    p.add_argument("--perceptual", choices=["off", "on", "both"], default="both")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((384, 512, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.perceptual]
    results = {"threads": torch.get_num_threads(), "crop": args.crop, "batch": args.batch, "amp": args.amp,
               "matmul_gflops_fp32": matmul_gflops(torch.float32), "matmul_gflops_bf16": matmul_gflops(torch.bfloat16)}
    print(f"CPU matmul peak now: {results['matmul_gflops_fp32']:.0f} GFLOP/s fp32, "
          f"{results['matmul_gflops_bf16']:.0f} GFLOP/s bf16 ({results['threads']} threads)")
    for preset in args.presets:
        for perceptual in modes:
            ips = measure(preset, str(folder), args.crop, args.batch, perceptual, args.steps, args.amp)
            key = f"{preset}{'+perceptual' if perceptual else ''}"
            results[key] = ips
            print(f"{key}: {ips:.2f} images/s ({args.crop}^2 crops, batch {args.batch}, amp {args.amp})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
