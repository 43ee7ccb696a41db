"""Batch tokenization (tokenizer.batch_tokenize): ids against tok.encode, errors, resume, ranks, tars, lists."""

from __future__ import annotations

import io
import shutil
import json
import tarfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_images import write_exif_rotated_jpeg, write_garbage, write_image, write_truncated
from safetensors.numpy import load_file

from tokenizer import ImageTokenizer
from tokenizer.batch_tokenize import TokenizeConfig, TokenizeError, tokenize_dataset
from tokenizer.inputs import PREPROCESSING_VERSION, Preprocess, center_crop, resolve_input
from tokenizer.shards import ids_dtype, merge_shards
from tokenizer.data import TokenShardDataset
from tokenizer.image_io import read_image
from tokenizer.checkpoints import sha256_of

SIZE = 16  # centre-crop side: an 8 x 8 grid with vq-tiny (f = 2)
BATCH = 3
SHARD = 4

# (relative path, mode, height, width): several sizes and modes, 16-bit, alpha, palette, CMYK JPEG.
GOOD = [
    ("a_rgb.png", "RGB", 20, 28),
    ("b_gray.png", "L", 33, 17),
    ("c_rgba.png", "RGBA", 40, 40),
    ("d_16bit.png", "I;16", 24, 30),
    ("e_palette.png", "P+transparency", 18, 26),
    ("f_cmyk.jpg", "CMYK", 30, 22),
    ("nested/g_rgb.jpg", "RGB", 50, 30),
    ("nested/h_gray.png", "L", 16, 16),
    ("nested/deeper/i_rgb.png", "RGB", 21, 35),
]
BAD = ["corrupt.jpg", "nested/truncated.png"]


def _write_folder(root: Path) -> Path:
    for rel, mode, height, width in GOOD:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_image(root / rel, mode, height, width)
    write_exif_rotated_jpeg(root / "j_exif.jpg", 20, 30)
    write_garbage(root / "corrupt.jpg")
    write_truncated(root / "nested/truncated.png", root / "a_rgb.png", keep=0.5)
    (root / "notes.md").write_text("not an image: ignored")
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A mixed image folder, a saved vq-tiny model, and one reference run (one process, 2 workers)."""
    base = tmp_path_factory.mktemp("batch")
    torch.manual_seed(0)
    tok = ImageTokenizer.from_preset("vq-tiny")
    model = tok.save_pretrained(base / "vq-tiny")
    images = _write_folder(base / "images")
    config = TokenizeConfig(input=str(images), output=str(base / "reference"), model=str(model), size=SIZE,
                            batch_size=BATCH, shard_size=SHARD, workers=2, progress=False)
    result = tokenize_dataset(config)
    return dict(base=base, model=model, images=images, tok=ImageTokenizer.from_pretrained(model),
                reference=base / "reference", result=result, config=config)


def _run(env, output: str, **changes) -> object:
    fields = dict(env["config"].__dict__, output=str(env["base"] / output), workers=0)
    fields.update(changes)
    return tokenize_dataset(TokenizeConfig(**fields))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_reference_run_tokenizes_every_good_image_and_records_the_bad(env):
    result, ds = env["result"], TokenShardDataset(env["reference"])
    assert result.num_inputs == len(GOOD) + 1 + len(BAD) and result.merged
    assert result.images == len(GOOD) + 1 and result.errors == len(BAD)
    keys = sorted(ds.keys)
    assert keys == sorted([rel for rel, *_ in GOOD] + ["j_exif.jpg"])
    errors = {row["key"]: row["error"] for row in ds.errors()}
    assert sorted(errors) == sorted(BAD)
    assert "corrupt.jpg" in errors["corrupt.jpg"] and "cannot decode" in errors["corrupt.jpg"]
    for i in range(len(ds)):
        item = ds[i]
        assert item.ids.shape == (SIZE // 2, SIZE // 2) and item.ids.dtype == torch.long
        expected = read_image(env["images"] / item.key).shape[-2:]
        assert (item.height, item.width) == tuple(expected)  # original size, EXIF orientation applied
    assert ds[ds.index_of("j_exif.jpg")].height == 30  # stored 20 x 30, displayed 30 x 20


def test_ids_equal_tok_encode_of_the_same_batches_and_agree_with_single_encodes(env):
    """Each shard's images, preprocessed and batched in input order, through tok.encode: identical."""
    tok, ds = env["tok"], TokenShardDataset(env["reference"])
    tok.max_batch = BATCH  # tok.encode then splits a batch exactly as the engine did
    crop = Preprocess("center_crop", SIZE, tok.downsample_factor)
    agree = total = 0
    for shard in ds.shards():
        rows = list(ds.read_shard(shard).rows)
        pixels = torch.stack([crop(read_image(env["images"] / ds.keys[i])) for i in rows])  # (n, 3, S, S)
        batch_ids = tok.encode(pixels)  # (n, h, w)
        stored = torch.stack([ds[i].ids for i in rows])
        assert torch.equal(stored, batch_ids)
        single = torch.stack([tok.encode(p) for p in pixels])  # batch size 1
        agree += int((single == stored).sum())
        total += stored.numel()
    assert agree / total >= 0.999


