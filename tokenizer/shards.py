"""The token-shard format, in one place: names, the writer, its atomic commit, the merge and the reader.

An output folder::

    metadata.json                  model (path or repo id, revision, sha256), preprocessing (with its
                                   version), dtype, shard size
    shard-000000.safetensors       "ids": 1-D uint16 (int32 if vocab > 65536), the flattened grids end to end
                                   ((h, w) row-major; (h, w, depth) with the depth fastest for residual VQ)
    shard-000000.errors.jsonl      one row per input of the shard that failed, with the reason
    shard-000000.index.jsonl       one row per image: key, source, shard, offset (tokens), h, w, original size
                                   (and depth, when the tokenizer has more than one id per position)
    index.jsonl, errors.jsonl      every shard's rows in order, written once all shards exist (the merge)

A shard is committed by renaming its index file into place after its safetensors and errors files (each
written to a temporary name, fsynced and renamed): a shard whose three files exist is complete.
``tokenizer.batch_tokenize`` writes folders, ``tokenizer.data`` reads them for training.

Axis letters: h/w grid.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

FORMAT_NAME = "imgtok-token-shards"
FORMAT_VERSION = 1
METADATA_NAME = "metadata.json"
INDEX_NAME = "index.jsonl"
ERRORS_NAME = "errors.jsonl"
IDS_TENSOR = "ids"
SHARD_SUFFIXES = (".safetensors", ".errors.jsonl", ".index.jsonl")  # the index last: it commits the shard
# Index rows' fixed fields, in their order in the files (byte-stable); side-file fields follow.
ROW_FIELDS = ("key", "source", "shard", "offset", "h", "w", "depth", "height", "width", "input_index")


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}"


def ids_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else int32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def json_line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"


# --- writing --------------------------------------------------------------------------------------
def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, fsync, rename: readers see the old file or the whole new one."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_or_write_metadata(out: Path, metadata: dict[str, Any], error: type[Exception] = ValueError) -> None:
    """Write ``metadata.json``, or check that the folder's existing one is identical (a resume).

    Raises:
        error: the folder holds shards made with other settings (named), or an unreadable metadata.json.
    """
    path = out / METADATA_NAME
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise error(f"{path}: unreadable ({err}); remove the output folder or choose another") from err
        if existing != metadata:
            diffs = [k for k in sorted(set(existing) | set(metadata)) if existing.get(k) != metadata.get(k)]
            raise error(
                f"{out}: holds shards made with other settings ({', '.join(diffs)} differ from this run); "
                "resume with the same model, input, preprocessing, shard size, batch size and device type, "
                "or write to a new --output"
            )
        return
    write_atomic(path, (json.dumps(metadata, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def shard_complete(out: Path, shard: int) -> bool:
    """A shard is complete once its index file exists (renamed into place last)."""
    name = shard_name(shard)
    return all((out / f"{name}{suffix}").is_file() for suffix in SHARD_SUFFIXES)


def remove_stale_temporaries(out: Path, owned: Callable[[int], bool]) -> None:
    """Temporary files a killed writer of the ``owned`` shards left behind (other writers' may be in use)."""
    for tmp in out.glob("shard-*.tmp-*"):
        match = re.match(r"shard-(\d+)\.", tmp.name)
        if match and owned(int(match.group(1))):
            tmp.unlink(missing_ok=True)


def _ordered_row(row: dict[str, Any]) -> dict[str, Any]:
    ordered = {k: row[k] for k in ROW_FIELDS if k in row}  # "depth" only for residual VQ
    ordered.update((k, v) for k, v in row.items() if k not in ordered)
    return ordered


def write_shard(out: Path, shard: int, rows: list[dict[str, Any]], grids: list[np.ndarray],
                errors: list[dict[str, Any]], dtype: np.dtype) -> None:
    """Write one shard's three files and commit it (the index last).

    Args:
        rows: one index row per image, in input order (without ``offset``, ``h``, ``w``: filled in here).
        grids: the images' (h, w) id grids ((h, w, depth) for residual VQ), in the same order.
        errors: one row per failed input.
        dtype: ``ids_dtype(vocab_size)``.
    """
    from safetensors.numpy import save as save_bytes

    offset, flat, lines = 0, [], []
    for row, grid in zip(rows, grids):
        h, w = grid.shape[:2]
        depth = {"depth": grid.shape[2]} if grid.ndim == 3 else {}
        lines.append(json_line(_ordered_row({**row, "offset": offset, "h": h, "w": w, **depth})))
        flat.append(grid.reshape(-1).astype(dtype))  # (h, w[, depth]) -> (h*w[*depth],), row-major
        offset += grid.size
    ids = np.concatenate(flat) if flat else np.zeros(0, dtype=dtype)
    name = shard_name(shard)
    # One metadata key: safetensors writes its metadata map in hash order, which varies between processes.
    header = json.dumps({"format": FORMAT_NAME, "shard": shard}, separators=(",", ":"))
    write_atomic(out / f"{name}.safetensors", save_bytes({IDS_TENSOR: ids}, metadata={"imgtok": header}))
    write_atomic(out / f"{name}.errors.jsonl", "".join(map(json_line, errors)).encode("utf-8"))
    write_atomic(out / f"{name}.index.jsonl", "".join(lines).encode("utf-8"))  # the commit


# --- merging --------------------------------------------------------------------------------------
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
    num_shards = int(read_metadata(out, check_format=False)["num_shards"])
    missing = [k for k in range(num_shards) if not shard_complete(out, k)]
    if missing:
        return MergeResult(False, num_shards, missing, 0, 0)
    # Streamed shard by shard: memory stays one shard's index whatever the dataset's size.
    failures = _concatenate_atomic([out / f"{shard_name(k)}.errors.jsonl" for k in range(num_shards)], out / ERRORS_NAME)
    images = _concatenate_atomic([out / f"{shard_name(k)}.index.jsonl" for k in range(num_shards)], out / INDEX_NAME)
    return MergeResult(True, num_shards, [], images, failures)


# --- reading --------------------------------------------------------------------------------------
def read_metadata(root: str | os.PathLike, check_format: bool = True) -> dict[str, Any]:
    """A tokenized folder's ``metadata.json``.

    Raises:
        FileNotFoundError: no metadata.json. ValueError: another format.
    """
    path = Path(root) / METADATA_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{root}: no {METADATA_NAME}; expected a folder written by imgtok tokenize")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(metadata).__name__}")
    if check_format and metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: format {metadata.get('format')!r}; expected {FORMAT_NAME!r}")
    return metadata


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON rows of an index or errors file."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as err:
                    raise ValueError(f"{path}:{number}: not a JSON index row ({err})") from err


