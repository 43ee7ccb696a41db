"""Token shards written by ``imgtok tokenize`` as training data (the format itself: ``tokenizer.shards``).

Two views of one output folder:

    from torch.utils.data import DataLoader
    from tokenizer.data import TokenShardDataset, TokenShardIterable, collate_tokens

    ds = TokenShardDataset("tokens/")          # map-style: random access
    item = ds[0]                               # TokenItem: ids (h, w) long ((h, w, depth) for residual VQ), key, original size, ...
    item = ds["cats/001.jpg"]                  # by key (ds.index_of(key) gives the row)
    loader = DataLoader(ds, batch_size=64, shuffle=True, collate_fn=collate_tokens)  # TokenBatch

    stream = TokenShardIterable("tokens/", shuffle=True, seed=0)   # shard by shard (sequential reads)
    stream.set_epoch(1)                        # a new shuffle per epoch
    loader = DataLoader(stream, batch_size=64, num_workers=2, collate_fn=collate_tokens)

Rows are in input order (the order the tokenizer numbered its inputs), shard by shard. A folder whose
merged ``index.jsonl`` is missing (a multi-process run not merged yet) is read from the shards' own index
files; missing shards raise unless ``allow_partial=True``. Ids are stored as uint16 (or int32) and
returned as torch.long.

Axis letters: B batch, h/w grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .shards import IDS_TENSOR, open_ids, read_errors, read_index, read_metadata

# Index fields stored as columns; anything else in a row (tar side files "json", "txt") goes to meta.
_COLUMNS = ("shard", "offset", "h", "w", "height", "width", "input_index")
_FIXED = frozenset(_COLUMNS) | {"key", "source", "depth"}


@dataclass
class TokenItem:
    """One tokenized image.

    ids: (h, w) torch.long grid of token ids in [0, vocab_size); (h, w, depth) for a residual-VQ tokenizer.
    key: the image's key (path relative to the input folder, list-file line, or tar member key).
    index: the row in the dataset.
    shard: the shard holding the ids.
    height, width: the original image's size (before cropping or padding).
    source: the file (or ``tar:member``) it came from.
    meta: side files carried from tars: {"json": parsed JSON, "txt": text}; empty if none.
    """

    ids: torch.Tensor
    key: str
    index: int
    shard: int
    height: int
    width: int
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenBatch:
    """A collated list of ``TokenItem``.

    ids: (B, h, w) long. Grids of several shapes (``--native``) are padded with ``PAD_ID`` at the bottom and
        right to the largest h and w, as ``TokenLayout.collate`` pads sequences; ``mask`` says which are real.
    mask: (B, h, w) bool, True on real tokens (all True when every grid has one shape).
    grid_sizes: (B, 2) long (h, w) of each grid before padding.
    keys: B keys.
    indices: (B,) long dataset rows.
    sizes: (B, 2) long original image (height, width).
    meta: B side-file dicts.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    grid_sizes: torch.Tensor
    keys: list[str]
    indices: torch.Tensor
    sizes: torch.Tensor
    meta: list[dict[str, Any]]

    def grids(self) -> list[torch.Tensor]:
        """The B grids without padding, each (h_i, w_i)."""
        return [ids[:h, :w] for ids, (h, w) in zip(self.ids, self.grid_sizes.tolist())]


# Fills the padded positions of a TokenBatch; never a real id's stand-in: read ``mask``.
PAD_ID = 0


def collate_tokens(items: list[TokenItem]) -> TokenBatch:
    """``collate_fn`` for DataLoaders over ``TokenShardDataset`` / ``TokenShardIterable``: ids (B, h, w),
    padded with a mask when the grids' shapes differ."""
    grid_sizes = torch.tensor([list(item.ids.shape[:2]) for item in items], dtype=torch.long)  # (B, 2)
    height, width = (int(v) for v in grid_sizes.max(dim=0).values)
    depth = tuple(items[0].ids.shape[2:])  # (depth,) for residual VQ: ids (B, h, w, depth)
    ids = torch.full((len(items), height, width, *depth), PAD_ID, dtype=torch.long)  # (B, h, w[, depth])
    mask = torch.zeros((len(items), height, width), dtype=torch.bool)
    for row, item in enumerate(items):
        h, w = item.ids.shape[:2]
        ids[row, :h, :w] = item.ids
        mask[row, :h, :w] = True
    return TokenBatch(
        ids=ids,
        mask=mask,
        grid_sizes=grid_sizes,
        keys=[item.key for item in items],
        indices=torch.tensor([item.index for item in items], dtype=torch.long),
        sizes=torch.tensor([[item.height, item.width] for item in items], dtype=torch.long),  # (B, 2)
        meta=[item.meta for item in items],
    )