def test_native_policy_keeps_sizes_and_buckets_by_padded_shape(env):
    result = _run(env, "native", native=True, batch_size=2)
    tok, ds = env["tok"], TokenShardDataset(result.output)
    assert ds.preprocessing["policy"] == "native" and len(ds) == len(GOOD) + 1
    tok.max_batch = 2
    pad = Preprocess("native", None, tok.downsample_factor)
    for shard in ds.shards():
        buckets: dict[tuple[int, int], list[int]] = {}
        for i in ds.read_shard(shard).rows:
            image = read_image(env["images"] / ds.keys[i])
            assert ds.grid_shape(i) == tok.grid_size(*image.shape[-2:])
            assert ds.grid_shape(i) == tuple(tok.encode(image).shape)
            buckets.setdefault(tuple(pad(image).shape[-2:]), []).append(i)
        for rows in buckets.values():  # the engine's batches: same padded shape, input order
            padded = torch.stack([pad(read_image(env["images"] / ds.keys[i])) for i in rows])
            assert torch.equal(tok.encode(padded), torch.stack([ds[i].ids for i in rows]))


def test_native_max_side_shrinks_large_images_only(env):
    result = _run(env, "native_max", native=True, max_side=24, batch_size=2)
    ds = TokenShardDataset(result.output)
    assert ds.preprocessing == {"policy": "native", "multiple_of": 2, "max_side": 24, "resample": "bicubic",
                                "pad": "replicate", "version": PREPROCESSING_VERSION}
    for i in range(len(ds)):
        h, w = ds.grid_shape(i)
        height, width = ds[i].height, ds[i].width  # the original size is still recorded
        scale = min(1.0, 24 / max(height, width))
        assert (h, w) == (-(-round(height * scale) // 2), -(-round(width * scale) // 2))


def test_same_inputs_give_byte_identical_output_with_any_worker_count(env):
    again = _run(env, "again", workers=0)
    assert _files(again.output) == _files(env["reference"])


def test_stop_after_n_shards_then_resume_gives_identical_output(env):
    out = env["base"] / "resumed"
    first = _run(env, "resumed", max_shards=1)
    assert first.shards_written == 1 and not first.merged and not (out / "index.jsonl").exists()
    with pytest.raises(FileNotFoundError, match="shards are missing"):
        TokenShardDataset(out)
    assert len(TokenShardDataset(out, allow_partial=True)) > 0
    # Debris of a run killed mid-shard: a temporary file and a shard without its committing index file.
    (out / "shard-000001.safetensors.tmp-12345").write_bytes(b"partial")
    (out / "shard-000002.safetensors").write_bytes(b"truncated")
    second = _run(env, "resumed")
    assert second.shards_skipped == 1 and second.shards_written == first.num_shards - 1 and second.merged
    assert _files(out) == _files(env["reference"])
    ds = TokenShardDataset(out)
    seen = ds.keys + [row["key"] for row in ds.errors()]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == first.num_inputs  # none missing, none twice
    third = _run(env, "resumed")
    assert third.shards_written == 0 and third.images == 0 and _files(out) == _files(env["reference"])


def test_crash_between_a_shards_files_then_resume_gives_identical_output(env, monkeypatch):
    """Die after shard 1's ids and errors are renamed into place but before its index commits it."""
    import tokenizer.shards as bt

    real = bt.write_atomic

    def crashing(path: Path, data: bytes) -> None:
        if path.name == "shard-000001.index.jsonl":
            raise KeyboardInterrupt("simulated kill")
        real(path, data)

    monkeypatch.setattr(bt, "write_atomic", crashing)
    with pytest.raises(KeyboardInterrupt):
        _run(env, "crashed")
    out = env["base"] / "crashed"
    assert (out / "shard-000001.safetensors").exists() and not (out / "shard-000001.index.jsonl").exists()
    monkeypatch.setattr(bt, "write_atomic", real)
    resumed = _run(env, "crashed")
    assert resumed.shards_skipped == 1 and resumed.shards_written == resumed.num_shards - 1
    assert _files(out) == _files(env["reference"])


def test_two_ranks_give_the_same_output_as_one(env):
    r0 = _run(env, "ranks", rank=0, world_size=2)
    assert not r0.merged  # rank 1's shards are not there yet
    r1 = _run(env, "ranks", rank=1, world_size=2)
    assert r1.merged and r0.images + r1.images == env["result"].images
    assert _files(r1.output) == _files(env["reference"])


def _distributed_rank(rank: int, store: str, fields: dict) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                                         timeout=timedelta(seconds=120))
    try:
        result = tokenize_dataset(TokenizeConfig(**fields))  # rank and world size come from the process group
        Path(fields["output"], f"rank{rank}.json").write_text(json.dumps([result.rank, result.world_size, result.images]))
    finally:
        torch.distributed.destroy_process_group()


def test_torch_distributed_ranks_split_the_work_and_rank0_merges(env):
    import torch.multiprocessing as mp

    fields = dict(env["config"].__dict__, output=str(env["base"] / "distributed"), workers=0)
    mp.start_processes(_distributed_rank, args=(str(env["base"] / "dist_store"), fields), nprocs=2,
                       start_method="spawn")  # fork after OpenMP has run in the parent can deadlock
    out = env["base"] / "distributed"
    shares = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for r in range(2):
        (out / f"rank{r}.json").unlink()
    assert [s[:2] for s in shares] == [[0, 2], [1, 2]] and all(s[2] > 0 for s in shares)
    assert sum(s[2] for s in shares) == env["result"].images  # disjoint shares
    assert _files(out) == _files(env["reference"])


def test_merge_only_after_ranks_and_reader_without_merge(env):
    _run(env, "ranks_nomerge", rank=1, world_size=2)
    out = _run(env, "ranks_nomerge", rank=0, world_size=2).output
    (out / "index.jsonl").unlink()
    (out / "errors.jsonl").unlink()
    assert TokenShardDataset(out).keys == TokenShardDataset(env["reference"]).keys  # per-shard indexes
    merged = merge_shards(out)
    assert merged.complete and merged.images == env["result"].images and merged.errors == len(BAD)
    assert _files(out) == _files(env["reference"])


def test_metadata_records_model_preprocessing_version_and_dtype(env):
    import tokenizer

    meta = json.loads((env["reference"] / "metadata.json").read_text())
    assert meta["model"]["sha256"] == sha256_of(env["model"] / "model.safetensors")
    assert meta["model"]["name_or_path"] == str(env["model"])
    assert meta["imgtok_version"] == tokenizer.__version__
    assert meta["vocab_size"] == 64 and meta["dtype"] == "uint16"
    assert meta["preprocessing"]["policy"] == "center_crop" and meta["preprocessing"]["size"] == SIZE
    assert meta["num_shards"] == env["result"].num_shards
    ids = load_file(str(env["reference"] / "shard-000000.safetensors"))["ids"]
    assert ids.dtype == np.uint16 and ids.ndim == 1


def test_resume_with_other_settings_is_refused(env):
    with pytest.raises(TokenizeError, match="other settings.*preprocessing"):
        _run(env, "reference", size=SIZE * 2)
    with pytest.raises(TokenizeError, match="encode"):
        _run(env, "reference", batch_size=BATCH + 1)
    # Shards of an older preprocessing (the crop-then-resize centre crop: no version recorded) are never
    # mixed with new ones.
    old_folder = env["base"] / "old-preprocessing"
    shutil.copytree(env["reference"], old_folder)
    meta = json.loads((old_folder / "metadata.json").read_text())
    del meta["preprocessing"]["version"]
    (old_folder / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    with pytest.raises(TokenizeError, match="other settings.*preprocessing"):
        _run(env, "old-preprocessing")


def test_center_crop_resizes_the_short_side_then_crops_like_torchvision():
    torchvision = pytest.importorskip("torchvision")
    from torchvision.transforms import v2

    for shape in ((37, 52), (53, 37), (40, 63), (16, 30), (9, 12)):  # truncated long sides, odd margins, upscaling
        image = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0))
        ours = center_crop(image, 16)
        theirs = v2.CenterCrop(16)(v2.Resize(16, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)(image))
        assert ours.shape == (3, 16, 16)
        # torchvision does not clamp bicubic's overshoot; we do.
        torch.testing.assert_close(ours, theirs.clamp(0, 1), atol=1e-5, rtol=0, msg=str(shape))
        assert Preprocess("center_crop", 16, 2)(image).equal(ours)