def read_index(root: Path, num_shards: int, allow_partial: bool = False) -> tuple[list[dict[str, Any]], list[int]]:
    """(every image's index row in order, the shards missing): from ``index.jsonl`` if merged, else from the
    complete shards' own index files.

    Raises:
        FileNotFoundError: shards are missing and ``allow_partial`` is not set.
    """
    merged = root / INDEX_NAME
    if merged.is_file():
        return list(read_rows(merged)), []
    # Not merged yet (ranks still running, or no one ran --merge-only): read the shards' own indexes.
    missing = [k for k in range(num_shards) if not shard_complete(root, k)]
    if missing and not allow_partial:
        raise FileNotFoundError(
            f"{root}: {len(missing)} of {num_shards} shards are missing "
            f"(first {missing[:5]}); finish the run, or pass allow_partial=True"
        )
    rows: list[dict[str, Any]] = []
    for k in range(num_shards):
        if k not in missing:
            rows += read_rows(root / f"{shard_name(k)}.index.jsonl")
    return rows, missing


def read_errors(root: Path, num_shards: int) -> list[dict[str, Any]]:
    """The failed inputs' rows, from the merged file or the shards' own."""
    merged = root / ERRORS_NAME
    if merged.is_file():
        return list(read_rows(merged))
    out: list[dict[str, Any]] = []
    for k in range(num_shards):
        path = root / f"{shard_name(k)}.errors.jsonl"
        if path.is_file():
            out += read_rows(path)
    return out


def open_ids(root: Path, shard: int):
    """A shard's ids, memory-mapped (``safe_open``): ``.get_slice("ids")[a:b]`` reads only those bytes.

    Raises:
        ValueError: the file is no well-formed safetensors file (``safetensors_check``), or holds no 1-D
            integer ``ids`` tensor.
        FileNotFoundError: the shard file is missing.
    """
    from safetensors import safe_open

    from .safetensors_check import check_safetensors

    path = root / f"{shard_name(shard)}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the folder's index names shard {shard}")
    header = check_safetensors(path)
    entry = header.get(IDS_TENSOR)
    if entry is None or len(entry["shape"]) != 1 or entry["dtype"] not in ("U8", "U16", "I16", "U32", "I32", "I64"):
        what = "no tensor" if entry is None else f"a {entry['dtype']} tensor of shape {entry['shape']}"
        raise ValueError(f"{path}: {what} named {IDS_TENSOR!r}; expected 1-D integer ids")
    return safe_open(str(path), framework="numpy")
