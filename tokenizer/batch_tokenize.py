"""Batch tokenization: a folder, a list file or WebDataset tars of images -> shards of token ids.

The one engine behind ``scripts/tokenize_dataset.py`` and ``imgtok tokenize``. Multimodal models tokenize
a dataset once and train on the tokens many times; this writes those tokens so that a run can be killed,
resumed, split over processes, and still give byte-identical output.

Output folder::

    metadata.json                  model (path or repo id, revision, sha256), preprocessing, dtype, shard size
    shard-000000.safetensors       "ids": 1-D uint16 (int32 if vocab > 65536), the flattened grids end to end
    shard-000000.errors.jsonl      one row per input of the shard that failed, with the reason
    shard-000000.index.jsonl       one row per image: key, source, shard, offset (tokens), h, w, original size
    index.jsonl, errors.jsonl      every shard's rows in order, written once all shards exist (the merge)

How the work is split, and why the output does not depend on the split:
- Inputs are enumerated in a fixed order (directories sorted entry by entry; list files in their own order;
  tars sorted by name, members in tar order). Input number i belongs to shard ``i // shard_size``, whether
  it decodes or not, so shard boundaries never move.
- Shard k belongs to rank ``k % world_size``. Within a rank, DataLoader workers decode images (worker w
  takes the rank's inputs w, w + W, ...) and the in-order DataLoader hands them back in input order.
- Batches never span shards and are formed in input order (per shape bucket in native mode), so a shard's
  ids do not depend on which rank wrote it, on the number of workers, or on what ran before a resume.
- A shard is committed by renaming its index file into place after its safetensors and errors files
  (each written to a temporary name, fsynced and renamed): a shard whose index exists is complete, and a
  resumed run skips it.

Axis letters: B batch, H/W image size, h/w grid (ceil(H/f), ceil(W/f)).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import re
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .api import ImageTokenizer
from .image_io import MAX_PIXELS, ImageError, decode_image_bytes, read_image

FORMAT_NAME = "imgtok-token-shards"
FORMAT_VERSION = 1
METADATA_NAME = "metadata.json"
INDEX_NAME = "index.jsonl"
ERRORS_NAME = "errors.jsonl"
IDS_TENSOR = "ids"
# Suffixes treated as images. Formats Pillow cannot open here (e.g. HEIC) are still listed, so that such
# files land in the errors file with a reason instead of being silently ignored.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
     ".pnm", ".tga", ".jp2", ".avif", ".heic", ".heif"}
)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LIST_SUFFIXES = (".txt", ".lst", ".list")
# WebDataset side files carried into the index (parsed JSON / text).
SIDE_EXTENSIONS = ("json", "txt")


class TokenizeError(ValueError):
    """Bad arguments or an output folder that does not fit the requested run."""


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}"


def ids_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else int32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputSpec:
    """What ``--input`` names: a folder, a list file, or tar shards (a path, glob or ``{000..009}`` range)."""

    kind: str  # "folder", "list" or "tar"
    spec: str  # the argument as given (recorded in metadata.json)
    tars: tuple[str, ...] = ()  # kind "tar": the tar files, sorted


@dataclass(frozen=True)
class Source:
    """One input image: its key (path relative to the input, or the tar member's key) and where it lives."""

    key: str
    path: str  # the image file, or the tar file holding it
    member: str | None = None  # the image member inside the tar

    @property
    def description(self) -> str:
        return self.path if self.member is None else f"{self.path}:{self.member}"


def _expand_braces(spec: str) -> list[str]:
    """WebDataset-style numeric ranges: ``shards-{000..012}.tar`` -> 13 names, zero padding kept."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", spec)
    if match is None:
        return [spec]
    first, last = match.group(1), match.group(2)
    width = len(first)
    head, tail = spec[: match.start()], spec[match.end():]
    out: list[str] = []
    for n in range(int(first), int(last) + 1):
        out += _expand_braces(f"{head}{n:0{width}d}{tail}")
    return out


def resolve_input(spec: str | os.PathLike) -> InputSpec:
    """Classify ``--input``: an existing folder, a tar (or glob / brace range of tars), or a list file.

    Raises:
        FileNotFoundError: nothing matches.
    """
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        return InputSpec("folder", text)
    is_pattern = any(ch in text for ch in "*?[") or re.search(r"\{\d+\.\.\d+\}", text) is not None
    if is_pattern or text.endswith(TAR_SUFFIXES):
        names: list[str] = []
        for part in _expand_braces(text):
            matches = sorted(glob.glob(part)) if any(ch in part for ch in "*?[") else [part]
            names += [m for m in matches if Path(m).is_file()]
        tars = sorted(set(n for n in names if n.endswith(TAR_SUFFIXES)))
        if not tars:
            raise FileNotFoundError(f"--input {text}: no tar files match (expected .tar/.tar.gz/.tgz shards)")
        return InputSpec("tar", text, tuple(tars))
    if path.is_file():
        return InputSpec("list", text)
    raise FileNotFoundError(f"--input {text}: no such folder, list file or tar shards")


def _walk_sorted(root: Path, rel: str = "") -> Iterator[str]:
    """Image paths under ``root`` relative to it, sorted entry by entry (a stream: memory is one directory).

    Hidden entries are skipped; symlinked files are followed, symlinked directories are not (no loops).
    """
    with os.scandir(root / rel if rel else root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):  # .DS_Store, AppleDouble "._x.jpg" files, .git
            continue
        name = f"{rel}/{entry.name}" if rel else entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_sorted(root, name)
        elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
            yield name


def _iter_list(list_file: Path) -> Iterator[tuple[str, str]]:
    """(key, path) per non-empty, non-comment line; relative paths are relative to the list file."""
    base = list_file.parent
    with open(list_file, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                path = Path(line)
                yield line, str(path if path.is_absolute() else base / path)


def _tar_key(name: str) -> tuple[str, str]:
    """WebDataset convention: ``dir/abc.seg.png`` -> key ``dir/abc``, extension ``seg.png``."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


# A reader of one member's bytes, valid only while its tar is being iterated.
_ReadMember = Callable[[], bytes]


def _parse_side(ext: str, data: bytes, where: str) -> Any:
    """A side file's content: parsed JSON for ``json``, text for ``txt`` (UTF-8)."""
    try:
        text = data.decode("utf-8")
        return json.loads(text) if ext == "json" else text
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"{where}: side file is not valid UTF-8 {'JSON' if ext == 'json' else 'text'} ({err})") from err


