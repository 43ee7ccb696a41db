"""The token shard reader (tokenizer.data): what it returns is what the shards and index hold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_images import write_garbage, write_image
from safetensors.numpy import load_file
from torch.utils.data import DataLoader

from tokenizer import ImageTokenizer
from tokenizer.batch_tokenize import TokenizeConfig, tokenize_dataset
from tokenizer.data import TokenBatch, TokenShardDataset, TokenShardIterable, collate_tokens

SIZES = [(12, 12), (20, 14), (9, 17), (16, 16), (30, 10), (11, 11), (14, 22)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Centre-cropped and native outputs of 7 images + 1 corrupt file, 3 images per shard."""
    base = tmp_path_factory.mktemp("tokdata")
    torch.manual_seed(0)
    tok = ImageTokenizer.from_preset("vq-tiny")
    images = base / "images"
    images.mkdir()
    for i, (h, w) in enumerate(SIZES):
        write_image(images / f"img{i}.png", "RGB" if i % 2 else "L", h, w)
    write_garbage(images / "img9_bad.png")
    out = {}
    for name, native in (("crop", False), ("native", True)):
        out[name] = tokenize_dataset(
            TokenizeConfig(input=str(images), output=str(base / name), size=8, native=native, batch_size=2,
                           shard_size=3, workers=0, progress=False),
            tokenizer=tok,
        ).output
    return out


def _raw(folder: Path) -> list[tuple[dict, np.ndarray]]:
    """Index rows and their ids, read straight from the files (no reader code)."""
    rows = [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines()]
    out = []
    for row in rows:
        flat = load_file(str(folder / f"shard-{row['shard']:06d}.safetensors"))["ids"]
        out.append((row, flat[row["offset"] : row["offset"] + row["h"] * row["w"]].reshape(row["h"], row["w"])))
    return out


@pytest.mark.parametrize("name", ["crop", "native"])
def test_items_are_what_was_written(folders, name):
    ds, raw = TokenShardDataset(folders[name]), _raw(folders[name])
    assert len(ds) == len(raw) == len(SIZES) and ds.vocab_size == 64
    for i, (row, ids) in enumerate(raw):
        item = ds[i]
        assert item.ids.dtype == torch.long and item.ids.shape == ids.shape
        assert np.array_equal(item.ids.numpy(), ids.astype(np.int64))
        assert (item.key, item.shard, item.index, item.source) == (row["key"], row["shard"], i, row["source"])
        assert (item.height, item.width) == (row["height"], row["width"]) == SIZES[int(item.key[3])]
        assert item.meta == {}
    if name == "native":
        assert {tuple(ds[i].ids.shape) for i in range(len(ds))} == {((h + 1) // 2, (w + 1) // 2) for h, w in SIZES}


def test_access_by_key_negative_index_and_clear_errors(folders):
    ds = TokenShardDataset(folders["crop"])
    assert ds["img3.png"].key == "img3.png" and ds.index_of("img3.png") == ds["img3.png"].index
    assert torch.equal(ds[-1].ids, ds[len(ds) - 1].ids)
    with pytest.raises(KeyError, match="no image with key 'nope.png'"):
        ds["nope.png"]
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]
    assert [row["key"] for row in ds.errors()] == ["img9_bad.png"]
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        TokenShardDataset(folders["crop"] / "nowhere")


def test_duplicate_keys_are_refused_by_key_but_readable_by_row(folders, tmp_path):
    listing = tmp_path / "twice.txt"
    image = folders["crop"].parent / "images" / "img0.png"
    listing.write_text(f"{image}\n{image}\n")
    tok = ImageTokenizer.from_preset("vq-tiny")
    out = tokenize_dataset(TokenizeConfig(input=str(listing), output=str(tmp_path / "o"), size=8, workers=0,
                                          progress=False), tokenizer=tok).output
    ds = TokenShardDataset(out)
    assert len(ds) == 2 and torch.equal(ds[0].ids, ds[1].ids)
    with pytest.raises(KeyError, match="several rows"):
        ds[str(image)]


def test_dataloader_with_workers_and_collate(folders):
    ds = TokenShardDataset(folders["crop"])
    loader = DataLoader(ds, batch_size=3, shuffle=False, num_workers=2, collate_fn=collate_tokens)
    batches = list(loader)
    assert all(isinstance(b, TokenBatch) for b in batches)
    ids = torch.cat([b.ids for b in batches])  # (N, h, w)
    assert ids.shape == (len(ds), 4, 4) and torch.equal(ids, torch.stack([ds[i].ids for i in range(len(ds))]))
    assert sum((b.keys for b in batches), []) == ds.keys
    assert torch.equal(torch.cat([b.sizes for b in batches]), torch.tensor([list(s) for s in SIZES]))
    assert all(b.mask.all() for b in batches)  # one shape: nothing padded
    items = [TokenShardDataset(folders["native"])[i] for i in range(3)]
    native = collate_tokens(items)  # grids of several shapes: padded to (B, h_max, w_max) with a mask
    assert native.ids.shape == (3, *native.grid_sizes.max(dim=0).values.tolist())
    assert len({tuple(i.ids.shape) for i in items}) > 1
    for item, grid, mask, (h, w) in zip(items, native.grids(), native.mask, native.grid_sizes.tolist()):
        assert torch.equal(grid, item.ids) and mask.sum() == h * w and mask[:h, :w].all()


def test_shard_stream_covers_every_item_once_across_ranks_and_shuffles_per_epoch(folders):
    ds = TokenShardDataset(folders["crop"])
    plain = [item.key for item in TokenShardIterable(ds)]
    assert plain == ds.keys  # no shuffle: row order
    ranks = [[item.key for item in TokenShardIterable(ds, rank=r, world_size=2)] for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1]) and sorted(ranks[0] + ranks[1]) == sorted(ds.keys)
    stream = TokenShardIterable(ds, shuffle=True, seed=3)
    epoch0 = [item.key for item in stream]
    assert epoch0 == [item.key for item in stream] and sorted(epoch0) == sorted(ds.keys)
    orders = set()
    for epoch in range(1, 6):
        stream.set_epoch(epoch)
        orders.add(tuple(item.key for item in stream))
    assert len(orders | {tuple(epoch0)}) > 1
    for item in stream:
        assert torch.equal(item.ids, ds[item.index].ids)
    loader = DataLoader(TokenShardIterable(folders["crop"]), batch_size=None, num_workers=2)
    assert sorted(item.key for item in loader) == sorted(ds.keys)  # workers split shards, no repeats


def test_partial_folder_needs_allow_partial(folders, tmp_path):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(folders["crop"], partial)
    (partial / "index.jsonl").unlink()
    (partial / "shard-000001.index.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 3 shards are missing"):
        TokenShardDataset(partial)
    ds = TokenShardDataset(partial, allow_partial=True)
    assert ds.missing_shards == [1] and ds.shards() == [0, 2]
    full = TokenShardDataset(folders["crop"])
    assert ds.keys == [k for k in full.keys if full[k].shard != 1]
    assert torch.equal(ds[ds.keys[-1]].ids, full[ds.keys[-1]].ids)
