"""``python -m train --resume`` continues the run's saved configuration exactly (issue 17, point 1).

Flags given with ``--resume`` may change only steps, max_minutes and the log/eval/checkpoint/sample
intervals (each change logged); any other difference is refused with the differences listed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from train.__main__ import main as train_main


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("resume_photos")
    rng = np.random.default_rng(1)
    for i in range(4):
        low = rng.random((6, 8, 3))
        Image.fromarray((np.kron(low, np.ones((8, 8, 1))) * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


# Non-default settings a first invocation gives and the README's resume command does not repeat.
FIRST = ["--smoke", "--set", "steps=5", "--set", "l2_weight=0.5", "--set", "crop_size=16", "--set", "amp=none",
         "--set", "batch_size=1", "--set", "ckpt_every=100", "--set", "model.norm_groups=2",
         "--set", "denoise_noise_std=0.05"]


def _base(photos: Path, out: Path) -> list[str]:
    return ["--preset", "vq-f8", "--data", str(photos), "--out", str(out)]


def test_resume_continues_the_saved_config_exactly(photos, tmp_path, capsys):
    full, split = tmp_path / "full", tmp_path / "split"
    assert train_main(_base(photos, full) + FIRST) == 0
    assert train_main(_base(photos, split) + FIRST + ["--stop-after", "3"]) == 0
    saved = json.loads((split / "train_config.json").read_text())
    # The README's resume command: no --smoke, no --set; before the fix this ran the defaults (crop 256, no l2 term, no noise).
    assert train_main(_base(photos, split) + ["--resume"]) == 0
    assert json.loads((split / "train_config.json").read_text()) == saved
    a, b = load_file(str(full / "export" / "model.safetensors")), load_file(str(split / "export" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "--resume:" not in capsys.readouterr().out  # nothing changed, nothing logged


def test_resume_refuses_other_changes_listing_them(photos, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(_base(photos, run) + FIRST + ["--stop-after", "2"]) == 0
    before = (run / "train_config.json").read_text()
    capsys.readouterr()
    rc = train_main(_base(photos, run) + ["--resume", "--set", "gan_weight=0.5", "--set", "lr=1e-3",
                                          "--set", "steps=8"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "gan_weight: run 0.0, given 0.5" in err and "lr: run" in err
    assert "steps" not in err.split("only")[0]  # an allowed change is not listed among the refused ones
    assert (run / "train_config.json").read_text() == before  # nothing overwritten
    rc = train_main(["--preset", "kl-f8", "--data", str(photos), "--out", str(run), "--resume"])
    assert rc == 2 and "preset: run 'vq-f8', given 'kl-f8'" in capsys.readouterr().err


def test_resume_may_change_steps_and_intervals_and_logs_them(photos, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(_base(photos, run) + FIRST + ["--stop-after", "2"]) == 0
    capsys.readouterr()
    assert train_main(_base(photos, run) + ["--resume", "--set", "steps=7", "--set", "log_every=7"]) == 0
    out = capsys.readouterr().out
    assert "--resume: steps 5 -> 7" in out and "--resume: log_every 2 -> 7" in out
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["steps"] == 7 and saved["l2_weight"] == 0.5 and saved["crop_size"] == 16
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()][-1] == 7
