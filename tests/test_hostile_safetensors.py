"""Model files are hostile input: a malformed safetensors file gets a clear error naming the file and the
defect, found from the header alone (no tensor data is read, nothing large is allocated)."""

from __future__ import annotations

import json
import struct
import tracemalloc

import pytest
import torch
from safetensors.torch import save_file

from tokenizer import get_preset
from tokenizer.models import build_model
from tokenizer.pretrained import WeightsError, load_folder, read_weights, save_folder
from tokenizer.safetensors_check import MalformedSafetensorsError, check_safetensors


def _file(path, header, data=b"", length=None):
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}

CASES = {
    "empty": (b"", None, None, r"0 bytes, shorter than the 8-byte header length"),
    "huge-length": ({}, b"", 2**63, r"header length field says 9,223,372,036,854,775,808 bytes, over"),
    "length-past-end": ({"a": F32_2}, b"\0" * 8, 10**6, r"says 1,000,000 bytes but only .* follow it \(truncated"),
    "not-json": (b"{abc}", b"", None, r"header is not valid JSON"),
    "not-utf8": (b"\xff\xfe{}", b"", None, r"header is not valid JSON"),
    "list-header": ([1, 2], b"", None, r"header is a JSON list, expected an object"),
    "overlap": ({"a": F32_2, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None,
                r"tensors 'a' and 'b' overlap"),
    "claims-more": ({"a": {"dtype": "F32", "shape": [10**9], "data_offsets": [0, 4 * 10**9]}}, b"\0" * 8, None,
                    r"claims 4,000,000,000 bytes of tensor data but the file holds 8 \(truncated"),
    "shape-vs-offsets": ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None,
                         r"'a': shape \[3\] of F32 needs 12 bytes but data_offsets \[0, 8\] span 8"),
    "negative-dim": ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None,
                     r"'a': shape \[-2\] is not a list of non-negative integers"),
    "float-dim": ({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, b"\0" * 8, None,
                  r"'a': shape \[2\.0\]"),
    "bad-dtype": ({"a": {"dtype": "X99", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None,
                  r"'a': unknown dtype 'X99'"),
    "reversed-offsets": ({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, b"\0" * 8, None,
                         r"data_offsets \[8, 0\] is not \[begin, end\]"),
    "gap": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16, None,
            r"8 unaccounted bytes before tensor 'a'"),
    "trailing": ({"a": F32_2}, b"\0" * 20, None, r"12 bytes after the last tensor"),
    "entry-not-object": ({"a": [1, 2]}, b"", None, r"tensor 'a': expected"),
    "metadata-not-str": ({"__metadata__": {"k": 1}, "a": F32_2}, b"\0" * 8, None, r"'__metadata__' must map"),
    "astronomic-shape": ({"a": {"dtype": "F64", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, b"\0" * 8,
                         None, r"needs 9,671,406,556,917,033,397,649,408 bytes"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_file_named_with_its_defect(tmp_path, name):
    header, data, length, match = CASES[name]
    path = tmp_path / "model.safetensors"
    if header == b"" and data is None:
        path.write_bytes(b"")
    else:
        _file(path, header, data, length)
    with pytest.raises(MalformedSafetensorsError, match=r"model\.safetensors: not a valid safetensors file: .*" + match):
        check_safetensors(path)
    with pytest.raises(WeightsError, match=r"model\.safetensors: not a valid safetensors file"):
        read_weights(path)


def test_claims_of_terabytes_allocate_nothing_large(tmp_path):
    path = _file(tmp_path / "big.safetensors",
                 {"a": {"dtype": "F32", "shape": [2**38], "data_offsets": [0, 2**40]}}, b"\0" * 64)
    tracemalloc.start()
    try:
        with pytest.raises(MalformedSafetensorsError, match="claims 1,099,511,627,776 bytes"):
            check_safetensors(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_truncated_model_folder_fails_clearly(tmp_path):
    folder = save_folder(build_model(get_preset("vq-tiny")), tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(WeightsError, match=r"model\.safetensors: not a valid safetensors file: the header claims"):
        load_folder(folder)


def test_missing_weights_file_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError, match=r"nothing\.safetensors: cannot read"):
        read_weights(tmp_path / "nothing.safetensors")


def test_valid_files_pass(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_file({"a": torch.zeros(3, 2), "b": torch.ones(0), "c": torch.arange(5)}, str(path), metadata={"k": "v"})
    header = check_safetensors(path)
    assert sorted(header) == ["a", "b", "c"]
    assert read_weights(path)["c"].tolist() == [0, 1, 2, 3, 4]
