"""Batch tokenization: a folder, a list file or WebDataset tars of images -> shards of token ids.

The one engine behind ``scripts/tokenize_dataset.py`` and ``imgtok tokenize``. Multimodal models tokenize
a dataset once and train on the tokens many times; this writes those tokens so that a run can be killed,
resumed, split over processes, and still give byte-identical output. Inputs and their preprocessing are
``tokenizer.inputs``'s, the output folder's format (and its atomic commits and merge) ``tokenizer.shards``'s;
this module runs the work: decoding in DataLoader workers, encoding in batches, one shard at a time.

How the work is split, and why the output does not depend on the split:
- Inputs are enumerated in a fixed order (``tokenizer.inputs``). Input number i belongs to shard
  ``i // shard_size``, whether it decodes or not, so shard boundaries never move.
- Shard k belongs to rank ``k % world_size``. Within a rank, DataLoader workers decode images (worker w
  takes the rank's inputs w, w + W, ...) and the in-order DataLoader hands them back in input order.
- Batches never span shards and are formed in input order (per shape bucket in native mode), so a shard's
  ids do not depend on which rank wrote it, on the number of workers, or on what ran before a resume.
- A shard whose files are all committed is complete, and a resumed run skips it.

Axis letters: B batch, H/W image size, h/w grid (ceil(H/f), ceil(W/f)).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm  # installed with huggingface_hub, a core dependency

from . import run_lock
from .api import ImageTokenizer
from .image_io import MAX_PIXELS, ImageError
from .inputs import IMAGE_SUFFIXES, InputItem, InputSpec, Preprocess, iter_items, iter_sources, resolve_input
from .shards import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_NAME,
    METADATA_NAME,
    check_or_write_metadata,
    ids_dtype,
    merge_shards,
    remove_stale_temporaries,
    shard_complete,
    write_shard,
)


class TokenizeError(ValueError):
    """Bad arguments or an output folder that does not fit the requested run."""


# --------------------------------------------------------------------------------------------------
# Run settings and metadata
# --------------------------------------------------------------------------------------------------
@dataclass
class TokenizeConfig:
    """One tokenization run.

    Args:
        input: a folder (recursive), a list file (one path per line), or tar shards (path, glob, {a..b}).
        output: the output folder (created; an existing one is resumed if its metadata.json matches).
        model: model folder or Hub repo id (None: the bundled default tokenizer).
        revision: Hub revision of ``model``.
        size: centre-crop side S (the default policy).
        native: keep each image's size (padded to a multiple of f) instead of centre-cropping.
        max_side: native only: shrink images whose longer side exceeds it (None: keep all sizes).
        batch_size: images per forward pass (also the shape-bucket size in native mode).
        workers: DataLoader worker processes decoding images (0: decode in the main process).
        shard_size: input images per shard (failed inputs keep their slot, so boundaries never move).
        device: torch device (None: cuda:LOCAL_RANK when CUDA is available, else cpu).
        rank, world_size: this process's share (None: from RANK/WORLD_SIZE, as torchrun sets them).
        max_shards: stop after writing this many new shards (a time-boxed job; rerun to continue).
        max_pixels: decompression-bomb guard per image (default: ``tokenizer.image_io.MAX_PIXELS``).
        tile_size: tiled encode (``tokenizer.tiling``): None automatic (images above 1 MiP in 512 px tiles),
            0 never, N px tiles; recorded in metadata.json, since tiling can flip a near-tied code.
        progress: print images/s and ETA to stderr.
    """

    input: str
    output: str
    model: str | None = None
    revision: str | None = None
    size: int = 256
    native: bool = False
    max_side: int | None = None
    batch_size: int = 32
    workers: int = 2
    shard_size: int = 1000
    device: str | None = None
    rank: int | None = None
    world_size: int | None = None
    max_shards: int | None = None
    max_pixels: int | None = None
    tile_size: int | None = None
    progress: bool = True

    def validate(self) -> None:
        if self.tile_size is not None and self.tile_size < 0:
            raise TokenizeError(f"tile_size = {self.tile_size}; expected 0 (never tile) or a positive integer")
        for name in ("size", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise TokenizeError(f"{name} = {getattr(self, name)}; expected a positive integer")
        if self.workers < 0:
            raise TokenizeError(f"workers = {self.workers}; expected 0 or more")
        if self.max_side is not None and self.max_side < 1:
            raise TokenizeError(f"max_side = {self.max_side}; expected a positive integer")
        if self.max_shards is not None and self.max_shards < 0:
            raise TokenizeError(f"max_shards = {self.max_shards}; expected 0 or more")


@dataclass
class TokenizeResult:
    """What one call of ``tokenize_dataset`` did."""

    output: Path
    rank: int
    world_size: int
    num_inputs: int  # inputs in the whole dataset (all ranks)
    num_shards: int  # shards in the whole dataset
    shards_written: int  # by this call
    shards_skipped: int  # this rank's shards already complete (resume)
    images: int  # images tokenized by this call
    errors: int  # inputs that failed in this call
    merged: bool  # index.jsonl / errors.jsonl written (every shard exists)
    seconds: float


def _rank_and_world(config: TokenizeConfig) -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank = int(os.environ.get("RANK", 0)) if config.rank is None else config.rank
        world = int(os.environ.get("WORLD_SIZE", 1)) if config.world_size is None else config.world_size
    if world < 1 or not 0 <= rank < world:
        raise TokenizeError(f"rank {rank} of world size {world}; expected 0 <= rank < world_size")
    return rank, world


def _device(config: TokenizeConfig) -> torch.device:
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if config.device is not None:
        device = torch.device(config.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # else every rank opens a CUDA context (and allocates) on GPU 0
    return device


def _model_record(tok: ImageTokenizer, config: TokenizeConfig) -> dict[str, Any]:
    """Which weights made the ids: name (the shipped models by their name, tokenizer/shipped.py), version,
    sha256 of the weights, and the name or path as given."""
    identity = tok.identity.to_dict()
    if config.model is not None and identity["name"] == "in-memory":  # a tokenizer passed in, named by config
        identity["name"] = str(config.model)
    given = config.model if config.model is not None else identity["name"]
    return {
        **identity,
        "name_or_path": str(given),
        "revision": config.revision,
        "model_type": tok.config.model_type,
        "downsample_factor": tok.downsample_factor,
        "vocab_size": tok.vocab_size,
        "depth": tok.depth,
    }


def _tiling_record(tile_size: int | None) -> dict[str, Any]:
    """How images are tiled (``tokenizer.tiling``): the same settings give the same ids on any machine."""
    from . import tiling

    return {"tile_size": tile_size, "threshold_pixels": tiling.TILE_THRESHOLD_PIXELS,
            "default_tile_size": tiling.DEFAULT_TILE_SIZE, "halo_pixels": tiling.HALO_PIXELS}


def _metadata(tok: ImageTokenizer, config: TokenizeConfig, spec: InputSpec, preprocess: Preprocess,
              num_inputs: int, device: torch.device) -> dict[str, Any]:
    from . import __version__

    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "imgtok_version": __version__,
        "model": _model_record(tok, config),
        "preprocessing": preprocess.to_dict(),
        "vocab_size": tok.vocab_size,
        "dtype": ids_dtype(tok.vocab_size).name,
        "input": {"kind": spec.kind, "spec": spec.spec, "num_inputs": num_inputs},
        "shard_size": config.shard_size,
        "num_shards": math.ceil(num_inputs / config.shard_size),
        # Batch composition and the device's kernels can flip near-tied codes: a resume must keep both.
        "encode": {"batch_size": config.batch_size, "device_type": device.type, "dtype": str(tok.dtype).replace("torch.", ""),
                   "tiling": _tiling_record(config.tile_size)},
    }


# --------------------------------------------------------------------------------------------------
# Decoding in DataLoader workers
# --------------------------------------------------------------------------------------------------
class _DecodeStream(IterableDataset):
    """Yields one record per pending input, in input order: decoded pixels, or the reason it failed.

    Worker w of W takes the pending inputs w, w + W, ...; the in-order DataLoader interleaves the workers
    round-robin, which restores input order. Every input yields exactly one record, failed or not, so
    the interleaving never shifts.
    """

    def __init__(self, spec: InputSpec, shard_size: int, pending: frozenset[int], preprocess: Preprocess,
                 max_pixels: int):
        self.spec, self.shard_size, self.pending = spec, shard_size, pending
        self.preprocess, self.max_pixels = preprocess, max_pixels

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        position = 0
        for index, item in enumerate(iter_items(self.spec, self.max_pixels)):
            if index // self.shard_size not in self.pending:
                continue
            mine = position % workers == worker
            position += 1
            if mine:
                yield self._load(index, item)

    def _load(self, index: int, item: InputItem) -> dict[str, Any]:
        record: dict[str, Any] = {"index": index, "key": item.source.key, "source": item.source.description}
        try:
            image = item.read_image()  # (3, H, W) in [0, 1]
            side = {ext: read() for ext, read in item.side.items()}
            record.update(pixels=self.preprocess(image), height=image.shape[-2], width=image.shape[-1], side=side)
        # A bad image or side file is recorded and the run goes on (RuntimeError: a tensor op on odd data).
        except (ImageError, OSError, ValueError, RuntimeError, tarfile.TarError) as err:
            record["error"] = f"{type(err).__name__}: {err}"
        return record


def _worker_init(_: int) -> None:
    # Decoding needs no intra-op threads; they would only compete with the encoder for cores.
    torch.set_num_threads(1)


def _identity(record: dict[str, Any]) -> dict[str, Any]:
    return record


# --------------------------------------------------------------------------------------------------
# Encoding and writing one shard
# --------------------------------------------------------------------------------------------------
class _ShardWriter:
    """Collects one shard's records, encodes them in batches per shape, writes the shard atomically."""

    # Native mode: decoded images waiting in partly filled shape buckets, in batches' worth.
    MAX_PENDING_BATCHES = 4

    def __init__(self, shard: int, out: Path, tok: ImageTokenizer, batch_size: int, dtype: np.dtype,
                 tile_size: int | None = None):
        self.shard, self.out, self.tok, self.batch_size, self.dtype = shard, out, tok, batch_size, dtype
        self.tile_size = tile_size
        self.rows: dict[int, dict[str, Any]] = {}
        self.ids: dict[int, np.ndarray] = {}
        self.errors: list[dict[str, Any]] = []
        self.buckets: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}

    def add(self, record: dict[str, Any]) -> None:
        index = record["index"]
        if "error" in record:
            self.errors.append({"key": record["key"], "source": record["source"], "shard": self.shard,
                                "input_index": index, "error": record["error"]})
            return
        row = {"key": record["key"], "source": record["source"], "shard": self.shard, "input_index": index,
               "height": record["height"], "width": record["width"]}
        row.update(record["side"])
        self.rows[index] = row
        pixels = record["pixels"]
        bucket = self.buckets.setdefault(tuple(pixels.shape[-2:]), [])
        bucket.append((index, pixels))
        if len(bucket) == self.batch_size:
            self._encode(bucket)
        elif sum(len(b) for b in self.buckets.values()) > self.MAX_PENDING_BATCHES * self.batch_size:
            self._encode(max(self.buckets.values(), key=len))  # bounded memory with many shapes

    @torch.no_grad()
    def _encode(self, bucket: list[tuple[int, torch.Tensor]]) -> None:
        batch = torch.stack([pixels for _, pixels in bucket])  # (B, 3, H, W) in [0, 1]
        ids = self.tok.encode_pixels(batch, tile_size=self.tile_size).cpu().numpy().astype(self.dtype)  # (B, h, w) or (B, h, w, depth), as tok.encode gives
        for (index, _), grid in zip(bucket, ids):
            self.ids[index] = grid
        bucket.clear()

    def finish(self) -> None:
        for bucket in list(self.buckets.values()):
            if bucket:
                self._encode(bucket)
        order = sorted(self.rows)
        write_shard(self.out, self.shard, [self.rows[i] for i in order], [self.ids[i] for i in order],
                    self.errors, self.dtype)

    @property
    def num_images(self) -> int:
        return len(self.rows)


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def _load_tokenizer(config: TokenizeConfig, device: torch.device) -> ImageTokenizer:
    return ImageTokenizer.from_pretrained(config.model, revision=config.revision, device=device)


