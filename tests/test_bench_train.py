"""scripts/bench_train.py: every contender (preset x amp x perceptual share) measured in one interleaved run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
import bench_train  # noqa: E402


def test_each_amp_is_a_contender_with_its_own_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        code = bench_train.main(["--presets", "vq-tiny", "kl-tiny", "--crop", "32", "--batch", "2", "--steps", "1",
                                 "--amp", "none", "bf16", "--perceptual", "off", "--threads", "1", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    results = json.loads(out.read_text())
    keys = ["vq-tiny[amp none]", "vq-tiny[amp bf16]", "kl-tiny[amp none]", "kl-tiny[amp bf16]"]
    assert all(results[k] > 0 for k in keys)
    assert results["vq-tiny:cost"]["decoder_macs"] > 0
    printed = capsys.readouterr().out
    assert all(f"{k}: " in printed for k in keys)  # one line per contender, as a ratio to the first


def test_perceptual_amp_values_are_contenders_that_build_the_loss_in_their_precision(tmp_path, capsys, fake_perceptual):
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        code = bench_train.main(["--presets", "vq-tiny", "--crop", "32", "--batch", "2", "--steps", "1", "--amp", "bf16",
                                 "--perceptual", "on", "--perceptual-amp", "off", "on", "--threads", "1",
                                 "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    assert fake_perceptual == [None, torch.bfloat16]
    results = json.loads(out.read_text())
    keys = ["vq-tiny+perceptual", "vq-tiny+perceptual[perceptual under autocast]"]
    assert all(results[k] > 0 for k in keys)
    printed = capsys.readouterr().out
    assert all(f"{k}: " in printed for k in keys)
