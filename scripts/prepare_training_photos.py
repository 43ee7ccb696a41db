"""Collect the real photos the bundled default models train on into one folder, with their licences.

Sources (no download at run time):
  - the wikipedia49 compression test photos (CC BY-SA), passed with --wikipedia49;
  - Debian wallpaper packages (install first, as root):
      apt-get install -y --no-install-recommends mate-backgrounds lomiri-wallpapers-16.04 \
          lomiri-wallpapers-20.04 plasma-workspace-wallpapers
  - the photos inside the scikit-image and scikit-learn wheels (pip install scikit-image scikit-learn).
Artwork (lomiri ``analogpattern*``/``umang*``, non-photo plasma wallpapers) is left out. Kodak-24 is the
evaluation set and is never collected.

Images are downscaled so that the short side is at most --max-short-side (training crops are drawn at
or below that scale) and written as PNG. The last --holdout wikipedia49 photos go to OUT/val for
held-out evaluation during training. OUT/SOURCES.json lists every file with its origin and licence.

    python scripts/prepare_training_photos.py --wikipedia49 ../shared/data/wikipedia49 --out data/photos
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tokenizer.image_io import ImageError, read_image
from tokenizer.inputs import list_images, shrink_short_side

PLASMA_PHOTOS = ["BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
                 "Kite", "OneStandsOut", "Path", "summer_1am"]
SKIMAGE_PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "retina"]


def _pixels(path: Path) -> int:
    try:
        width, height = (int(v) for v in path.stem.split("x"))
    except ValueError:
        return 0
    return width * height


def debian_sources() -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    for p in sorted(Path("/usr/share/backgrounds/mate/nature").glob("*.jpg")):
        found.append((p, "GPL-2+ (Debian mate-backgrounds)"))
    for p in sorted(Path("/usr/share/backgrounds").glob("*_by_*.jpg")):
        if not p.name.startswith(("analogpattern", "umang")):
            found.append((p, "CC-BY-4.0 / CC-BY-SA / CC0 (Debian lomiri-wallpapers; see its copyright file)"))
    for name in PLASMA_PHOTOS:
        sizes = sorted(Path(f"/usr/share/wallpapers/{name}/contents/images").glob("*.jpg"), key=_pixels)
        for p in sizes[-1:]:  # the largest resolution only (files are named WIDTHxHEIGHT.jpg)
            found.append((p, "GPL-2+ (Debian plasma-workspace-wallpapers)"))
    return found


def wheel_photos() -> list[tuple[str, np.ndarray, str]]:
    out = []
    try:
        import skimage.data

        for name in SKIMAGE_PHOTOS:
            try:
                out.append((f"skimage_{name}", np.asarray(getattr(skimage.data, name)()), "scikit-image data (BSD-3 / CC0 / public domain per skimage docs)"))
            except Exception as err:  # some datasets need a download (pooch); skip them
                print(f"skip skimage.data.{name}: {err}", file=sys.stderr)
    except ImportError:
        print("scikit-image not installed: skipping its photos", file=sys.stderr)
    try:
        from sklearn.datasets import load_sample_images

        for name, img in zip(("china", "flower"), load_sample_images().images):
            out.append((f"sklearn_{name}", np.asarray(img), "scikit-learn sample images (CC BY 2.0, Flickr)"))
    except ImportError:
        print("scikit-learn not installed: skipping its photos", file=sys.stderr)
    return out


def save_png(image: torch.Tensor, path: Path) -> None:
    array = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
    Image.fromarray(array).save(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wikipedia49", type=Path, help="folder of the wikipedia49 photos")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-short-side", type=int, default=1024)
    p.add_argument("--holdout", type=int, default=5, help="last N wikipedia49 photos kept for validation")
    args = p.parse_args()
    train_dir, val_dir = args.out / "train", args.out / "val"
    train_dir.mkdir(parents=True, exist_ok=True)
    val_dir.mkdir(parents=True, exist_ok=True)
    records = []

    def add(name: str, image: torch.Tensor, origin: str, licence: str, folder: Path) -> None:
        image = shrink_short_side(image, args.max_short_side)
        target = folder / f"{name}.png"
        save_png(image, target)
        records.append({"file": str(target.relative_to(args.out)), "origin": origin, "licence": licence,
                        "size": [image.shape[2], image.shape[1]]})

    if args.wikipedia49:
        photos = [Path(p) for p in list_images(args.wikipedia49, "--wikipedia49")]
        for i, path in enumerate(photos):
            folder = val_dir if i >= len(photos) - args.holdout else train_dir
            add(f"wikipedia49_{path.stem}", read_image(path), str(path), "CC BY-SA (Wikipedia)", folder)
    for path, licence in debian_sources():
        try:
            add(f"debian_{path.parent.parent.parent.name if 'wallpapers' in str(path) else ''}{path.stem}",
                read_image(path), str(path), licence, train_dir)
        except (ImageError, OSError) as err:
            print(f"skip {path}: {err}", file=sys.stderr)
    for name, array, licence in wheel_photos():
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        image = torch.from_numpy(np.array(array[..., :3])).permute(2, 0, 1).float() / 255.0
        add(name, image, name.replace("_", ".", 1), licence, train_dir)
    (args.out / "SOURCES.json").write_text(json.dumps(records, indent=1) + "\n")
    n_val = sum(1 for r in records if r["file"].startswith("val/"))
    print(f"{len(records) - n_val} training and {n_val} validation photos in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