def tokenize_dataset(config: TokenizeConfig, tokenizer: ImageTokenizer | None = None) -> TokenizeResult:
    """Tokenize ``config.input`` into shards in ``config.output`` (this rank's share), resuming if possible.

    Args:
        config: the run (see ``TokenizeConfig``).
        tokenizer: an already loaded tokenizer (else ``config.model`` is loaded); ``config.model`` still
            names it in metadata.json.
    """
    started = time.monotonic()
    config.validate()
    rank, world = _rank_and_world(config)
    out = Path(config.output)
    new_folder = not out.exists()
    # First of all, so that a second run on this folder exits at once, before loading anything.
    try:
        lock = run_lock.acquire(out, _job_id(config, world))
    except run_lock.FolderLockedError as err:
        raise TokenizeError(str(err)) from None
    finished = False
    try:
        result = _run(config, tokenizer, out, rank, world, started)
        finished = result.merged or world == 1
        return result
    finally:
        if finished or world == 1:  # a rank done before its job is leaves the lock to the others
            lock.release()
            if new_folder and not any(out.iterdir()):
                out.rmdir()  # a run that failed before writing anything leaves no folder behind


def _job_id(config: TokenizeConfig, world: int) -> str:
    """Which processes share the output folder's lock: ``run_lock.job_id()``; ranks started by hand with
    --rank/--world-size (no torchrun) share it when they name the same input, output and model."""
    explicit = config.world_size is not None and world > 1 and not (
        torch.distributed.is_available() and torch.distributed.is_initialized())
    if explicit and not os.environ.get("MASTER_PORT"):
        return f"ranks:{world}:{config.input}:{os.path.abspath(config.output)}:{config.model}"
    return run_lock.job_id()


