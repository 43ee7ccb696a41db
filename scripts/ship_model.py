"""Ship a newly trained model as a bundled one only when it beats the shipped one on held-out photos.

    python scripts/ship_model.py runs/vq/export tokenizer/weights/imgtok-vq-f8 --val-data photos/heldout

The rule (issue 12): the candidate must be better by at least ``--min-psnr-gain`` dB PSNR (0.2) or
``--min-lpips-gain`` shift-tolerant LPIPS (0.02) without being worse on the other, on held-out photos at
full resolution (never the evaluation set). When it is, its weights are written over the shipped folder in
fp16 (about half the bytes; the codebook stays fp32 and everything loads back as fp32), and the two
evaluations are printed as JSON either way. ``--dry-run`` only compares.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from bench_recipe import evaluate_model, load_held_out
from tokenizer.api import load_any
from tokenizer.checkpoints import save_folder
from tokenizer.checkpoints import sha256_of
from tokenizer.shipped import record_version


def load_api(folder: str | Path):
    return load_any(folder, device="cpu").eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("candidate", help="the new model folder (e.g. RUN/export)")
    p.add_argument("shipped", help="the bundled model folder it would replace")
    p.add_argument("--val-data", action="append", required=True, help="held-out photos (full resolution)")
    p.add_argument("--min-psnr-gain", type=float, default=0.2)
    p.add_argument("--min-lpips-gain", type=float, default=0.02)
    p.add_argument("--perceptual", default="stlpips-alex", help="perceptual metric, or 'none' (PSNR only)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    perceptual = None
    if args.perceptual != "none":  # without it the rule is judged on PSNR alone, and says so
        from tokenizer.perceptual import load_perceptual

        perceptual = load_perceptual(args.perceptual).eval()
    images = load_held_out(args.val_data, 0)
    candidate = load_api(args.candidate)
    # The candidate as it would ship (fp16 storage, loaded back as fp32), so the decision is about those bytes.
    with tempfile.TemporaryDirectory() as tmp:
        candidate = load_api(save_folder(candidate.model, Path(tmp) / "fp16", dtype=torch.float16))
    new, old = evaluate_model(candidate, images, perceptual), evaluate_model(load_api(args.shipped), images, perceptual)
    psnr_gain = new["psnr"] - old["psnr"]
    lpips_gain = old["stlpips"] - new["stlpips"] if perceptual is not None else 0.0
    ship = ((psnr_gain >= args.min_psnr_gain and lpips_gain >= 0)
            or (lpips_gain >= args.min_lpips_gain and psnr_gain >= 0))
    print(json.dumps({"images": len(images), "candidate": new, "shipped": old, "psnr_gain": psnr_gain,
                      "stlpips_gain": lpips_gain, "ship": ship}, indent=2))
    if ship and not args.dry_run:
        save_folder(candidate.model, args.shipped, dtype=torch.float16)
        with tempfile.TemporaryDirectory() as tmp:  # what save_pretrained writes after loading them (fp32)
            fp32 = sha256_of(load_api(args.shipped).save_pretrained(Path(tmp) / "fp32", model_card=False)
                             / "model.safetensors")
        # The candidate's folder name only: versions.json ships inside the package, machine paths do not belong there.
        version = record_version(args.shipped, f"{Path(args.candidate).name}: +{psnr_gain:.2f} dB PSNR, "
                                 f"{-lpips_gain:+.3f} ST-LPIPS on {len(images)} held-out photos",
                                 sha256_fp32=fp32)
        print(f"shipped: {args.candidate} -> {args.shipped} (fp16 weights, fp32 codebook), version {version}")
    elif not ship:
        print("not shipped: the candidate does not beat the shipped model by the required margin")
    return 0


if __name__ == "__main__":
    sys.exit(main())