@dataclass
class TokenShard:
    """One shard read whole: its ids end to end and the dataset rows it holds (``rows.start`` .. ``stop``)."""

    shard: int
    ids: np.ndarray  # (tokens,) uint16 or int32
    rows: range


class TokenShardDataset(Dataset):
    """A tokenized output folder as a map-style Dataset: ``ds[i]`` or ``ds[key]`` -> ``TokenItem``.

    Args:
        root: the folder ``imgtok tokenize --output`` wrote.
        allow_partial: read whatever shards are complete instead of raising when some are missing.
    """

    def __init__(self, root: str | os.PathLike, allow_partial: bool = False):
        self.root = Path(root)
        self.metadata: dict[str, Any] = read_metadata(self.root)
        self.num_shards = self.metadata.get("num_shards")
        if not _natural(self.num_shards):
            raise ValueError(f"{self.root}: metadata.json's num_shards is {self.num_shards!r}; expected an integer")
        rows, self.missing_shards = read_index(self.root, self.num_shards, allow_partial)
        _check_rows(rows, self.num_shards, self.root)
        self.keys: list[str] = [row["key"] for row in rows]
        self.sources: list[str] = [row["source"] for row in rows]
        columns = {name: np.array([row[name] for row in rows], dtype=np.int64) for name in _COLUMNS}
        self._shard, self._offset = columns["shard"], columns["offset"]
        self._h, self._w = columns["h"], columns["w"]
        self._height, self._width = columns["height"], columns["width"]
        self._depth = np.array([row.get("depth", 1) for row in rows], dtype=np.int64)  # ids per position
        self.input_index = columns["input_index"]
        # Side files are rare outside tars: keep them sparse.
        self._meta: dict[int, dict[str, Any]] = {
            i: extra for i, row in enumerate(rows) if (extra := {k: v for k, v in row.items() if k not in _FIXED})
        }
        self._key_rows: dict[str, int] | None = None
        self._duplicates: set[str] = set()
        self._handles: dict[int, Any] = {}

    @property
    def vocab_size(self) -> int:
        return int(self.metadata["vocab_size"])

    @property
    def depth(self) -> int:
        """Ids per grid position of the tokenizer that wrote the folder (residual VQ depths; else 1)."""
        return int(self.metadata.get("model", {}).get("depth", 1))

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.metadata["preprocessing"]

    def errors(self) -> list[dict[str, Any]]:
        """The inputs that failed to tokenize (key, source, reason), from the merged or per-shard files."""
        return read_errors(self.root, self.num_shards)

    def grid_shape(self, index: int) -> tuple[int, int]:
        """(h, w) of row ``index`` without reading its ids."""
        return int(self._h[index]), int(self._w[index])

    def index_of(self, key: str) -> int:
        """The row holding ``key``.

        Raises:
            KeyError: the key is unknown, or several rows share it (then use their row numbers).
        """
        if self._key_rows is None:
            self._key_rows = {}
            for i, k in enumerate(self.keys):
                if k in self._key_rows:
                    self._duplicates.add(k)
                else:
                    self._key_rows[k] = i
        if key in self._duplicates:
            rows = [i for i, k in enumerate(self.keys) if k == key]
            raise KeyError(f"{self.root}: key {key!r} is held by several rows {rows[:5]}; access them by row")
        try:
            return self._key_rows[key]
        except KeyError:
            raise KeyError(f"{self.root}: no image with key {key!r}") from None

    # --- reading ids ------------------------------------------------------------------------------
    def _open(self, shard: int):
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = open_ids(self.root, shard)  # memory-mapped: slices read their bytes
        return handle

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers reopen shards themselves (file handles are per process).
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int | str) -> TokenItem:
        """Row ``index`` (an int, negative counts from the end) or the row of a key (a str)."""
        if isinstance(index, str):
            index = self.index_of(index)
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.root}: row {index} out of range for {len(self)} images")
        index %= len(self)
        shard, offset = int(self._shard[index]), int(self._offset[index])
        n = self._tokens(index)
        ids = self._open(shard).get_slice(IDS_TENSOR)
        if offset + n > ids.get_shape()[0]:
            raise ValueError(f"{self.root}: row {index} ({self.keys[index]!r}) spans ids [{offset}, {offset + n}) "
                             f"of shard {shard}, which holds {ids.get_shape()[0]}; the shard and its index disagree")
        return self._item(index, ids[offset : offset + n])  # (h*w[*depth],)

    def _tokens(self, index: int) -> int:
        """Ids row ``index`` holds: h * w * depth."""
        h, w = self.grid_shape(index)
        return h * w * int(self._depth[index])

    def _item(self, index: int, flat: np.ndarray) -> TokenItem:
        h, w = self.grid_shape(index)
        n, depth = self._tokens(index), int(self._depth[index])
        if flat.size != n:
            raise ValueError(f"{self.root}: row {index} ({self.keys[index]!r}) needs {n} ids, shard "
                             f"{int(self._shard[index])} holds {flat.size} there; the shard and its index disagree")
        if flat.size and int(flat.max()) >= self.vocab_size:
            raise ValueError(f"{self.root}: row {index} ({self.keys[index]!r}) holds id {int(flat.max())}, outside "
                             f"the vocabulary [0, {self.vocab_size}) of metadata.json")
        shape = (h, w) if depth == 1 else (h, w, depth)
        ids = torch.from_numpy(flat.astype(np.int64)).reshape(shape)  # (h*w[*depth],) -> (h, w[, depth])
        return TokenItem(
            ids=ids, key=self.keys[index], index=index, shard=int(self._shard[index]),
            height=int(self._height[index]), width=int(self._width[index]), source=self.sources[index],
            meta=self._meta.get(index, {}),
        )

    def shards(self) -> list[int]:
        """The shards that hold rows, in order."""
        return [int(k) for k in np.unique(self._shard)]

    def read_shard(self, shard: int) -> TokenShard:
        """One shard's ids read whole, and its rows (contiguous: rows are in shard order)."""
        start, stop = np.searchsorted(self._shard, [shard, shard + 1])
        ids = self._open(shard).get_tensor(IDS_TENSOR)
        return TokenShard(shard, ids, range(int(start), int(stop)))

    def iter_shard(self, shard: int, order: np.ndarray | None = None) -> Iterator[TokenItem]:
        """The items of one shard, in row order or in ``order`` (a permutation of its rows' positions)."""
        part = self.read_shard(shard)
        positions = range(len(part.rows)) if order is None else order
        for p in positions:
            index = part.rows[int(p)]
            offset = int(self._offset[index])
            yield self._item(index, part.ids[offset : offset + self._tokens(index)])


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_rows(rows: list[Any], num_shards: int, root: Path) -> None:
    """Every index row is an object with a str key and source and in-range integer columns, else a
    ValueError naming the row and field (an edited or corrupt index must not fail deep inside numpy)."""
    for number, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{root}: index row {number} is {type(row).__name__}; expected a JSON object")
        for name in ("key", "source"):
            if not isinstance(row.get(name), str):
                raise ValueError(f"{root}: index row {number}: {name!r} is {row.get(name)!r}; expected a string")
        for name in _COLUMNS:
            value = row.get(name)
            low = 1 if name in ("h", "w", "height", "width") else 0
            if not _natural(value) or value < low or (name == "shard" and value >= num_shards):
                high = f"..{num_shards - 1}" if name == "shard" else " or more"
                raise ValueError(f"{root}: index row {number}: {name!r} is {value!r}; expected an integer {low}{high}")
        if "depth" in row and (not _natural(row["depth"]) or row["depth"] < 1):
            raise ValueError(f"{root}: index row {number}: 'depth' is {row['depth']!r}; expected an integer 1 or more")


