"""A safetensors file is untrusted input: its header is checked before any tensor is read.

Layout (https://github.com/huggingface/safetensors, "Format"): 8 bytes little-endian header length N, N bytes of
JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``, then the data,
where each tensor's ``[begin, end)`` is relative to the end of the header and the tensors tile the data exactly.

``check_safetensors`` reads the 8-byte length and at most ``MAX_HEADER_BYTES`` of header, never the data, and
says in words what is wrong (a truncated download, a header claiming more data than the file holds,
overlapping tensors), so a hostile or broken file costs neither a large allocation nor a cryptic message.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

# The safetensors library's own limit on the header (100 MB); real headers are a few hundred KB.
MAX_HEADER_BYTES = 100_000_000
ITEM_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}


class MalformedSafetensorsError(ValueError):
    """A file that is not a well-formed safetensors file; the message names the file and the defect."""


def check_safetensors(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The tensor entries of a safetensors file's header, after checking the whole layout.

    Raises:
        MalformedSafetensorsError: the header length, JSON, a dtype, shape or offsets are wrong, tensors
            overlap or leave gaps, or the header claims more (or less) data than the file holds.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    size = path.stat().st_size

    def bad(why: str) -> MalformedSafetensorsError:
        return MalformedSafetensorsError(f"{path}: not a valid safetensors file: {why}")

    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length (empty or truncated file)")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_BYTES:
            raise bad(f"the header length field says {n:,} bytes, over the format's limit of "
                      f"{MAX_HEADER_BYTES:,} (not a safetensors file, or a corrupt one)")
        if n > size - 8:
            raise bad(f"the header length field says {n:,} bytes but only {size - 8:,} follow it "
                      "(truncated, e.g. an interrupted download)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise bad(f"the {n:,}-byte header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise bad(f"the header is a JSON {type(header).__name__}, expected an object of tensors")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("'__metadata__' must map strings to strings")
    spans = []
    for name, entry in header.items():
        spans.append((*_entry_span(name, entry, bad), name))
    data = size - 8 - n
    end_of_data, previous = 0, None
    for begin, end, name in sorted(spans):
        if begin < end_of_data:
            raise bad(f"tensors {previous!r} and {name!r} overlap (byte {begin:,} is inside {previous!r})")
        if begin > end_of_data:
            raise bad(f"{begin - end_of_data:,} unaccounted bytes before tensor {name!r} (offsets leave a gap)")
        end_of_data, previous = end, name
    if end_of_data > data:
        raise bad(f"the header claims {end_of_data:,} bytes of tensor data but the file holds {data:,} "
                  "(truncated, e.g. an interrupted download)")
    if end_of_data < data:
        raise bad(f"{data - end_of_data:,} bytes after the last tensor that no header entry describes")
    return header


def _entry_span(name: str, entry: Any, bad) -> tuple[int, int]:
    """``(begin, end)`` of one header entry, after checking its dtype and shape agree with its size."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise bad(f"tensor {name!r}: expected {{'dtype', 'shape', 'data_offsets'}}, got {_short(entry)}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in ITEM_BYTES:
        raise bad(f"tensor {name!r}: unknown dtype {_short(dtype)} (expected one of {', '.join(ITEM_BYTES)})")
    if not isinstance(shape, list) or not all(_natural(d) for d in shape):
        raise bad(f"tensor {name!r}: shape {_short(shape)} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_natural(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise bad(f"tensor {name!r}: data_offsets {_short(offsets)} is not [begin, end] with 0 <= begin <= end")
    needed = math.prod(shape) * ITEM_BYTES[dtype]
    if offsets[1] - offsets[0] != needed:
        raise bad(f"tensor {name!r}: shape {shape} of {dtype} needs {needed:,} bytes but data_offsets "
                  f"{offsets} span {offsets[1] - offsets[0]:,}")
    return offsets[0], offsets[1]


def _natural(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = ["MAX_HEADER_BYTES", "MalformedSafetensorsError", "check_safetensors"]
