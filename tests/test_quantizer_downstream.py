"""The quantizer families through everything downstream: the API (depth-aware shapes), save/load, the CLI,
batch-tokenized shards with a depth axis, and TokenLayout with depth and sub-tokens.

Axis letters: B batch, h/w grid, R residual depths, S tokens per position.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers_images import write_image

from tokenizer import ImageTokenizer, SequenceError, TokenLayout
from tokenizer.batch_tokenize import TokenizeConfig, tokenize_dataset
from tokenizer.cli import main as cli_main
from tokenizer.data import TokenShardDataset, collate_tokens

FAMILIES = ["vq-tiny", "fsq-tiny", "lfq-tiny", "bsq-tiny", "rvq-tiny"]


@pytest.fixture(scope="module", params=FAMILIES)
def tok(request):
    torch.manual_seed(0)
    return ImageTokenizer.from_preset(request.param)


def test_encode_decode_shapes_and_rate(tok):
    depth = (tok.depth,) if tok.depth > 1 else ()
    image = torch.rand(3, 12, 20)
    ids = tok.encode(image)
    assert ids.shape == (6, 10, *depth) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < tok.vocab_size
    batch = tok.encode(torch.stack([image, image.flip(-1)]))
    assert batch.shape == (2, 6, 10, *depth) and torch.equal(batch[0], ids)
    assert tok.decode(ids, size=(12, 20)).shape == (3, 12, 20)
    assert tok.decode(batch).shape == (2, 3, 12, 20)
    # decode(ids) equals decoding the quantized latents
    with torch.no_grad():
        x = image[None] * 2 - 1
        q = tok.model.quantizer(tok.model.encode_latents(x))
        torch.testing.assert_close(tok.model.decode_ids(q.indices), tok.model.decode_latents(q.quantized),
                                   rtol=1e-5, atol=1e-5)
    assert tok.bits_per_pixel(12, 20) == pytest.approx(6 * 10 * tok.depth * np.log2(tok.vocab_size) / 240)


def test_save_load_round_trip_gives_the_same_ids(tok, tmp_path):
    folder = tok.save_pretrained(tmp_path / "m")
    loaded = ImageTokenizer.from_pretrained(folder)
    assert loaded.config == tok.config and loaded.depth == tok.depth
    image = torch.rand(3, 16, 16)
    assert torch.equal(loaded.encode(image), tok.encode(image))
    card = (folder / "README.md").read_text()
    assert tok.config.quantizer.kind.upper() in card.upper() or "vector quantizer" in card


def test_depth_tells_a_deep_grid_from_a_batch():
    rvq = ImageTokenizer.from_preset("rvq-tiny")  # depth 3
    ids = rvq.encode(torch.rand(3, 8, 8))  # (4, 4, 3)
    assert rvq.decode(ids).shape == (3, 8, 8)
    with pytest.raises(ValueError, match=r"expected \(h, w, 3\) or \(B, h, w, 3\).*depth 3"):
        rvq.decode(ids[..., :2])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        rvq.decode(torch.full((4, 4, 3), rvq.vocab_size))
    flat = ImageTokenizer.from_preset("vq-tiny")
    assert flat.decode(torch.zeros(3, 4, 4, dtype=torch.long)).shape == (3, 3, 8, 8)  # a batch of 3 there


def test_cli_encode_decode_with_depth(tmp_path, capsys):
    tok = ImageTokenizer.from_preset("rvq-tiny")
    model = tok.save_pretrained(tmp_path / "rvq")
    write_image(tmp_path / "a.png", "RGB", 12, 16)
    assert cli_main(["encode", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.npy"), "--model", str(model)]) == 0
    assert "3 (depths) = 144 tokens" in capsys.readouterr().out
    ids = np.load(tmp_path / "a.npy")
    assert ids.shape == (6, 8, 3)
    assert cli_main(["decode", str(tmp_path / "a.npy"), "-o", str(tmp_path / "b.png"), "--model", str(model)]) == 0
    assert (tmp_path / "b.png").is_file()


@pytest.mark.parametrize("preset", ["rvq-tiny", "lfq-tiny"])
def test_shards_store_and_return_the_depth_axis(preset, tmp_path):
    torch.manual_seed(0)
    tok = ImageTokenizer.from_preset(preset)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (h, w) in enumerate([(12, 12), (10, 14), (16, 8)]):
        write_image(folder / f"{i}.png", "RGB", h, w)
    result = tokenize_dataset(TokenizeConfig(input=str(folder), output=str(tmp_path / "out"), native=True,
                                             workers=0, batch_size=2, shard_size=2, progress=False), tokenizer=tok)
    ds = TokenShardDataset(result.output)
    assert ds.depth == tok.depth and ds.metadata["model"]["depth"] == tok.depth
    from tokenizer.image_io import read_image

    for i in range(3):
        item = ds[f"{i}.png"]
        assert torch.equal(item.ids, tok.encode(read_image(folder / f"{i}.png")))
    rows = [r for r in (result.output / "index.jsonl").read_text().splitlines()]
    if tok.depth > 1:
        assert all('"depth": 3' in r or '"depth":3' in r for r in rows)
    streamed = [item.ids for shard in ds.shards() for item in ds.iter_shard(shard)]
    assert all(torch.equal(a, ds[i].ids) for i, a in enumerate(streamed))
    batch = collate_tokens([ds[0], ds[0]])
    assert batch.ids.shape == (2, *ds[0].ids.shape)


# --- TokenLayout ------------------------------------------------------------------------------------
def test_layout_depth_by_hand():
    # K = 10 per depth, 2 depths, separate offsets: depth 0 code c -> 5 + c, depth 1 code c -> 15 + c.
    layout = TokenLayout(image_vocab_size=10, text_vocab_size=5, depth=2)
    grid = torch.tensor([[[1, 2], [3, 4]]])  # (h=1, w=2, R=2)
    seq = layout.to_sequence(grid)
    assert layout.image_token_count == 20 and layout.boi_id == 25
    assert seq.tolist() == [25, 6, 17, 8, 19, layout.eol_id, layout.eoi_id]
    assert len(seq) == layout.sequence_length(1, 2)
    [back] = layout.from_sequence(seq)
    assert torch.equal(back, grid)
    shared = TokenLayout(image_vocab_size=10, text_vocab_size=5, depth=2, shared_vocab=True)
    assert shared.to_sequence(grid).tolist() == [15, 6, 7, 8, 9, shared.eol_id, shared.eoi_id]
    assert torch.equal(shared.from_sequence(shared.to_sequence(grid))[0], grid)


def test_layout_subtokens_by_hand():
    # 18-bit ids split into 2 x 9 bits, most significant first, separate offsets of 512 each.
    layout = TokenLayout(image_vocab_size=2**18, subtokens=2)
    assert layout.slot_vocab_size == 512 and layout.image_token_count == 1024
    ids = torch.tensor([[5 * 512 + 7, 2**18 - 1]])  # (1, 2)
    seq = layout.to_sequence(ids)
    assert seq.tolist() == [1024, 5, 512 + 7, 511, 512 + 511, layout.eol_id, layout.eoi_id]
    assert torch.equal(layout.from_sequence(seq)[0], ids)
    assert layout.vocab_size == 1024 + 4  # vs 2^18 + 4 unsplit
    with pytest.raises(ValueError, match="subtokens=2 needs image_vocab_size = 2\\^b with b divisible by 2"):
        TokenLayout(image_vocab_size=2**17, subtokens=2)


@pytest.mark.parametrize("options", [dict(), dict(shared_vocab=True), dict(eol=False, size_prefix=True),
                                     dict(size_prefix=True)])
@pytest.mark.parametrize("depth,subtokens", [(1, 2), (3, 1), (2, 3)])
def test_layout_round_trips_with_depth_and_subtokens(options, depth, subtokens):
    g = torch.Generator().manual_seed(depth * 10 + subtokens)
    layout = TokenLayout(image_vocab_size=2**6, text_vocab_size=7, depth=depth, subtokens=subtokens,
                         max_grid_side=8, **options)
    shape = (3, 5) if depth == 1 else (3, 5, depth)
    grid = torch.randint(0, 2**6, shape, generator=g)
    text = torch.tensor([1, 2, 3])
    seq = layout.interleave([text, grid, text])
    assert seq.numel() == 6 + layout.sequence_length(3, 5)
    assert int(seq.max()) < layout.vocab_size
    [back] = layout.from_sequence(seq)
    assert torch.equal(back, grid)
    batch = torch.stack([grid, grid.flip(0)])
    assert torch.equal(layout.from_sequence(layout.to_sequence(batch)[1])[0], grid.flip(0))


def test_layout_refuses_tokens_in_the_wrong_slot():
    layout = TokenLayout(image_vocab_size=10, text_vocab_size=5, depth=2)
    seq = layout.to_sequence(torch.tensor([[[1, 2]]]))
    seq[1], seq[2] = seq[2].clone(), seq[1].clone()  # depth 1's token where depth 0's belongs
    with pytest.raises(SequenceError, match=r"position 1: image token 2 of slot 1 .* in slot 0"):
        layout.from_sequence(seq)
    with pytest.raises(ValueError, match=r"expected a grid \(h, w, 2\)"):
        layout.to_sequence(torch.zeros(2, 2, dtype=torch.long))


# --- training ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["fsq-tiny", "lfq-tiny", "bsq-tiny", "rvq-tiny"])
def test_python_m_train_runs_each_family_and_exports(preset, tmp_path):
    from PIL import Image

    from train.__main__ import main as train_main

    data = tmp_path / "photos"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((np.kron(rng.random((4, 4, 3)), np.ones((8, 8, 1))) * 255).astype(np.uint8)).save(
            data / f"{i}.png")
    run = tmp_path / "run"
    argv = ["--preset", preset, "--data", str(data), "--out", str(run), "--smoke"]
    for s in ("steps=4", "lr=3e-3", "warmup_steps=1", "log_every=1", "amp=none", "ckpt_every=100"):
        argv += ["--set", s]
    assert train_main(argv) == 0
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows) and "perplexity" in rows[-1]
    tok = ImageTokenizer.from_pretrained(run / "export")
    assert tok.config.quantizer.kind == preset.split("-")[0] and tok.encode(torch.rand(3, 16, 16)).shape[:2] == (8, 8)
