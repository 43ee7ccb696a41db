"""Training throughput: images/s of full training steps (forward, losses, backward, AdamW, EMA), and model cost.

    python scripts/bench_train.py --presets vq-f8-cpu vq-f8-cpu-s2c --crop 128 --batch 16 --steps 20 \
        --amp none --perceptual off --threads 1

Runs the real ``train.loop.Trainer.train_step`` on random crops of generated images, after a warm-up step,
and prints images/s per preset with and without the perceptual loss (``--perceptual-net``; with
``--perceptual-batch 0 4`` also with the loss on a part of each batch). The contenders' steps are interleaved
(one step of each in turn), so a change of machine load hits them alike and their ratio is fair. Also prints
each preset's parameters and multiply-adds per 256 x 256 image (encoder and decoder, counted by
``torch.utils.flop_counter``), and the CPU's bf16/fp32 matmul peak measured in the same run, since this
machine's speed varies over time.
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
from torch.utils.flop_counter import FlopCounterMode

from tokenizer import build_model, get_preset
from train.config import TrainConfig
from train.loop import Trainer


def matmul_gflops(dtype: torch.dtype, n: int = 1024, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def model_cost(preset: str, size: int = 256) -> dict[str, float]:
    """Parameters and multiply-adds of one size x size image through the encoder and the decoder (fp32, eval)."""
    model = build_model(get_preset(preset)).eval()
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        with FlopCounterMode(display=False) as enc:
            z = model.quant_conv(model.encoder(x))  # (1, D, h, w): the bottleneck's input
        with FlopCounterMode(display=False) as dec:
            model.decoder(model.post_quant_conv(z[:, : model.config.latent_channels]))
    # FlopCounterMode counts 2 FLOPs per multiply-add.
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "encoder_macs": enc.get_total_flops() / 2, "decoder_macs": dec.get_total_flops() / 2}


def measure(contenders: list[tuple[str, dict]], data: str, crop: int, batch: int, steps: int) -> list[float]:
    """Images/s of each contender's training steps (a preset and its loss settings), their steps interleaved."""
    trainers, batches = [], []
    for preset, settings in contenders:
        cfg = TrainConfig(preset=preset, data=[data], out=tempfile.mkdtemp(), crop_size=crop, batch_size=batch,
                          warmup_steps=1, **settings)
        trainer = Trainer(cfg)
        trainer.model.train()
        batches.append([torch.stack([trainer.dataset[(s, i)] for i in range(batch)]) for s in range(steps + 1)])
        trainer.train_step(0, batches[-1][0])  # warm-up (allocations, k-means init)
        trainers.append(trainer)
    seconds = [0.0] * len(contenders)
    for s in range(1, steps + 1):
        for k, trainer in enumerate(trainers):
            start = time.perf_counter()
            trainer.train_step(s, batches[k][s])
            seconds[k] += time.perf_counter() - start
    return [steps * batch / t for t in seconds]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["vq-f8", "kl-f8"])
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--amp", nargs="+", default=["auto"],
                   help="auto | bf16 | none; several values are compared in one interleaved measurement")
    p.add_argument("--perceptual", choices=["off", "on", "both"], default="both")
    p.add_argument("--perceptual-net", default="alex", help="alex | vgg: the perceptual loss's backbone")
    p.add_argument("--perceptual-batch", type=int, nargs="+", default=[0],
                   help="samples per step the perceptual loss sees (TrainConfig.perceptual_batch; 0 = all); "
                        "several values are compared in one interleaved measurement")
    p.add_argument("--perceptual-amp", nargs="+", choices=["off", "on"], default=["off"],
                   help="TrainConfig.perceptual_amp: the perceptual backbone in fp32 (off) or under the step's "
                        "autocast (on); several values are compared in one interleaved run")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
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
        cost = model_cost(preset)
        results[f"{preset}:cost"] = cost
        print(f"{preset}: {cost['parameters'] / 1e6:.3f}M parameters; per 256^2 image "
              f"{cost['encoder_macs'] / 1e9:.3f} GMAC encoder + {cost['decoder_macs'] / 1e9:.3f} GMAC decoder = "
              f"{(cost['encoder_macs'] + cost['decoder_macs']) / 1e9:.3f} GMAC", flush=True)
    for perceptual in modes:
        contenders, keys = [], []
        for preset in args.presets:
            for amp in args.amp:
                tag = f"[amp {amp}]" if len(args.amp) > 1 else ""
                if not perceptual:
                    contenders.append((preset, {"amp": amp}))
                    keys.append(preset + tag)
                    continue
                for k in args.perceptual_batch:
                    for perceptual_amp in args.perceptual_amp:
                        contenders.append((preset, {"amp": amp, "perceptual_weight": 1.0,
                                                    "perceptual_net": args.perceptual_net, "perceptual_batch": k,
                                                    "perceptual_amp": perceptual_amp == "on"}))
                        keys.append(f"{preset}+perceptual{tag}"
                                    + (f"[{k} of {args.batch}]" if 0 < k < args.batch else "")
                                    + ("[perceptual under autocast]" if perceptual_amp == "on" else ""))
        rates = measure(contenders, str(folder), args.crop, args.batch, args.steps)
        for key, ips in zip(keys, rates):
            results[key] = ips
            print(f"{key}: {ips:.2f} images/s ({args.crop}^2 crops, batch {args.batch}; {ips / rates[0]:.2f}x {keys[0]})",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