@dataclass
class _Item:
    """One input as the enumeration yields it: its source plus how to read its bytes right now."""

    source: Source
    read_image: Callable[[], torch.Tensor]
    side: dict[str, Callable[[], Any]] = field(default_factory=dict)  # extension -> parsed content


def _iter_tar(tar_path: str, max_pixels: int) -> Iterator[_Item]:
    """Groups of adjacent members sharing a key -> one item per group that has an image member."""

    def item(key: str, members: list[tarfile.TarInfo], tf: tarfile.TarFile) -> _Item | None:
        # The image is the member whose whole extension is an image's ("key.jpg", not "key.seg.png").
        images = [m for m in members if "." + _tar_key(m.name)[1] in IMAGE_EXTENSIONS]
        if not images:
            return None
        image = images[0]

        def read_member(member: tarfile.TarInfo) -> _ReadMember:
            def read() -> bytes:
                f = tf.extractfile(member)
                if f is None:
                    raise ImageError(f"{tar_path}:{member.name}: not a regular file")
                return f.read()

            return read

        def read_pixels() -> torch.Tensor:
            return decode_image_bytes(read_member(image)(), f"{tar_path}:{image.name}", max_pixels)

        def read_side(ext: str, member: tarfile.TarInfo) -> Callable[[], Any]:
            return lambda: _parse_side(ext, read_member(member)(), f"{tar_path}:{member.name}")

        side = {ext: read_side(ext, m) for m in members if (ext := _tar_key(m.name)[1]) in SIDE_EXTENSIONS}
        return _Item(Source(key, tar_path, image.name), read_pixels, side)

    try:
        with tarfile.open(tar_path, "r:*") as tf:
            key, group = None, []
            for member in tf:  # reads headers only; a member's data is read when (and if) it is asked for
                if not member.isfile():
                    continue
                member_key = _tar_key(member.name)[0]
                if group and member_key != key:
                    found = item(key, group, tf)
                    if found is not None:
                        yield found
                    group = []
                key = member_key
                group.append(member)
            if group:
                found = item(key, group, tf)
                if found is not None:
                    yield found
    except tarfile.TarError as err:
        # A damaged tar cannot be walked past: stop before writing anything (the count pass meets it first).
        raise TokenizeError(f"{tar_path}: not a readable tar archive ({err}); expected WebDataset .tar shards") from err