class TokenShardIterable(IterableDataset):
    """A tokenized folder as a stream of ``TokenItem``, shard by shard (sequential reads, for big datasets).

    Shards are dealt round-robin to (rank, DataLoader worker) pairs, so every item is seen once per epoch
    across all of them. With ``shuffle``, shard order and the order inside each shard are permuted by
    (seed, epoch).

    Args:
        root: the output folder, or an open ``TokenShardDataset``.
        shuffle: permute shards and items each epoch.
        seed: base seed of the permutations.
        rank, world_size: this process's share (default: from torch.distributed if initialised, else 0 of 1).
        allow_partial: as for ``TokenShardDataset``.
    """

    def __init__(self, root: str | os.PathLike | TokenShardDataset, shuffle: bool = False, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, allow_partial: bool = False):
        self.dataset = root if isinstance(root, TokenShardDataset) else TokenShardDataset(root, allow_partial)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        dist = torch.distributed
        initialised = dist.is_available() and dist.is_initialized()
        self.rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if initialised else 1)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} of world size {self.world_size}; expected 0 <= rank < world_size")

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation the next iteration uses (call it on every rank)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[TokenItem]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        slot, slots = self.rank * workers + worker, self.world_size * workers
        shards = self.dataset.shards()
        g = np.random.default_rng([self.seed, self.epoch])
        if self.shuffle:
            shards = [shards[i] for i in g.permutation(len(shards))]
        for position, shard in enumerate(shards):
            if position % slots != slot:
                continue
            order = None
            if self.shuffle:
                count = int(np.count_nonzero(self.dataset._shard == shard))
                order = np.random.default_rng([self.seed, self.epoch, shard]).permutation(count)
            yield from self.dataset.iter_shard(shard, order)
