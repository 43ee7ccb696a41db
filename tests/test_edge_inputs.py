"""Edge inputs through the API and the CLI: each one a clear error naming the value and what was expected,
never a torch-internal message or a silently wrong answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenizer.cli import main
from tokenizer.image_io import ImageError


@pytest.mark.parametrize(
    "image,match",
    [
        (torch.rand(3, 0, 0), r"image of 0 x 0 pixels; expected at least 1 x 1"),
        (torch.rand(3, 0, 8), r"image of 0 x 8 pixels"),
        (torch.rand(1, 3, 8, 0), r"image of 8 x 0 pixels"),
        (torch.rand(0, 3, 8, 8), r"a batch of 0 images"),
        (np.zeros((0, 0, 3), np.uint8), r"ndarray of shape \(0, 0, 3\).*image of 0 x 0 pixels"),
        (np.zeros((5, 0), np.float32), r"image of 5 x 0 pixels"),
        ([torch.rand(3, 8, 8), torch.rand(3, 0, 4)], r"image of 0 x 4 pixels"),
    ],
    ids=["0x0", "0xW", "batch-Hx0", "empty-batch", "array-0x0", "gray-Hx0", "list-entry"],
)
def test_empty_images_are_refused(tiny_tokenizer, tiny_vae, image, match):
    with pytest.raises(ImageError, match=match):
        tiny_tokenizer.encode(image)
    with pytest.raises(ImageError, match=match):
        tiny_vae.encode(image)


@pytest.mark.parametrize(
    "size,match",
    [
        ((-5, 10), r"size \(-5, 10\) does not fit the decoded image 16 x 16 .*1 <= H <= 16"),
        ((0, 0), r"size \(0, 0\) does not fit"),
        ((17, 4), r"size \(17, 4\) does not fit"),
        ((5,), r"size \(5,\); expected \(H, W\), two integers"),
        ((5, 6, 7), r"size \(5, 6, 7\); expected \(H, W\)"),
        ((5.5, 10), r"size \(5\.5, 10\); expected \(H, W\), two integers"),
        ((True, 4), r"size \(True, 4\)"),
        ("ab", r"size 'ab'"),
        (7, r"size 7; expected \(H, W\)"),
    ],
)
def test_bad_decode_sizes(tiny_tokenizer, tiny_vae, size, match):
    image = torch.rand(3, 16, 16)
    with pytest.raises(ValueError, match="decode: " + match):
        tiny_tokenizer.decode(tiny_tokenizer.encode(image), size=size)
    with pytest.raises(ValueError, match="decode: " + match):
        tiny_vae.decode(tiny_vae.encode(image), size=size)


def test_integer_sizes_of_any_kind_work(tiny_tokenizer):
    ids = tiny_tokenizer.encode(torch.rand(3, 16, 16))
    for size in [(np.int64(7), np.int32(9)), (torch.tensor(7), torch.tensor(9)), [7, 9], torch.Size([7, 9])]:
        assert tiny_tokenizer.decode(ids, size=size).shape == (3, 7, 9)


@pytest.mark.parametrize("make", [
    lambda: np.full((2, 2), 2**64 - 1, np.uint64),
    lambda: torch.full((2, 2), 2**64 - 1, dtype=torch.uint64),
])
def test_uint64_ids_reported_as_they_are(tiny_tokenizer, make):
    with pytest.raises(ValueError, match=r"id 18446744073709551615 is outside the vocabulary \[0, 64\)"):
        tiny_tokenizer.decode(make())


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int16, np.int32])
def test_in_range_ids_of_every_integer_dtype_decode_alike(tiny_tokenizer, dtype):
    ids = tiny_tokenizer.encode(torch.rand(3, 8, 8))
    assert torch.equal(tiny_tokenizer.decode(ids.numpy().astype(dtype)), tiny_tokenizer.decode(ids))


def test_float_numpy_ids_are_refused(tiny_tokenizer):
    with pytest.raises(TypeError, match="ids have dtype float64; expected an integer dtype"):
        tiny_tokenizer.decode(np.zeros((2, 2)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_vae_refuses_non_finite_latents(tiny_vae, bad):
    z = tiny_vae.encode(torch.rand(3, 16, 16))
    z[1, 2, 3] = bad
    with pytest.raises(ValueError, match=r"latents contain 1 NaN or infinite value"):
        tiny_vae.decode(z)


def test_vae_refuses_empty_latents(tiny_vae):
    with pytest.raises(ValueError, match=r"latents of shape \(4, 0, 0\) are empty"):
        tiny_vae.decode(torch.zeros(4, 0, 0))


# --- CLI --------------------------------------------------------------------------------------------------
@pytest.fixture
def model_dir(saved_tiny_tokenizer):
    return str(saved_tiny_tokenizer[0])


def _decode(model_dir, tmp_path, array, *extra):
    np.save(tmp_path / "ids.npy", array)
    return main(["decode", str(tmp_path / "ids.npy"), "-o", str(tmp_path / "out.png"), "--model", model_dir, *extra])


def test_cli_decode_refuses_float_ids(model_dir, tmp_path, capsys):
    assert _decode(model_dir, tmp_path, np.full((3, 3), 0.7)) == 1
    assert "ids.npy: decode: ids have dtype float64; expected an integer dtype" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_cli_decode_refuses_a_batch_clearly(model_dir, tmp_path, capsys):
    assert _decode(model_dir, tmp_path, np.zeros((2, 3, 3), np.uint16)) == 1
    assert "ids.npy: ids of shape (2, 3, 3); imgtok decode takes one (h, w) grid" in capsys.readouterr().err


@pytest.mark.parametrize("size,match", [(["-3", "80"], "size (-3, 80) does not fit"), (["0", "4"], "size (0, 4)"),
                                        (["100", "4"], "size (100, 4)")])
def test_cli_decode_refuses_bad_sizes(model_dir, tmp_path, capsys, size, match):
    assert _decode(model_dir, tmp_path, np.zeros((3, 3), np.uint16), "--size", *size) == 1
    assert match in capsys.readouterr().err and not (tmp_path / "out.png").exists()


def test_cli_decode_reports_out_of_range_and_pickled_npy(model_dir, tmp_path, capsys):
    assert _decode(model_dir, tmp_path, np.full((2, 2), 2**64 - 1, np.uint64)) == 1
    assert "id 18446744073709551615 is outside the vocabulary" in capsys.readouterr().err
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["decode", str(tmp_path / "obj.npy"), "-o", str(tmp_path / "o.png"), "--model", model_dir]) == 1
    assert "obj.npy: not a readable ids file (Object arrays cannot be loaded" in capsys.readouterr().err