def iter_items(spec: InputSpec, max_pixels: int = MAX_PIXELS) -> Iterator[_Item]:
    """Every input of ``spec`` in the fixed order that numbers them (a stream)."""
    if spec.kind == "folder":
        root = Path(spec.spec)
        for rel in _walk_sorted(root):
            path = str(root / rel)
            yield _Item(Source(rel, path), lambda p=path: read_image(p, max_pixels))
    elif spec.kind == "list":
        for key, path in _iter_list(Path(spec.spec)):
            yield _Item(Source(key, path), lambda p=path: read_image(p, max_pixels))
    else:
        for tar_path in spec.tars:
            yield from _iter_tar(tar_path, max_pixels)


def iter_sources(spec: InputSpec | str) -> Iterator[Source]:
    """The inputs' keys and locations, in order (nothing is decoded)."""
    spec = spec if isinstance(spec, InputSpec) else resolve_input(spec)
    for item in iter_items(spec):
        yield item.source


# --------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preprocess:
    """The preprocessing policy, recorded in metadata.json.

    ``center_crop``: the central square (side = the short side) resized to size x size (bicubic,
    antialiased when shrinking, clamped to [0, 1]) -- the common training crop. ``native``: each image
    keeps its size (shrunk to ``max_side`` first if given), edge-padded to a multiple of f; batches group
    images of one padded shape (shape buckets), so they stay dense.
    """

    policy: str  # "center_crop" or "native"
    size: int | None  # center_crop: output side
    multiple_of: int  # the model's downsampling factor f
    max_side: int | None = None  # native: longer side limit (None: any size up to max_pixels)
    resample: str = "bicubic"
    pad: str = "replicate"

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) in [0, 1] -> the model's input image in [0, 1] (before the [-1, 1] mapping)."""
        if self.policy == "center_crop":
            return center_crop(image, self.size)
        return pad_to_multiple(shrink_to_max_side(image, self.max_side), self.multiple_of)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.policy == "center_crop":
            data.pop("max_side")
        else:
            data.pop("size")
        return data


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) -> (3, *size), bicubic; antialiased when shrinking (a box-like prefilter against aliasing)."""
    if tuple(image.shape[-2:]) == size:
        return image
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    out = F.interpolate(image[None], size=size, mode="bicubic", antialias=shrink, align_corners=False)  # (1, 3, *size)
    return out[0].clamp(0.0, 1.0)  # bicubic overshoots at edges


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) -> (3, size, size): the central short-side square, resized. Cropping first resizes fewer pixels."""
    _, height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return _resize(image[:, top : top + side, left : left + side], (size, size))