def test_large_vocabulary_is_stored_as_int32(env, tmp_path):
    assert ids_dtype(65536) == np.uint16 and ids_dtype(65537) == np.int32
    tok = ImageTokenizer.from_preset("vq-tiny", **{"quantizer.codebook_size": 70000})
    folder = tmp_path / "two"
    folder.mkdir()
    for i in range(2):
        write_image(folder / f"{i}.png", "RGB", 12, 12)
    result = tokenize_dataset(TokenizeConfig(input=str(folder), output=str(tmp_path / "out"), size=8, workers=0,
                                             progress=False), tokenizer=tok)
    ds = TokenShardDataset(result.output)
    assert ds.metadata["dtype"] == "int32" and ds.metadata["model"]["name_or_path"] == "in-memory"
    assert load_file(str(result.output / "shard-000000.safetensors"))["ids"].dtype == np.int32
    crop = Preprocess("center_crop", 8, 2)
    assert torch.equal(ds["1.png"].ids, tok.encode(crop(read_image(folder / "1.png"))[None])[0])


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_webdataset_tars_with_side_files(env, tmp_path):
    images = env["images"]
    png = (images / "a_rgb.png").read_bytes()
    jpg = (images / "nested/g_rgb.jpg").read_bytes()
    gray = (images / "b_gray.png").read_bytes()
    (tmp_path / "shards-000.tar").write_bytes(_tar_bytes([
        ("s/000.png", png), ("s/000.json", b'{"caption": "a ramp", "n": 1}'), ("s/000.txt", "r\u00e9sum\u00e9".encode()),
        ("s/001.jpg", jpg), ("s/001.txt", b"second"),
        ("s/002.jpg", b"not a jpeg"), ("s/002.json", b"{}"),
        ("s/003.json", b'{"no": "image"}'),  # a key without an image: not an input
    ]))
    (tmp_path / "shards-001.tar").write_bytes(_tar_bytes([("004.png", gray), ("004.json", b"{broken")]))
    assert resolve_input(str(tmp_path / "shards-{000..001}.tar")).tars == resolve_input(str(tmp_path / "*.tar")).tars
    tok = env["tok"]
    result = tokenize_dataset(TokenizeConfig(input=str(tmp_path / "shards-*.tar"), output=str(tmp_path / "out"),
                                             model=str(env["model"]), size=SIZE, batch_size=BATCH, workers=2,
                                             progress=False))
    ds = TokenShardDataset(result.output)
    assert ds.keys == ["s/000", "s/001"] and ds.metadata["input"]["kind"] == "tar"
    first = ds["s/000"]
    assert first.meta == {"json": {"caption": "a ramp", "n": 1}, "txt": "r\u00e9sum\u00e9"}
    assert first.source.endswith("shards-000.tar:s/000.png") and (first.height, first.width) == (20, 28)
    assert ds["s/001"].meta == {"txt": "second"}
    errors = {row["key"]: row["error"] for row in ds.errors()}
    assert sorted(errors) == ["004", "s/002"] and "cannot decode" in errors["s/002"]
    assert "shards-001.tar:004.json: side file is not valid UTF-8 JSON" in errors["004"]
    # Same bytes as the folder's files, same batch: the same ids as tok.encode gives.
    crop = Preprocess("center_crop", SIZE, 2)
    pixels = torch.stack([crop(read_image(images / "a_rgb.png")), crop(read_image(images / "nested/g_rgb.jpg"))])
    tok.max_batch = BATCH
    assert torch.equal(torch.stack([first.ids, ds["s/001"].ids]), tok.encode(pixels))


