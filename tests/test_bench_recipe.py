"""scripts/bench_recipe.py: recipes trained for equal minutes, evaluated at every point, one JSON line each."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
import bench_recipe  # noqa: E402
from tokenizer.checkpoints import sha256_of  # noqa: E402


def _images(folder: Path, count: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = np.kron(rng.random((5, 6, 3)), np.ones((8, 8, 1)))  # (40, 48, 3)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def test_two_recipes_get_every_point_evaluated(tmp_path, capsys):
    train, val = _images(tmp_path / "train", 4, 0), _images(tmp_path / "val", 2, 1)
    out = tmp_path / "points.jsonl"
    smoke = "--smoke --set amp=none --set steps=100000"
    code = bench_recipe.main([
        "--recipe", f"vq=--preset vq-f8 {smoke}", "--recipe", f"kl=--preset kl-f8 {smoke} --set lr=3e-4",
        "--data", str(train), "--val-data", str(val), "--minutes", "0.02", "--points", "0.01", "0.02",
        "--slice-seconds", "0.3", "--perceptual", "none", "--out", str(out),
    ])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["recipe"], r["minutes"]) for r in rows) == [("kl", 0.01), ("kl", 0.02), ("vq", 0.01), ("vq", 0.02)]
    for r in rows:
        assert r["train_seconds"] >= r["minutes"] * 60 - 1e-6 and r["step"] >= 1
        assert 0 < r["psnr"] < 100 and r["delta_e00"] >= 0
        assert ("usage" in r) == (r["recipe"] == "vq")
    assert "| minutes | recipe |" in capsys.readouterr().out


def test_export_and_lr_schedule_over_minutes(tmp_path):
    """--export writes each recipe's final EMA weights as a loadable folder; --lr-over-minutes ends each
    recipe's cosine decay at --minutes whatever its step count (``steps`` here would otherwise keep it at lr)."""
    from tokenizer.api import load_any

    train, val = _images(tmp_path / "train", 4, 0), _images(tmp_path / "val", 1, 1)
    smoke = "--smoke --set amp=none --set steps=100000 --set warmup_steps=1 --set lr=1e-3 --set min_lr_ratio=0.1"
    seen = []
    original = bench_recipe.train_for

    def spy(contender, seconds, lr_minutes=0.0, clock=None):
        original(contender, seconds, lr_minutes, clock)
        seen.append(contender.trainer.opt.param_groups[0]["lr"])

    bench_recipe.train_for = spy
    try:
        code = bench_recipe.main([
            "--recipe", f"vq=--preset vq-f8 {smoke}", "--data", str(train), "--val-data", str(val),
            "--minutes", "0.02", "--points", "0.02", "--slice-seconds", "0.4", "--perceptual", "none",
            "--lr-over-minutes", "--export", str(tmp_path / "export"), "--out", str(tmp_path / "p.jsonl"),
        ])
    finally:
        bench_recipe.train_for = original
    assert code == 0
    assert seen[-1] < 0.5e-3, seen  # decayed towards 1e-4 by the end of the minutes, not still at the peak
    model = load_any(tmp_path / "export" / "vq")
    assert model.model.config.model_type == "vq"


def test_a_decoder_only_recipe_keeps_every_id(tmp_path):
    """bench_recipe trains through the Trainer's own mode switch: with --decoder-only the codebook makes no EMA
    updates or dead-code restarts (it did, when the script put the whole model in training mode)."""
    from tokenizer import ImageTokenizer
    from tokenizer.checkpoints import ids_sha256

    train, val = _images(tmp_path / "train", 4, 0), _images(tmp_path / "val", 1, 1)
    source = ImageTokenizer.from_preset("vq-f8-cpu").save_pretrained(tmp_path / "source", model_card=False)
    recipe = (f"dec=--init-from {source} --decoder-only --smoke --set amp=none --set steps=100000 "
              "--set model.quantizer.dead_code_threshold=0.9")  # restarts would fire at once if allowed
    code = bench_recipe.main([
        "--recipe", recipe, "--data", str(train), "--val-data", str(val), "--minutes", "0.02", "--points", "0.02",
        "--slice-seconds", "0.4", "--perceptual", "none", "--export", str(tmp_path / "export"),
        "--out", str(tmp_path / "p.jsonl"),
    ])
    assert code == 0
    export = tmp_path / "export" / "dec" / "model.safetensors"
    assert ids_sha256(export) == ids_sha256(source / "model.safetensors")
    assert sha256_of(export) != sha256_of(source / "model.safetensors")  # the decoder did train


def test_kept_checkpoint_continues_the_discriminator(tmp_path):
    """--keep-checkpoint saves the final training state beside the export; --init-from it starts the next run
    with the weights, the weight EMA and the discriminator as they ended (exports alone carry no discriminator,
    so every continued adversarial run restarted it from scratch)."""
    import torch
    from safetensors.torch import load_file

    from train.__main__ import config_from_argv
    from train.loop import Trainer

    train, val = _images(tmp_path / "train", 4, 0), _images(tmp_path / "val", 1, 1)
    recipe = "gan=--preset vq-f8 --smoke --set amp=none --set steps=100000 --set gan_weight=0.1 --set disc_channels=8"
    export = tmp_path / "export"
    code = bench_recipe.main([
        "--recipe", recipe, "--data", str(train), "--val-data", str(val), "--minutes", "0.02", "--points", "0.02",
        "--slice-seconds", "0.4", "--perceptual", "none", "--export", str(export), "--keep-checkpoint",
        "--out", str(tmp_path / "p.jsonl"),
    ])
    assert code == 0
    kept = export / "gan-checkpoint"
    written = {path.name for path in kept.iterdir()}
    assert {"model.safetensors", "ema.safetensors", "disc.safetensors", "state.json"} <= written
    # The kept EMA is the exported model, tensor for tensor.
    exported, kept_ema = load_file(str(export / "gan" / "model.safetensors")), load_file(str(kept / "ema.safetensors"))
    for name, tensor in exported.items():
        torch.testing.assert_close(kept_ema[name], tensor, rtol=0, atol=0)

    def next_run(source: Path, out: str) -> Trainer:
        return Trainer(config_from_argv([
            "--init-from", str(source), "--smoke", "--set", "amp=none", "--set", "gan_weight=0.1",
            "--set", "disc_channels=8", "--data", str(train), "--out", str(tmp_path / out)]))

    saved_disc = load_file(str(kept / "disc.safetensors"))
    continued = next_run(kept, "continued").disc.state_dict()
    restarted = next_run(export / "gan", "restarted").disc.state_dict()
    for name, tensor in continued.items():
        torch.testing.assert_close(tensor, saved_disc[name], rtol=0, atol=0)
    # The discriminator did train in the first run: a run from the export alone starts from a different one.
    assert any(not torch.equal(restarted[name], saved_disc[name]) for name in saved_disc)


def test_keep_checkpoint_needs_export(tmp_path):
    import pytest

    with pytest.raises(SystemExit):
        bench_recipe.main(["--recipe", "a=--smoke", "--data", str(tmp_path), "--val-data", str(tmp_path),
                           "--minutes", "1", "--keep-checkpoint", "--out", str(tmp_path / "p.jsonl")])
