"""The token prior: model pieces by hand, and a smoke run of the whole pipeline on a tiny shard set."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tokenizer import ImageTokenizer, TokenLayout
from train.prior import KVCache, PriorConfig, TokenPrior, filter_logits, sample_grids
from train.prior_loop import lr_at, load_prior, make_batch, PriorTrainConfig

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_prior.py"


def _script():
    spec = importlib.util.spec_from_file_location("train_prior_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_model(vocab_size=20, max_seq_len=32):
    return TokenPrior(PriorConfig(vocab_size, max_seq_len, n_layer=2, n_head=2, n_embd=16)).eval()


def test_kv_cache_matches_full_forward():
    model = _tiny_model()
    x = torch.randint(0, 20, (3, 12))
    full = model(x).logits  # (B, T, V)
    cache = KVCache(2)
    steps = [model(x[:, :4], cache=cache).logits] + [model(x[:, t : t + 1], cache=cache).logits for t in range(4, 12)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    with pytest.raises(ValueError, match="longer than max_seq_len=32"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_causality():
    model = _tiny_model()
    x = torch.randint(0, 20, (1, 10))
    y = x.clone()
    y[0, 6] = (y[0, 6] + 1) % 20
    a, b = model(x).logits, model(y).logits
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)  # positions before the change do not see it
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_filter_logits_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    inf = float("-inf")
    assert filter_logits(logits, top_k=2)[0, 2:].tolist() == [inf, inf]
    kept = filter_logits(logits, top_p=0.7)  # 0.5 < 0.7 -> keep the next one too, then stop
    assert torch.isfinite(kept[0]).tolist() == [True, True, False, False]
    assert torch.isfinite(filter_logits(logits, top_p=0.5)[0]).tolist() == [True, False, False, False]
    shuffled = logits[:, [2, 0, 3, 1]]  # the nucleus follows the values, not the positions
    assert torch.isfinite(filter_logits(shuffled, top_p=0.7)[0]).tolist() == [False, True, False, True]
    assert torch.equal(filter_logits(logits), logits)


def test_constrained_sampling_gives_valid_grids():
    layout = TokenLayout(image_vocab_size=10, size_prefix=True, max_grid_side=4)
    model = _tiny_model(vocab_size=layout.vocab_size, max_seq_len=layout.sequence_length(3, 4))
    g = torch.Generator().manual_seed(0)
    grids = sample_grids(model, layout, 5, 3, 4, temperature=1.5, top_k=6, top_p=0.95, generator=g)
    assert grids.shape == (5, 3, 4) and grids.dtype == torch.long
    assert int(grids.min()) >= 0 and int(grids.max()) < 10
    for grid in grids:  # every sample is a well-formed sequence
        assert torch.equal(layout.from_sequence(layout.to_sequence(grid))[0], grid)
    # A near-zero temperature is greedy decoding: the argmax code given the prefix.
    greedy = sample_grids(model, layout, 1, 3, 4, temperature=1e-6)[0]
    seq = layout.to_sequence(greedy)[None]  # (1, L)
    logits = model(seq).logits[0, :-1]  # predictions for positions 1..L-1
    codes = seq[0, 1:] - layout.image_offset
    is_code = (seq[0, 1:] >= layout.image_offset) & (seq[0, 1:] < layout.boi_id)
    argmax = logits[:, layout.image_offset : layout.boi_id].argmax(-1)
    assert torch.equal(argmax[is_code], codes[is_code])
    with pytest.raises(ValueError, match="needs 18 positions"):
        sample_grids(_tiny_model(vocab_size=layout.vocab_size, max_seq_len=10), layout, 1, 3, 4)


def test_make_batch_masks_padding_and_marks_codes():
    layout = TokenLayout(image_vocab_size=4)
    batch = make_batch(layout, [torch.tensor([[1, 2]]), torch.tensor([[3]])], torch.device("cpu"))
    B, E, N = layout.boi_id, layout.eoi_id, layout.eol_id
    assert batch.inputs.tolist() == [[B, 1, 2, N], [B, 3, N, E]]  # E of row 1 is padding's predecessor
    assert batch.targets.tolist() == [[1, 2, N, E], [3, N, E, -100]]
    assert batch.is_code.tolist() == [[True, True, False, False], [True, False, False, False]]


def test_lr_schedule():
    cfg = PriorTrainConfig(tokens="", out="", steps=110, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)  # half way through the cosine
    assert lr_at(110, cfg) == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)


def test_smoke_run_learns_and_writes_decodable_samples(tmp_path):
    out = tmp_path / "run"
    assert _script().main(["--smoke", "--out", str(out), "--steps", "60", "--eval-every", "30", "--threads", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # Learned: validation loss falls well below its untrained value (log2 of the vocabulary, about)
    # and below the unigram entropy of the codes, which a context-free model cannot beat.
    assert metrics["first_val_bits_per_code"] > 5.0
    assert metrics["val_bits_per_code"] < metrics["first_val_bits_per_code"] - 2.0
    assert metrics["val_bits_per_code"] < metrics["unigram_entropy_bits"]
    assert metrics["unigram_entropy_bits"] <= metrics["uniform_bits"] == math.log2(64)

    # Samples: grids decode with the tokenizer named in the prior's config into exactly the PNGs written.
    model, layout, config = load_prior(out / "prior")
    grids = load_file(str(out / "samples" / "grids.safetensors"))["ids"].long()
    assert grids.shape == (4, 8, 8) and int(grids.max()) < layout.image_vocab_size
    tok = ImageTokenizer.from_pretrained(config["tokenizer"])
    decoded = tok.decode(grids)  # (4, 3, 16, 16)
    for i, image in enumerate(decoded):
        png = np.asarray(Image.open(out / "samples" / f"sample_{i:03d}.png").convert("RGB"))
        assert png.shape == (16, 16, 3)
        assert np.abs(png.astype(np.float32) / 255 - image.permute(1, 2, 0).numpy()).max() <= 1 / 255 + 1e-6

    # The saved prior (safetensors + JSON, reloaded strictly) is the trained one: it predicts the shards'
    # sequences far better than a uniform guess over the vocabulary.
    from tokenizer.data import TokenShardDataset

    ds = TokenShardDataset(out / "tokens")
    batch = make_batch(layout, [ds[i].ids for i in range(16)], torch.device("cpu"))
    with torch.no_grad():
        loss = model(batch.inputs, batch.targets).loss.item() / math.log(2)
    assert loss < 0.5 * math.log2(layout.vocab_size)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000060"]
    assert {p.name for p in (out / "checkpoints" / "step_0000060").iterdir()} == {
        "model.safetensors", "optim.safetensors", "state.json", "rng",  # rng/: one file per rank (c479a9c)
    }

    # More samples from the saved prior, another grid shape, without training.
    more = tmp_path / "more"
    args = ["--sample-from", str(out / "prior"), "--out", str(more), "--num-samples", "2", "--sample-size", "4", "6",
            "--top-k", "8", "--temperature", "0.8"]
    assert _script().main(args) == 0
    assert load_file(str(more / "grids.safetensors"))["ids"].shape == (2, 4, 6)
    assert Image.open(more / "sample_001.png").size == (12, 8)  # (W, H): f = 2