def test_list_file_input_keys_are_its_lines(env, tmp_path):
    images = env["images"]
    listing = tmp_path / "lists" / "files.txt"
    listing.parent.mkdir()
    lines = ["# a comment", str(images / "c_rgba.png"), "", "../missing.png", "../local.png"]
    write_image(tmp_path / "local.png", "RGB", 14, 18)
    listing.write_text("\n".join(lines) + "\n")
    result = _run(env, "listed", input=str(listing))
    ds = TokenShardDataset(result.output)
    assert ds.metadata["input"]["kind"] == "list" and result.num_inputs == 3
    assert ds.keys == [str(images / "c_rgba.png"), "../local.png"]
    assert ds["../local.png"].source == str(listing.parent / "../local.png")
    assert [row["key"] for row in ds.errors()] == ["../missing.png"]
    assert "FileNotFoundError" in ds.errors()[0]["error"]
    assert torch.equal(ds[0].ids, TokenShardDataset(env["reference"])["c_rgba.png"].ids)


def test_bad_arguments_raise_clear_errors(env, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder, list file or tar"):
        resolve_input(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="no tar files"):
        resolve_input(str(tmp_path / "*.tar"))
    with pytest.raises(TokenizeError, match="batch_size"):
        _run(env, "bad", batch_size=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizeError, match="no images found"):
        _run(env, "bad", input=str(tmp_path / "empty"))
    with pytest.raises(TokenizeError, match="rank 2 of world size 2"):
        _run(env, "bad", rank=2, world_size=2)
    (tmp_path / "broken.tar").write_bytes(b"\x00garbage" * 100)
    broken = _run(env, "broken", input=str(tmp_path / "broken.tar"))  # a row, not the end of the run
    assert (broken.images, broken.errors) == (0, 1)
    row = json.loads((env["base"] / "broken" / "errors.jsonl").read_text())
    assert "broken.tar: not a readable tar archive" in row["error"]


def test_command_line_front_ends_run_the_same_engine(env, capsys):
    from tokenizer.cli import main

    out = env["base"] / "cli"
    argv = ["tokenize", "--model", str(env["model"]), "--input", str(env["images"]), "--output", str(out),
            "--size", str(SIZE), "--batch-size", str(BATCH), "--shard-size", str(SHARD), "--workers", "0"]
    assert main(argv) == 0
    assert "all 3 shards complete" in capsys.readouterr().out
    assert _files(out) == _files(env["reference"])
    assert main(argv + ["--no-progress"]) == 0 and "3 already done" in capsys.readouterr().out
    assert main(["tokenize", "--input", str(env["images"]), "--output", str(out), "--merge-only"]) == 0
    assert main(argv[:-2] + ["--workers", "-1"]) == 1
    assert "workers" in capsys.readouterr().err
