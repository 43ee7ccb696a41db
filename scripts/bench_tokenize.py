"""Benchmark of batch tokenization (figures for the closing note; not a test).

1. Throughput: images/s of ``tokenize_dataset`` (decode in DataLoader workers, centre-crop 256^2, encode,
   write shards) with the ``vq-f8`` preset (random weights: speed does not depend on them), against the raw
   model's ``encode_ids`` on the same images pre-decoded into tensors, same batch size, in the same run
   (raw, pipeline, raw again: the CPU may be shared, so the raw figure is bracketed).
2. Memory: peak RSS of a tokenization of N images with the ``vq-tiny`` preset for two values of N (each run
   in a fresh subprocess): flat memory means the same peak for 500 and 5000 images. These runs crop to
   ``--rss-size`` (64): vq-tiny has f = 2 and mid-block attention, so a 256^2 crop is a 128^2 grid whose
   attention alone needs GiBs per image -- the tiny preset is for tests, not for large images.

Photos come from ``--photos`` (default: the project's shared wikipedia49 folder), repeated through symlinks
to reach the count. The memory runs use copies shrunk to a ``--rss-photo-side`` (160-pixel) short side
(JPEG), so that 5000 decodes take minutes on a shared CPU; the throughput run decodes the full-size photos.

    python scripts/bench_tokenize.py --images 16 --batch-size 8 --rss-counts 500 5000 --rss-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tokenizer import ImageTokenizer
from tokenizer.batch_tokenize import TokenizeConfig, tokenize_dataset
from tokenizer.inputs import InputError, center_crop, list_images
from tokenizer.image_io import read_image

DEFAULT_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikipedia49"


def photo_list(folder: Path) -> list[Path]:
    try:
        return [Path(p) for p in list_images(folder, "--photos")]
    except InputError as err:
        raise SystemExit(str(err))


def repeat_photos(photos: list[Path], count: int, folder: Path) -> Path:
    """``count`` symlinks cycling through ``photos`` (distinct keys, real files)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        src = photos[i % len(photos)]
        (folder / f"{i:06d}{src.suffix}").symlink_to(src.resolve())
    return folder


