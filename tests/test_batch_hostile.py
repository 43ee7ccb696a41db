"""The batch tokenizer against damaged archives and a second run on its folder: every unreadable input is
a row in errors.jsonl (including the members a cut archive lost), and one job at a time holds the folder."""

from __future__ import annotations

import gzip
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest
from PIL import Image

from tokenizer import ImageTokenizer
from tokenizer import run_lock
from tokenizer.batch_tokenize import TokenizeConfig, TokenizeError, tokenize_dataset
from tokenizer.run_lock import LOCK_NAME


@pytest.fixture(scope="module")
def tok():
    return ImageTokenizer.from_preset("vq-tiny")


def _png(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path, n: int = 12, extra=()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(n):
            data = _png(i)
            info = tarfile.TarInfo(f"{i:03d}.png")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _offset_of_header(data: bytes, index: int) -> int:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getmembers()[index].offset


def _run(tok, inp, out, **kw):
    config = TokenizeConfig(input=str(inp), output=str(out), size=8, shard_size=4, batch_size=4, workers=0,
                            progress=False, **kw)
    return tokenize_dataset(config, tokenizer=tok)


def _errors(out) -> list[dict]:
    return [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines() if line.strip()]


def test_tar_cut_inside_a_member_header_records_the_loss(tok, tmp_path):
    data = _tar(tmp_path / "full.tar")
    cut = _offset_of_header(data, 7) + 200  # 200 bytes into member 8's header: an interrupted download
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "part.tar").write_bytes(data[:cut])
    result = _run(tok, tmp_path / "shards" / "part.tar", tmp_path / "out")
    assert (result.images, result.errors, result.merged) == (7, 1, True)
    (row,) = _errors(tmp_path / "out")
    assert "part.tar: truncated or damaged after member 7 ('006.png')" in row["error"]
    assert "any members after it are lost" in row["error"] and row["key"] == "part.tar:truncated"


def test_truncated_tar_gz_is_an_error_row_not_a_traceback(tok, tmp_path, capsys):
    from tokenizer.cli import main

    raw = gzip.compress(_tar(tmp_path / "full.tar"))
    (tmp_path / "part.tar.gz").write_bytes(raw[: len(raw) * 2 // 3])
    rc = main(["tokenize", "--input", str(tmp_path / "part.tar.gz"), "--output", str(tmp_path / "out"),
               "--model", str(tok.save_pretrained(tmp_path / "model")), "--size", "8", "--shard-size", "4",
               "--workers", "0", "--no-progress"])
    assert rc == 0
    assert "7 images tokenized, 2 errors" in capsys.readouterr().out
    # The member whose data the cut stream ends in, and the row for whatever followed it.
    member, rest = _errors(tmp_path / "out")
    assert "part.tar.gz:007.png: cannot read the member (EOFError" in member["error"]
    assert "part.tar.gz: truncated or damaged after member 8 ('007.png')" in rest["error"]


def test_links_and_devices_get_rows(tok, tmp_path):
    sym = tarfile.TarInfo("sym.png")
    sym.type, sym.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("hard.png")
    hard.type, hard.linkname = tarfile.LNKTYPE, "000.png"
    dev = tarfile.TarInfo("dev.png")
    dev.type = tarfile.CHRTYPE
    _tar(tmp_path / "a.tar", n=2, extra=[sym, hard, dev])
    result = _run(tok, tmp_path / "a.tar", tmp_path / "out")
    assert (result.images, result.errors) == (2, 3)
    rows = {r["key"]: r["error"] for r in _errors(tmp_path / "out")}
    assert "symbolic link (to '/etc/passwd')" in rows["sym"] and "hard link (to '000.png')" in rows["hard"]
    assert "a device" in rows["dev"]


def test_rerun_after_repair_says_why_it_needs_a_new_folder(tok, tmp_path):
    data = _tar(tmp_path / "full.tar")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.tar").write_bytes(data[: _offset_of_header(data, 7) + 200])
    first = _run(tok, tmp_path / "in" / "a.tar", tmp_path / "out")
    assert first.num_inputs == 8  # 7 images and the row standing for the lost end
    (tmp_path / "in" / "a.tar").write_bytes(data)  # repaired
    with pytest.raises(TokenizeError, match=r"out: was started on 8 inputs and --input .*a\.tar now has 12 \("
                                            r"an archive repaired or changed since\?\).*write to a new --output"):
        _run(tok, tmp_path / "in" / "a.tar", tmp_path / "out")
    assert not (tmp_path / "out" / LOCK_NAME).exists()  # the refusal released the lock
    again = _run(tok, tmp_path / "in" / "a.tar", tmp_path / "new")
    assert (again.images, again.errors, again.merged) == (12, 0, True)


def test_resume_of_an_unchanged_input_still_works(tok, tmp_path):
    _tar(tmp_path / "a.tar")
    first = _run(tok, tmp_path / "a.tar", tmp_path / "out", max_shards=1)
    assert not first.merged and not (tmp_path / "out" / LOCK_NAME).exists()
    second = _run(tok, tmp_path / "a.tar", tmp_path / "out")
    assert second.merged and second.shards_skipped == 1


def _holder(tmp_path, out):
    """Another process holding ``out``'s lock (run_lock.py loaded alone: no torch import, a quick start)."""
    code = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("run_lock", {run_lock.__file__!r})
        module = sys.modules["run_lock"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        lock = module.acquire({str(out)!r}, job="someone-else")
        print("held", flush=True)
        sys.stdin.readline()
        lock.release()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_independent_run_exits_at_once_naming_the_holder(tok, tmp_path, capsys):
    from tokenizer.cli import main

    _tar(tmp_path / "a.tar", n=4)
    proc = _holder(tmp_path, tmp_path / "out")
    try:
        with pytest.raises(TokenizeError, match=rf"out: in use by another imgtok tokenize run \(pid {proc.pid} on "
                                                rf"host {socket.gethostname()}"):
            _run(tok, tmp_path / "a.tar", tmp_path / "out")
        assert main(["tokenize", "--input", str(tmp_path / "a.tar"), "--output", str(tmp_path / "out"),
                     "--model", "/no/model/needed/first", "--no-progress"]) == 1
        assert f"pid {proc.pid} on host" in capsys.readouterr().err
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        proc.communicate("\n", timeout=60)
    assert _run(tok, tmp_path / "a.tar", tmp_path / "out").merged


def test_stale_lock_of_a_killed_run_is_taken_over(tok, tmp_path):
    _tar(tmp_path / "a.tar", n=4)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_NAME).write_text(json.dumps(
        {"pid": int(dead.stdout), "host": socket.gethostname(), "job": "killed", "started": "earlier"}))
    result = _run(tok, tmp_path / "a.tar", tmp_path / "out")
    assert result.merged and result.images == 4 and not (tmp_path / "out" / LOCK_NAME).exists()


def test_ranks_started_by_hand_share_the_lock(tok, tmp_path):
    _tar(tmp_path / "a.tar", n=8)
    r0 = _run(tok, tmp_path / "a.tar", tmp_path / "out", rank=0, world_size=2)
    assert not r0.merged and (tmp_path / "out" / LOCK_NAME).exists()  # held for rank 1 of the same job
    r1 = _run(tok, tmp_path / "a.tar", tmp_path / "out", rank=1, world_size=2)
    assert r1.merged and not (tmp_path / "out" / LOCK_NAME).exists()
