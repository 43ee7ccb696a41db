"""Peak memory and time of large-image encode/reconstruct, tiled vs untiled (issue 13's figures).

Each case runs in its own subprocess (2 threads), which reports its peak resident memory (VmHWM) and
seconds; nothing else the parent allocated counts. Test images are made at run time from photos in
``--photos`` (upscaled to the case's size, bicubic) and never written to the repository.

    python scripts/bench_memory.py --photos /path/to/photos            # every case
    python scripts/bench_memory.py --photos DIR --cases agree-2mp      # one case

Cases:
    tok-12mp      bundled tokenizer, reconstruct a 12 MP photo (automatic tiling)
    vae-12mp      bundled VAE, reconstruct a 12 MP photo
    vqf8-2048     the vq-f8 preset (mid-block attention, random weights), encode 2048 x 2048
    tok-121mp     bundled tokenizer, encode 11000 x 11000 (121 MP)
    agree-2mp     ids tiled vs untiled and PSNR tiled - untiled on 2 MP photos; seconds per MP each way
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CASE = r"""
import json, sys, time, torch
torch.set_num_threads(2)
from PIL import Image
import numpy as np
from tokenizer import ImageTokenizer, ImageVAE
from tokenizer.metrics import psnr

def photo(path, height, width):
    im = Image.open(path).convert("RGB").resize((width, height), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)  # (3, H, W) uint8

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    return 0

case, photos = sys.argv[1], json.loads(sys.argv[2])
out = {"case": case}
if case in ("tok-12mp", "vae-12mp"):
    model = ImageTokenizer.from_pretrained() if case == "tok-12mp" else ImageVAE.from_pretrained()
    img = photo(photos[0], 3000, 4000)
    start = time.monotonic()
    rec = model.reconstruct(img)
    out["seconds"] = time.monotonic() - start
    out["psnr"] = float(psnr(img.float() / 255, rec))
    out["megapixels"] = 12.0
elif case == "vqf8-2048":
    model = ImageTokenizer.from_preset("vq-f8")
    img = photo(photos[0], 2048, 2048)
    start = time.monotonic()
    ids = model.encode(img)
    out["seconds"] = time.monotonic() - start
    out["grid"] = list(ids.shape)
    out["megapixels"] = 2048 * 2048 / 1e6
elif case == "tok-121mp":
    model = ImageTokenizer.from_pretrained()
    img = photo(photos[0], 11000, 11000)
    start = time.monotonic()
    try:
        ids = model.encode(img)
        out["grid"] = list(ids.shape)
    except Exception as err:  # the refusal, if any, is what we report
        out["error"] = f"{type(err).__name__}: {err}"
    out["seconds"] = time.monotonic() - start
    out["megapixels"] = 121.0
elif case == "agree-2mp":
    model = ImageTokenizer.from_pretrained()
    rows = []
    for path in photos:
        img = photo(path, 1224, 1632)  # 2.0 MP
        t0 = time.monotonic(); whole = model.encode(img, tile_size=0); t1 = time.monotonic()
        tiled = model.encode(img, tile_size=512); t2 = time.monotonic()
        rec_whole = model.decode(whole, size=img.shape[-2:], tile_size=0); t3 = time.monotonic()
        rec_tiled = model.decode(whole, size=img.shape[-2:], tile_size=512); t4 = time.monotonic()
        x = img.float() / 255
        rows.append({"photo": path, "ids_equal": float((whole == tiled).float().mean()),
                     "psnr_untiled": float(psnr(x, rec_whole)), "psnr_tiled": float(psnr(x, rec_tiled)),
                     "encode_s": [t1 - t0, t2 - t1], "decode_s": [t3 - t2, t4 - t3]})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    out["photos"] = rows
    out["ids_equal"] = sum(r["ids_equal"] for r in rows) / len(rows)
    out["psnr_tiled_minus_untiled"] = sum(r["psnr_tiled"] - r["psnr_untiled"] for r in rows) / len(rows)
    enc = [sum(r["encode_s"][i] for r in rows) for i in (0, 1)]
    dec = [sum(r["decode_s"][i] for r in rows) for i in (0, 1)]
    out["encode_s_per_mp"] = [e / (2.0 * len(rows)) for e in enc]
    out["decode_s_per_mp"] = [d / (2.0 * len(rows)) for d in dec]
    out["tiling_overhead_encode"] = enc[1] / enc[0] - 1
    out["tiling_overhead_decode"] = dec[1] / dec[0] - 1
out["peak_rss_gib"] = hwm() / 2**30
print(json.dumps(out))
"""

CASES = ("tok-12mp", "vae-12mp", "vqf8-2048", "tok-121mp", "agree-2mp")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", required=True, help="folder of photos to scale up to each case's size")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--count", type=int, default=3, help="photos for agree-2mp (default 3)")
    args = parser.parse_args()
    photos = sorted(str(p) for p in Path(args.photos).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not photos:
        raise SystemExit(f"--photos {args.photos}: no .png/.jpg files")
    for case in args.cases:
        chosen = photos[: args.count] if case == "agree-2mp" else photos[:1]
        done = subprocess.run([sys.executable, "-c", CASE, case, json.dumps(chosen)], capture_output=True, text=True)
        if done.returncode != 0:
            print(json.dumps({"case": case, "returncode": done.returncode, "stderr": done.stderr[-2000:]}), flush=True)
            continue
        print(done.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