def shrunk_copies(photos: list[Path], folder: Path, short_side: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in photos:
        with Image.open(p) as im:
            im = im.convert("RGB")
            scale = short_side / min(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
            target = folder / f"{p.stem}.jpg"
            im.save(target, quality=90)
            out.append(target)
    return out


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its waited-for children (the DataLoader workers)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Timing:
    images: int
    wall: float  # seconds
    cpu: float  # CPU seconds, all threads and worker processes

    def rates(self, name: str) -> dict:
        return {f"{name}_img_per_s_wall": self.images / self.wall, f"{name}_cpu_s_per_img": self.cpu / self.images}


@torch.no_grad()
def raw_encode(tok: ImageTokenizer, crops: torch.Tensor, batch_size: int) -> Timing:
    """The model alone on pre-decoded (N, 3, S, S) crops in [0, 1]."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    for s in range(0, crops.shape[0], batch_size):
        tok.encode_pixels(crops[s : s + batch_size])
    return Timing(crops.shape[0], time.perf_counter() - wall, _cpu_seconds() - cpu)


def throughput(args: argparse.Namespace, work: Path) -> dict:
    """Wall-clock rates swing with other jobs on a shared CPU; CPU seconds per image do much less, so the
    data path's cost is also given as the pipeline's extra CPU time over the raw model's."""
    photos = photo_list(args.photos)
    folder = repeat_photos(photos, args.images, work / "throughput_images")
    torch.manual_seed(0)
    tok = ImageTokenizer.from_preset("vq-f8")
    raw_encode(tok, torch.rand(2, 3, args.size, args.size), 2)  # warm-up: kernels picked, memory allocated
    decode_start = time.perf_counter()
    crops = torch.stack([center_crop(read_image(p), args.size) for p in list_images(folder)])  # (N, 3, S, S)
    decode_seconds = time.perf_counter() - decode_start
    before = raw_encode(tok, crops, args.batch_size)
    config = TokenizeConfig(input=str(folder), output=str(work / "throughput_out"), model="vq-f8 (random)",
                            size=args.size, batch_size=args.batch_size, workers=args.workers,
                            shard_size=args.images, progress=False)
    # Fixed per-run costs (counting the inputs, hashing the weights, metadata), measured alone: max_shards=0.
    wall, cpu = time.perf_counter(), _cpu_seconds()
    tokenize_dataset(TokenizeConfig(**dict(config.__dict__, output=str(work / "setup_only"), max_shards=0)),
                     tokenizer=tok)
    setup = Timing(0, time.perf_counter() - wall, _cpu_seconds() - cpu)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    result = tokenize_dataset(config, tokenizer=tok)
    pipeline = Timing(result.images, time.perf_counter() - wall, _cpu_seconds() - cpu)
    after = raw_encode(tok, crops, args.batch_size)
    raw_wall = (before.images / before.wall + after.images / after.wall) / 2
    raw_cpu = (before.cpu + after.cpu) / (before.images + after.images)
    return {
        "images": args.images, "size": args.size, "batch_size": args.batch_size, "workers": args.workers,
        "torch_threads": torch.get_num_threads(),
        "single_thread_decode_and_crop_s_per_image": decode_seconds / args.images,
        **before.rates("raw_before"), **pipeline.rates("pipeline"), **after.rates("raw_after"),
        "setup_wall_s": setup.wall, "setup_cpu_s": setup.cpu,
        "data_path_cost_wall_vs_mean_raw": 1.0 - (pipeline.images / pipeline.wall) / raw_wall,
        "data_path_cost_cpu": 1.0 - raw_cpu / (pipeline.cpu / pipeline.images),
        "data_path_cost_cpu_per_image_without_setup": 1.0 - raw_cpu / ((pipeline.cpu - setup.cpu) / pipeline.images),
    }


def _proc_kib(pid: int | str, file: str, field: str) -> int:
    """A ``field:  N kB`` line of /proc/PID/FILE, in KiB (0 once the process is gone)."""
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _child_pids() -> list[int]:
    pids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


class MemoryWatch:
    """Polls this process and its DataLoader workers: peak PSS of the whole group (shared pages counted once,
    split among their users) and this process's own high-water RSS (VmHWM, reset by exec -- unlike
    ``ru_maxrss``, which Linux carries over from the parent that forked us)."""

    def __init__(self, interval: float = 0.05):
        import threading

        self.interval, self.peak_group_pss_kib, self.stop = interval, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            total = sum(_proc_kib(pid, "smaps_rollup", "Pss") for pid in ["self", *_child_pids()])
            self.peak_group_pss_kib = max(self.peak_group_pss_kib, total)
            self.stop.wait(self.interval)

    def close(self) -> dict:
        self.stop.set()
        self.thread.join()
        return {"peak_main_rss_mib": _proc_kib("self", "status", "VmHWM") / 1024,
                "peak_main_plus_workers_pss_mib": self.peak_group_pss_kib / 1024}


def rss_child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: tokenize, then print peak memory of this process and its workers."""
    torch.manual_seed(0)
    tok = ImageTokenizer.from_preset("vq-tiny")
    config = TokenizeConfig(input=args.child_input, output=args.child_output, model="vq-tiny (random)",
                            size=args.rss_size, batch_size=32, workers=args.workers, shard_size=args.rss_shard_size,
                            progress=False)
    watch = MemoryWatch()
    result = tokenize_dataset(config, tokenizer=tok)
    print(json.dumps(dict(images=result.images, seconds=result.seconds, img_per_s=result.images / result.seconds,
                          **watch.close())))


def memory(args: argparse.Namespace, work: Path) -> list[dict]:
    small = shrunk_copies(photo_list(args.photos), work / "shrunk", args.rss_photo_side)
    rows = []
    for count in args.rss_counts:
        folder = repeat_photos(small, count, work / f"rss_images_{count}")
        cmd = [sys.executable, __file__, "--child-input", str(folder), "--child-output", str(work / f"rss_out_{count}"),
               "--rss-size", str(args.rss_size), "--workers", str(args.workers), "--rss-shard-size", str(args.rss_shard_size)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows.append(dict(json.loads(done.stdout.strip().splitlines()[-1]), count=count))
        print(f"  {count} images: {rows[-1]}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="batch tokenization benchmark")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of photos to repeat")
    parser.add_argument("--images", type=int, default=16, help="images for the vq-f8 throughput run")
    parser.add_argument("--size", type=int, default=256, help="centre-crop side")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rss-counts", type=int, nargs="*", default=[500, 5000], help="image counts for peak RSS")
    parser.add_argument("--rss-shard-size", type=int, default=500)
    parser.add_argument("--rss-size", type=int, default=64, help="centre-crop side of the memory runs")
    parser.add_argument("--rss-photo-side", type=int, default=160, help="short side of the memory runs' photo copies")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--child-input", help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_input:
        rss_child(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench_tokenize_") as tmp:
        work = Path(tmp)
        print(f"cpu cores: {os.cpu_count()}, load average at start: {os.getloadavg()}", flush=True)
        if not args.skip_throughput:
            print("throughput (vq-f8, random weights):", json.dumps(throughput(args, work), indent=2), flush=True)
        if args.rss_counts:
            print("peak RSS (vq-tiny):", flush=True)
            memory(args, work)
        print(f"load average at end: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