def _run(config: TokenizeConfig, tokenizer: ImageTokenizer | None, out: Path, rank: int, world: int,
         started: float) -> TokenizeResult:
    """``tokenize_dataset`` once the folder is locked: count the inputs, check or write metadata.json, then
    this rank's shards."""
    device = _device(config)
    spec = resolve_input(config.input)
    tok = tokenizer.to(device) if tokenizer is not None else _load_tokenizer(config, device)
    tok.eval()
    max_pixels = MAX_PIXELS if config.max_pixels is None else config.max_pixels
    preprocess = Preprocess(
        policy="native" if config.native else "center_crop", size=None if config.native else config.size,
        multiple_of=tok.downsample_factor, max_side=config.max_side if config.native else None,
    )
    # A header-only pass: the total gives the shard count (so any rank knows when all shards exist) and the ETA.
    # Damaged archives and link members count as inputs that fail (inputs.iter_tar): nothing is lost unrecorded.
    num_inputs = sum(1 for _ in iter_sources(spec))
    if num_inputs == 0:
        raise TokenizeError(f"--input {config.input}: no images found (suffixes {sorted(IMAGE_SUFFIXES)})")
    metadata = _metadata(tok, config, spec, preprocess, num_inputs, device)
    _check_same_inputs(out, metadata)
    check_or_write_metadata(out, metadata, TokenizeError)
    num_shards = math.ceil(num_inputs / config.shard_size)
    owned = [k for k in range(num_shards) if k % world == rank]
    remove_stale_temporaries(out, lambda k: k % world == rank)
    done = {k for k in owned if shard_complete(out, k)}
    todo = [k for k in owned if k not in done]
    if config.max_shards is not None:
        todo = todo[: config.max_shards]
    total = sum(min(config.shard_size, num_inputs - k * config.shard_size) for k in todo)

    # On a terminal every second; in a log file every 15 s, so that logs stay short.
    progress = tqdm(total=total, disable=not config.progress, unit="img", file=sys.stderr, dynamic_ncols=True,
                    desc=f"rank {rank}/{world}" if world > 1 else "tokenize",
                    mininterval=1.0 if sys.stderr.isatty() else 15.0)
    written = images = errors = 0
    if todo:
        stream = _DecodeStream(spec, config.shard_size, frozenset(todo), preprocess, max_pixels)
        loader = DataLoader(
            stream, batch_size=None, num_workers=config.workers, collate_fn=_identity,
            worker_init_fn=_worker_init if config.workers else None, pin_memory=device.type == "cuda",
            prefetch_factor=4 if config.workers else None,  # the bounded queue: 4 images per worker
        )
        dtype = ids_dtype(tok.vocab_size)
        writer: _ShardWriter | None = None
        for record in loader:
            shard = record["index"] // config.shard_size
            if writer is None or writer.shard != shard:
                if writer is not None:
                    writer.finish()
                    written += 1
                writer = _ShardWriter(shard, out, tok, config.batch_size, dtype, config.tile_size)
            had_error = "error" in record
            writer.add(record)
            images += 0 if had_error else 1
            errors += 1 if had_error else 0
            progress.update(1)
            if had_error:
                progress.set_postfix(errors=errors, refresh=False)
        if writer is not None:
            writer.finish()
            written += 1
    progress.close()

    merged = _merge_after_run(out, num_shards)
    return TokenizeResult(
        output=out, rank=rank, world_size=world, num_inputs=num_inputs, num_shards=num_shards,
        shards_written=written, shards_skipped=len(done), images=images, errors=errors, merged=merged,
        seconds=time.monotonic() - started,
    )