def shrink_to_max_side(image: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """(3, H, W) -> at most ``max_side`` on the longer side, aspect kept (never enlarged)."""
    _, height, width = image.shape
    if max_side is None or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    return _resize(image, (max(1, round(height * scale)), max(1, round(width * scale))))


def pad_to_multiple(image: torch.Tensor, f: int) -> torch.Tensor:
    """(3, H, W) -> (3, f*ceil(H/f), f*ceil(W/f)), edge-padded as ``ImageTokenizer.encode`` pads."""
    _, height, width = image.shape
    pad_h, pad_w = (-height) % f, (-width) % f
    if not (pad_h or pad_w):
        return image
    return F.pad(image[None], (0, pad_w, 0, pad_h), mode="replicate")[0]  # (3, H + pad_h, W + pad_w)


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
    progress: bool = True

    def validate(self) -> None:
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
    if config.device is not None:
        return torch.device(config.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _model_record(tok: ImageTokenizer, config: TokenizeConfig) -> dict[str, Any]:
    """Which weights made the ids: name or path, revision, sha256 of model.safetensors."""
    from safetensors.torch import save as save_bytes

    from .checkpoints import WEIGHTS_NAME, sha256_of

    folder = getattr(tok, "folder", None)
    if folder is not None and (Path(folder) / WEIGHTS_NAME).is_file():
        sha = sha256_of(Path(folder) / WEIGHTS_NAME)
        name = config.model if config.model is not None else getattr(tok, "source", "bundled")
    else:
        # A tokenizer built in memory: hash its weights as save_pretrained would write them.
        state = {k: v.detach().contiguous().cpu() for k, v in tok.model.state_dict().items()}
        sha = hashlib.sha256(save_bytes(state, metadata={"format": "pt", "library": "imgtok"})).hexdigest()
        name = config.model if config.model is not None else "in-memory"
    return {
        "name_or_path": str(name),
        "revision": config.revision,
        "sha256": sha,
        "model_type": tok.config.model_type,
        "downsample_factor": tok.downsample_factor,
        "vocab_size": tok.vocab_size,
    }


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
        "encode": {"batch_size": config.batch_size, "device_type": device.type, "dtype": str(tok.dtype).replace("torch.", "")},
    }


def _json_line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, fsync, rename: readers see the old file or the whole new one."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_or_write_metadata(out: Path, metadata: dict[str, Any]) -> None:
    path = out / METADATA_NAME
    text = json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise TokenizeError(f"{path}: unreadable ({err}); remove the output folder or choose another") from err
        if existing != metadata:
            diffs = [k for k in sorted(set(existing) | set(metadata)) if existing.get(k) != metadata.get(k)]
            raise TokenizeError(
                f"{out}: holds shards made with other settings ({', '.join(diffs)} differ from this run); "
                "resume with the same model, input, preprocessing, shard size, batch size and device type, "
                "or write to a new --output"
            )
        return
    _write_atomic(path, text.encode("utf-8"))


def shard_complete(out: Path, shard: int) -> bool:
    """A shard is complete once its index file exists (renamed into place last)."""
    name = shard_name(shard)
    return all((out / f"{name}{suffix}").is_file() for suffix in (".safetensors", ".errors.jsonl", ".index.jsonl"))


def _remove_stale_temporaries(out: Path, owned: Callable[[int], bool]) -> None:
    """Temporary files a killed run of this rank left behind (other ranks' may still be in use)."""
    for tmp in out.glob("shard-*.tmp-*"):
        match = re.match(r"shard-(\d+)\.", tmp.name)
        if match and owned(int(match.group(1))):
            tmp.unlink(missing_ok=True)


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

    def _load(self, index: int, item: _Item) -> dict[str, Any]:
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

    def __init__(self, shard: int, out: Path, tok: ImageTokenizer, batch_size: int, dtype: np.dtype):
        self.shard, self.out, self.tok, self.batch_size, self.dtype = shard, out, tok, batch_size, dtype
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
        # The tokenizer's own [0, 1] -> [-1, 1] mapping and device/dtype move, so ids match tok.encode.
        x = self.tok._to_model_input(batch)  # (B, 3, H, W) in [-1, 1] on the model's device and dtype
        ids = self.tok.model.encode_ids(x).cpu().numpy().astype(self.dtype)  # (B, h, w)
        for (index, _), grid in zip(bucket, ids):
            self.ids[index] = grid
        bucket.clear()

    def finish(self) -> None:
        for bucket in list(self.buckets.values()):
            if bucket:
                self._encode(bucket)
        from safetensors.numpy import save as save_bytes

        offset, flat, lines = 0, [], []
        for index in sorted(self.rows):
            grid = self.ids[index]
            h, w = grid.shape
            row = self.rows[index]
            row.update(offset=offset, h=h, w=w)
            lines.append(_json_line(_ordered_row(row)))
            flat.append(grid.reshape(-1))  # (h, w) -> (h*w,), row-major
            offset += h * w
        ids = np.concatenate(flat) if flat else np.zeros(0, dtype=self.dtype)
        name = shard_name(self.shard)
        # One metadata key: safetensors writes its metadata map in hash order, which varies between processes.
        header = json.dumps({"format": FORMAT_NAME, "shard": self.shard}, separators=(",", ":"))
        tensor_bytes = save_bytes({IDS_TENSOR: ids}, metadata={"imgtok": header})
        _write_atomic(self.out / f"{name}.safetensors", tensor_bytes)
        _write_atomic(self.out / f"{name}.errors.jsonl", "".join(map(_json_line, self.errors)).encode("utf-8"))
        _write_atomic(self.out / f"{name}.index.jsonl", "".join(lines).encode("utf-8"))  # the commit

    @property
    def num_images(self) -> int:
        return len(self.rows)


_ROW_ORDER = ("key", "source", "shard", "offset", "h", "w", "height", "width", "input_index")


def _ordered_row(row: dict[str, Any]) -> dict[str, Any]:
    """Index rows with a fixed field order (byte-stable files), side-file fields last."""
    ordered = {k: row[k] for k in _ROW_ORDER}
    ordered.update((k, v) for k, v in row.items() if k not in ordered)
    return ordered


# --------------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------------
class _Progress:
    """A one-line progress report on stderr: done/total, images/s, ETA, errors (no dependency)."""

    def __init__(self, total: int, enabled: bool, prefix: str = ""):
        self.total, self.enabled, self.prefix = total, enabled, prefix
        self.done = self.errors = 0
        self.start = self.last = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.interval = 1.0 if self.tty else 15.0

    def update(self, images: int, errors: int) -> None:
        self.done += images + errors
        self.errors += errors
        now = time.monotonic()
        if self.enabled and now - self.last >= self.interval:
            self.last = now
            self._print(now, final=False)

    def _print(self, now: float, final: bool) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_text = "--" if math.isinf(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
        line = (f"{self.prefix}{self.done}/{self.total} images  {rate:.1f} img/s  "
                f"ETA {eta_text}  errors {self.errors}")
        end = "\n" if final or not self.tty else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            self._print(time.monotonic(), final=True)


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
    num_inputs = sum(1 for _ in iter_sources(spec))
    if num_inputs == 0:
        raise TokenizeError(f"--input {config.input}: no images found (suffixes {sorted(IMAGE_EXTENSIONS)})")
    num_shards = math.ceil(num_inputs / config.shard_size)

    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    _check_or_write_metadata(out, _metadata(tok, config, spec, preprocess, num_inputs, device))
    owned = [k for k in range(num_shards) if k % world == rank]
    _remove_stale_temporaries(out, lambda k: k % world == rank)
    done = {k for k in owned if shard_complete(out, k)}
    todo = [k for k in owned if k not in done]
    if config.max_shards is not None:
        todo = todo[: config.max_shards]
    total = sum(min(config.shard_size, num_inputs - k * config.shard_size) for k in todo)

    prefix = f"[rank {rank}/{world}] " if world > 1 else ""
    progress = _Progress(total, config.progress, prefix)
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
                writer = _ShardWriter(shard, out, tok, config.batch_size, dtype)
            had_error = "error" in record
            writer.add(record)
            images += 0 if had_error else 1
            errors += 1 if had_error else 0
            progress.update(0 if had_error else 1, 1 if had_error else 0)
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


def _merge_after_run(out: Path, num_shards: int) -> bool:
    """Under torch.distributed: wait for all ranks, rank 0 merges. Otherwise whoever sees every shard merges."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        merged = merge_shards(out).complete if dist.get_rank() == 0 else False
        dist.barrier()
        return merged or all(shard_complete(out, k) for k in range(num_shards))
    return merge_shards(out).complete


def _concatenate_atomic(parts: list[Path], path: Path) -> int:
    """Write the files ``parts`` end to end into ``path`` (temporary name, fsync, rename); return the lines."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    lines = 0
    with open(tmp, "wb") as f:
        for part in parts:
            data = part.read_bytes()
            lines += data.count(b"\n")
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return lines


@dataclass
class MergeResult:
    """What ``merge_shards`` found: complete (index.jsonl written) or the shards still missing."""

    complete: bool
    num_shards: int
    missing: list[int]
    images: int
    errors: int


def merge_shards(output: str | os.PathLike) -> MergeResult:
    """Concatenate every shard's index and errors into ``index.jsonl`` / ``errors.jsonl`` (if all exist).

    Safe to run by several processes at once and again later: the merged files are written atomically and
    always have the same bytes.
    """
    out = Path(output)
    meta_path = out / METADATA_NAME
    if not meta_path.is_file():
        raise FileNotFoundError(f"{out}: no {METADATA_NAME}; expected a tokenized output folder")
    num_shards = int(json.loads(meta_path.read_text(encoding="utf-8"))["num_shards"])
    missing = [k for k in range(num_shards) if not shard_complete(out, k)]
    if missing:
        return MergeResult(False, num_shards, missing, 0, 0)
    # Streamed shard by shard: memory stays one shard's index whatever the dataset's size.
    failures = _concatenate_atomic([out / f"{shard_name(k)}.errors.jsonl" for k in range(num_shards)], out / ERRORS_NAME)
    images = _concatenate_atomic([out / f"{shard_name(k)}.index.jsonl" for k in range(num_shards)], out / INDEX_NAME)
    return MergeResult(True, num_shards, [], images, failures)


# --------------------------------------------------------------------------------------------------
# Command line (shared by scripts/tokenize_dataset.py and `imgtok tokenize`)
# --------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The tokenize command's options (one definition for both front ends)."""
    parser.add_argument("--model", default=None, help="model folder or Hub repo id (default: the bundled model)")
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
        max_shards=args.max_shards, progress=not args.no_progress,
    )
    result = tokenize_dataset(config)
    where = f"rank {result.rank}/{result.world_size}: " if result.world_size > 1 else ""
    print(f"{where}{result.images} images tokenized, {result.errors} errors, {result.shards_written} shards written, "
          f"{result.shards_skipped} already done, {result.seconds:.1f} s -> {result.output}")
    if result.merged:
        print(f"all {result.num_shards} shards complete: {result.output / INDEX_NAME}")
    else:
        print(f"{result.output}: shards still missing (other ranks, or --max-shards); re-run to continue, "
              "or merge later with --merge-only")
    return 0


def add_cli_command(subparsers: Any) -> None:
    """Register ``imgtok tokenize`` on the ``imgtok`` CLI's subparsers."""
    help_text = "tokenize a folder, list file or tar shards of images into token shards (resumable)"
    parser = subparsers.add_parser("tokenize", help=help_text, description=help_text)
    add_arguments(parser)
    parser.set_defaults(func=run_from_args)
