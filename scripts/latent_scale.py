"""Set a VAE's ``scaling_factor`` (and optionally ``shift_factor``) from its latents on training photos.

    python scripts/latent_scale.py MODEL --data photos/train [--limit 64] [--shift] [--out FOLDER]

Latent-diffusion users train on ``(mode - shift_factor) * scaling_factor`` and expect about unit variance
(the Stable Diffusion VAE's 0.18215 was measured this way; ``tokenizer/latent_scale.py``). Prints the
statistics; with ``--out`` writes the model with the new factors (weights unchanged) to FOLDER.
Measure on training photos, never on the evaluation set.
"""

from __future__ import annotations

import argparse
import json
import sys

from tokenizer.api import ImageVAE
from tokenizer.image_io import read_image
from tokenizer.inputs import list_images
from tokenizer.latent_scale import latent_statistics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a VAE: folder, Hub repo id or bundled-kl")
    p.add_argument("--data", action="append", required=True, help="training images (folder, list or glob)")
    p.add_argument("--limit", type=int, default=0, help="use the first N images only")
    p.add_argument("--shift", action="store_true", help="also set shift_factor to the latents' mean (SD3 style)")
    p.add_argument("--out", help="write the model with the new factors here")
    args = p.parse_args(argv)

    vae = ImageVAE.from_pretrained(args.model)  # shipped names (bundled-kl) resolve like any other
    paths = list_images(args.data)
    paths = paths[: args.limit] if args.limit > 0 else paths
    stats = latent_statistics(vae, (read_image(path) for path in paths))
    shift = stats.shift_factor if args.shift else 0.0
    # Without a shift, the scale must bring the second moment (not the variance) to 1.
    scale = stats.scaling_factor if args.shift else 1.0 / (stats.std**2 + stats.mean**2) ** 0.5
    print(json.dumps({"images": len(paths), "latent_values": stats.count, "mean": stats.mean, "std": stats.std,
                      "per_channel_std": stats.per_channel_std, "scaling_factor": scale, "shift_factor": shift}))
    if args.out:
        vae.model.config = vae.config.replace(scaling_factor=scale, shift_factor=shift)
        vae.save_pretrained(args.out)
        print(f"wrote {args.out} (scaling_factor {scale:.6g}, shift_factor {shift:.6g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
