"""scripts/plot_training.py: minutes rebuilt from logged throughput, runs chained, a PNG written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
import plot_training  # noqa: E402


def test_two_runs_chain_their_minutes(tmp_path, capsys):
    for name, psnrs in (("a", (20.0, 21.0)), ("b", (21.5, 22.0))):
        (tmp_path / name).mkdir()
        rows = [{"step": 10, "images_per_s": 2.0, "loss": 1}, {"step": 20, "images_per_s": 2.0, "val_psnr": psnrs[0]},
                {"step": 30, "images_per_s": 4.0, "loss": 1}, {"step": 40, "images_per_s": 4.0, "val_psnr": psnrs[1]}]
        (tmp_path / name / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "curve.png"
    assert plot_training.main([str(tmp_path / "a" / "log.jsonl"), str(tmp_path / "b" / "log.jsonl"), "--out", str(out),
                               "--batch-size", "12", "--before", "1:19"]) == 0
    report = json.loads(capsys.readouterr().out)
    a, b = report[str(tmp_path / "a" / "log.jsonl")], report[str(tmp_path / "b" / "log.jsonl")]
    # 10 steps x 12 images at 2 img/s = 1 minute; at 4 img/s half a minute. Run a starts after minute 1.
    assert [p["minutes"] for p in a] == [3.0, 4.0] and [p["minutes"] for p in b] == [6.0, 7.0]
    assert out.stat().st_size > 1000


def test_recipe_points_continue_the_earlier_minutes(tmp_path, capsys):
    rows = [{"recipe": "pix", "minutes": 15.0, "step": 160, "psnr": 24.3}, {"recipe": "vgg", "minutes": 15.0, "step": 60,
             "psnr": 23.9}, {"recipe": "pix", "minutes": 30.0, "step": 350, "psnr": 24.4}]
    points = tmp_path / "recipes.jsonl"
    points.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "curve.png"
    assert plot_training.main([str(points), "--out", str(out), "--before", "120:24.28", "190:24.40"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [p["minutes"] for p in report[f"{points}:pix"]] == [205.0, 220.0]
    assert [p["psnr"] for p in report[f"{points}:vgg"]] == [23.9] and out.stat().st_size > 1000


def test_rename_sets_a_curve_legend_and_rejects_a_label_no_curve_has(tmp_path, capsys):
    points = tmp_path / "recipes.jsonl"
    points.write_text(json.dumps({"recipe": "pix", "minutes": 15.0, "step": 160, "psnr": 24.3}) + "\n")
    out = tmp_path / "curve.png"
    assert plot_training.main([str(points), "--out", str(out), "--rename", "pix=run 7"]) == 0
    assert json.loads(capsys.readouterr().out)["legend"] == ["run 7"] and out.stat().st_size > 1000
    with pytest.raises(SystemExit):
        plot_training.main([str(points), "--out", str(out), "--rename", "pixx=run 7"])
    assert "no curve labelled ['pixx']; the curves are ['pix']" in capsys.readouterr().err


def test_points_files_of_the_same_name_are_told_apart_by_their_folder(tmp_path, capsys):
    files = []
    for run, psnr in (("s26", 25.4), ("s27", 25.5)):
        (tmp_path / run).mkdir()
        files.append(tmp_path / run / "vq.jsonl")
        files[-1].write_text(json.dumps({"recipe": "p05gan", "minutes": 20.0, "step": 100, "psnr": psnr}) + "\n")
    out = tmp_path / "curve.png"
    assert plot_training.main([*map(str, files), "--out", str(out), "--rename", "s27/vq: p05gan=run 12"]) == 0
    assert json.loads(capsys.readouterr().out)["legend"] == ["s26/vq: p05gan", "run 12"]


def test_start_at_places_a_run_that_continued_an_earlier_export(tmp_path, capsys):
    # Run 12 (kl2) continued run 11 (kl) for 10 minutes; run 13 continued run 11 again, not run 12.
    files = {}
    for name, rows in (("kl", [(55.0, 27.2)]), ("kl2", [(10.0, 27.0)]), ("kl3", [(20.0, 27.3)])):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps({"recipe": "r", "minutes": m, "step": 1, "psnr": v}) + "\n"
                                       for m, v in rows))
    out = tmp_path / "curve.png"
    logs = [str(files[name]) for name in ("kl", "kl2", "kl3")]
    assert plot_training.main([*logs, "--out", str(out), "--start-at", f"{files['kl3']}=55"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [p["minutes"] for p in report[f"{files['kl2']}:r"]] == [65.0]
    assert [p["minutes"] for p in report[f"{files['kl3']}:r"]] == [75.0]  # 55 + 20, not 65 + 20
    with pytest.raises(SystemExit):
        plot_training.main([*logs, "--out", str(out), "--start-at", f"{tmp_path / 'other.jsonl'}=55"])
    assert "not among the logs given" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plot_training.main([*logs, "--out", str(out), "--start-at", f"{files['kl3']}=soon"])
    assert "--start-at takes LOG=MINUTES" in capsys.readouterr().err


def test_a_saved_history_redraws_its_curves_and_the_next_session_continues_it(tmp_path, capsys):
    session1 = tmp_path / "s1.jsonl"
    session1.write_text("".join(json.dumps(row) + "\n" for row in [
        {"recipe": "a", "minutes": 20.0, "step": 100, "psnr": 25.0, "stlpips": 0.30},
        {"recipe": "a", "minutes": 40.0, "step": 200, "psnr": 25.2, "stlpips": 0.28},
        {"recipe": "b", "minutes": 40.0, "step": 190, "psnr": 25.1, "stlpips": 0.27}]))
    history, out = tmp_path / "history.jsonl", tmp_path / "curve.png"
    assert plot_training.main([str(session1), "--out", str(out), "--start-at", f"{session1}=100",
                               "--rename", "a=run 1", "b=run 2", "--save-history", str(history)]) == 0
    first = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in history.read_text().splitlines()]
    assert [(r["recipe"], r["minutes"], r["stlpips"]) for r in rows] == [
        ("run 1", 120.0, 0.30), ("run 1", 140.0, 0.28), ("run 2", 140.0, 0.27)]  # every field kept, minutes absolute

    session2 = tmp_path / "s2.jsonl"
    session2.write_text(json.dumps({"recipe": "c", "minutes": 10.0, "step": 50, "psnr": 25.4, "stlpips": 0.25}) + "\n")
    assert plot_training.main([str(session2), "--history", str(history), "--out", str(out), "--rename", "c=run 3",
                               "--recipe-key", "stlpips", "--save-history", str(history)]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["legend"] == ["run 1", "run 2", "run 3"] == first["legend"] + ["run 3"]
    assert second[f"{session2}:c"] == [{"minutes": 150.0, "stlpips": 0.25, "step": 50}]  # after the history's last minute
    assert [json.loads(line)["recipe"] for line in history.read_text().splitlines()] == ["run 1", "run 1", "run 2", "run 3"]