def _check_same_inputs(out: Path, metadata: dict[str, Any]) -> None:
    """A folder started on other inputs (an archive repaired or added since): say why it cannot be resumed."""
    try:
        existing = json.loads((out / METADATA_NAME).read_text(encoding="utf-8"))["input"]["num_inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no folder yet, or check_or_write_metadata names what is wrong with it
    now = metadata["input"]["num_inputs"]
    if existing != now:
        raise TokenizeError(
            f"{out}: was started on {existing} inputs and --input {metadata['input']['spec']} now has {now} "
            "(an archive repaired or changed since?); the shards written number the inputs by their place, "
            "so they cannot be completed with these inputs: write to a new --output (its errors.jsonl lists "
            "what the first run could not read)"
        )


def _merge_after_run(out: Path, num_shards: int) -> bool:
    """Under torch.distributed: wait for all ranks, rank 0 merges. Otherwise whoever sees every shard merges."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        merged = merge_shards(out).complete if dist.get_rank() == 0 else False
        dist.barrier()
        return merged or all(shard_complete(out, k) for k in range(num_shards))
    return merge_shards(out).complete


# --------------------------------------------------------------------------------------------------
# Command line (shared by scripts/tokenize_dataset.py and `imgtok tokenize`)
# --------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The tokenize command's options (one definition for both front ends)."""
    parser.add_argument("--model", default=None, help="imgtok-vq-f8 (alias bundled), a model folder or a Hub repo id "
                                                      "(default: imgtok-vq-f8)")
    parser.add_argument("--revision", default=None, help="Hub revision of --model")
    parser.add_argument("--input", required=True,
                        help="a folder (recursive), a list file (one path per line) or tar shards (glob or {000..009})")
    parser.add_argument("--output", required=True, help="output folder (re-run the same command to resume)")
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument("--size", type=int, default=256, help="centre-crop side S (default 256)")
    policy.add_argument("--native", action="store_true",
                        help="keep each image's size, padded to a multiple of f, batched by shape")
    parser.add_argument("--max-side", type=int, default=None, help="with --native: shrink longer sides above this")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="image-decoding worker processes (default 2)")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda:LOCAL_RANK if available, else cpu)")
    parser.add_argument("--rank", type=int, default=None, help="this process's rank (default: $RANK or 0)")
    parser.add_argument("--world-size", type=int, default=None, help="number of processes (default: $WORLD_SIZE or 1)")
    parser.add_argument("--max-shards", type=int, default=None, help="stop after writing this many new shards")
    parser.add_argument("--tile-size", type=int, default=None, metavar="PX",
                        help="tiled encode: tile side in pixels (default: images above 1 MiP in 512 px tiles; 0: never)")
    parser.add_argument("--merge-only", action="store_true",
                        help="only merge the shards' indexes in --output (after a multi-process run)")
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run the tokenize command from parsed ``add_arguments`` options; print a summary; exit code."""
    if args.merge_only:
        merged = merge_shards(args.output)
        if not merged.complete:
            print(f"{args.output}: {len(merged.missing)} of {merged.num_shards} shards missing "
                  f"(first {merged.missing[:5]}); run the remaining ranks first", file=sys.stderr)
            return 1
        print(f"{args.output}: merged {merged.num_shards} shards: {merged.images} images, {merged.errors} errors")
        return 0
    config = TokenizeConfig(
        input=args.input, output=args.output, model=args.model, revision=args.revision, size=args.size,
        native=args.native, max_side=args.max_side, batch_size=args.batch_size, workers=args.workers,
        shard_size=args.shard_size, device=args.device, rank=args.rank, world_size=args.world_size,
        max_shards=args.max_shards, tile_size=args.tile_size, progress=not args.no_progress,
    )
    try:
        result = tokenize_dataset(config)
    except KeyboardInterrupt:  # Ctrl-C: one line saying what is kept and how to go on, not a traceback
        print(f"\ninterrupted: {_progress_summary(Path(args.output))}; finished shards are kept: re-run the same "
              "command to resume", file=sys.stderr)
        return 130
    where = f"rank {result.rank}/{result.world_size}: " if result.world_size > 1 else ""
    print(f"{where}{result.images} images tokenized, {result.errors} errors, {result.shards_written} shards written, "
          f"{result.shards_skipped} already done, {result.seconds:.1f} s -> {result.output}")
    if result.merged:
        print(f"all {result.num_shards} shards complete: {result.output / INDEX_NAME}")
    else:
        print(f"{result.output}: shards still missing (other ranks, or --max-shards); re-run to continue, "
              "or merge later with --merge-only")
    return 0


def _progress_summary(out: Path) -> str:
    """``"3 of 10 shards complete in OUT"`` from what is on disk (the run's own counters may be mid-update)."""
    try:
        total = int(json.loads((out / METADATA_NAME).read_text(encoding="utf-8"))["num_shards"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"no shard finished in {out}"
    done = sum(shard_complete(out, k) for k in range(total))
    return f"{done} of {total} shards complete in {out}"


def add_cli_command(subparsers: Any) -> None:
    """Register ``imgtok tokenize`` on the ``imgtok`` CLI's subparsers."""
    help_text = "tokenize a folder, list file or tar shards of images into token shards (resumable)"
    parser = subparsers.add_parser("tokenize", help=help_text, description=help_text)
    add_arguments(parser)
    parser.set_defaults(func=run_from_args)
