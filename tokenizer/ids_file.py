"""Token ids on disk, as ``imgtok encode`` writes them and ``imgtok decode`` reads them.

``.npz`` (the default) keeps what decoding needs besides the ids: the original image size, so the padding
added to reach a multiple of f is cropped away again, and the model's name, version and weights sha256, so
decoding with other weights is noticed. ``.npy`` holds the bare ``(h, w)`` array (other tools read it as is);
its image size has to be given again on decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .shipped import ModelIdentity

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"  # .npz files are zip archives
SUFFIXES = (".npz", ".npy")


class IdsFileError(ValueError):
    """A file that is not a readable ids file."""


@dataclass
class IdsFile:
    """What an ids file holds.

    Args:
        ids: (h, w) integer array, as stored (uint16 when the vocabulary fits, else int32).
        height, width: the original image size (None for .npy).
        model: the model that made the ids (None for .npy).
    """

    ids: np.ndarray
    height: int | None = None
    width: int | None = None
    model: ModelIdentity | None = None

    @property
    def size(self) -> tuple[int, int] | None:
        return (self.height, self.width) if self.height is not None and self.width is not None else None


def save_ids(path: str | Path, ids: np.ndarray, vocab_size: int, size: tuple[int, int] | None = None,
             model: ModelIdentity | None = None) -> Path:
    """Write ``ids`` (h, w) to ``path``: ``.npz`` with the size and model, or ``.npy`` with the ids alone.

    Args:
        size: the original (H, W); stored in ``.npz`` only.
        model: who made the ids; stored in ``.npz`` only.
    """
    from .shards import ids_dtype  # one choice of dtype for ids on disk, as in the token shards

    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise IdsFileError(f"{path}: expected a .npz (ids with the image size and model) or .npy (ids only) name")
    data = np.asarray(ids).astype(ids_dtype(vocab_size))
    if path.suffix == ".npy":
        np.save(path, data)
        return path
    fields = {"ids": data}
    if size is not None:
        fields.update(height=np.int64(size[0]), width=np.int64(size[1]))
    if model is not None:
        fields.update(model_name=np.str_(model.name), model_version=np.str_(model.version or ""),
                      model_sha256=np.str_(model.sha256 or ""))
    with open(path, "wb") as f:  # an open file: np.savez would append ".npz" to some names
        np.savez(f, **fields)
    return path


def load_ids(path: str | Path) -> IdsFile:
    """Read an ids file written by ``save_ids`` (or any ``.npy`` of integer ids); errors name the file."""
    path = Path(path)
    if path.is_dir():
        raise IdsFileError(f"{path}: is a folder; expected a .npz or .npy file of token ids")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file of token ids")
    with open(path, "rb") as f:
        head = f.read(8)
    try:
        if head.startswith(NPY_MAGIC):
            return IdsFile(np.load(path, allow_pickle=False))
        if head.startswith(ZIP_MAGIC):
            with np.load(path, allow_pickle=False) as archive:
                if "ids" not in archive.files:
                    raise IdsFileError(f"{path}: an .npz without an 'ids' array (it holds {sorted(archive.files)})")
                out = IdsFile(archive["ids"])
                if "height" in archive.files and "width" in archive.files:
                    out.height, out.width = int(archive["height"]), int(archive["width"])
                if "model_name" in archive.files:
                    out.model = ModelIdentity(str(archive["model_name"]), str(archive["model_version"]) or None,
                                              str(archive["model_sha256"]) or None)
                return out
    except IdsFileError:
        raise
    except (OSError, ValueError, KeyError) as err:
        raise IdsFileError(f"{path}: not a readable ids file ({err})") from err
    raise IdsFileError(f"{path}: not a .npy or .npz file (it starts with {head!r}); expected token ids from "
                       "`imgtok encode`")


__all__ = ["IdsFile", "IdsFileError", "save_ids", "load_ids"]
