"""The shard reader on damaged or edited folders: a clear error naming the folder, row or file, never a
raw safetensors/numpy error, a SystemError, or ids outside the vocabulary handed to training."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from tokenizer import ImageTokenizer
from tokenizer.batch_tokenize import TokenizeConfig, tokenize_dataset
from tokenizer.data import TokenShardDataset


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    base = tmp_path_factory.mktemp("shards")
    (base / "images").mkdir()
    from PIL import Image

    for i in range(5):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            base / "images" / f"{i}.png")
    tokenize_dataset(TokenizeConfig(input=str(base / "images"), output=str(base / "out"), size=8, shard_size=2,
                                    workers=0, progress=False), tokenizer=ImageTokenizer.from_preset("vq-tiny"))
    return base / "out"


@pytest.fixture
def copy(folder, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(folder, out)
    return out


def _edit_row(out, row: int, **changes):
    path = out / "index.jsonl"
    lines = path.read_text().splitlines()
    data = json.loads(lines[row])
    data.update(changes)
    lines[row] = json.dumps(data)
    path.write_text("\n".join(lines) + "\n")


def test_intact_folder_reads(folder):
    ds = TokenShardDataset(folder)
    assert len(ds) == 5 and ds[4].ids.shape == (4, 4)


@pytest.mark.parametrize("changes,match", [
    (dict(h=-3), r"index row 1: 'h' is -3; expected an integer 1 or more"),
    (dict(shard=99), r"index row 1: 'shard' is 99; expected an integer 0\.\.2"),
    (dict(shard="x"), r"index row 1: 'shard' is 'x'"),
    (dict(offset=1.5), r"index row 1: 'offset' is 1\.5"),
    (dict(key=None), r"index row 1: 'key' is None; expected a string"),
])
def test_bad_index_rows_are_named(copy, changes, match):
    _edit_row(copy, 1, **changes)
    with pytest.raises(ValueError, match=match):
        TokenShardDataset(copy)


def test_offset_past_the_shard(copy):
    _edit_row(copy, 1, offset=10**6)
    with pytest.raises(ValueError, match=r"row 1 \('1\.png'\) spans ids \[1000000, 1000016\) of shard 0, which holds 32"):
        TokenShardDataset(copy)[1]


def test_truncated_shard_file(copy):
    path = copy / "shard-000000.safetensors"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"shard-000000\.safetensors: not a valid safetensors file: the header claims"):
        TokenShardDataset(copy)[0]


def test_missing_shard_file(copy):
    (copy / "shard-000001.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard-000001\.safetensors: missing; the folder's index names shard 1"):
        TokenShardDataset(copy)[2]


def test_float_ids_in_a_shard(copy):
    save_file({"ids": np.zeros(32, np.float32)}, str(copy / "shard-000000.safetensors"))
    with pytest.raises(ValueError, match=r"a F32 tensor of shape \[32\] named 'ids'; expected 1-D integer ids"):
        TokenShardDataset(copy)[0]


def test_ids_beyond_the_vocabulary(copy):
    save_file({"ids": np.full(32, 60000, np.uint16)}, str(copy / "shard-000000.safetensors"))
    with pytest.raises(ValueError, match=r"row 0 \('0\.png'\) holds id 60000, outside the vocabulary \[0, 64\)"):
        TokenShardDataset(copy)[0]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        list(TokenShardDataset(copy).iter_shard(0))


@pytest.mark.parametrize("text,match", [("[]", r"metadata\.json: expected a JSON object, got list"),
                                        ("{bad", r"metadata\.json: not valid JSON")])
def test_bad_metadata(copy, text, match):
    (copy / "metadata.json").write_text(text)
    with pytest.raises(ValueError, match=match):
        TokenShardDataset(copy)


def test_bad_json_row(copy):
    with open(copy / "index.jsonl", "a") as f:
        f.write("{bad\n")
    with pytest.raises(ValueError, match=r"index\.jsonl:6: not a JSON index row"):
        TokenShardDataset(copy)
