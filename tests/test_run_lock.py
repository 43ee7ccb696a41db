"""The output-folder lock: one job at a time, ranks of a job share it, stale locks of dead processes are
taken over, and the refusal names the holder's pid and host."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from tokenizer import run_lock
from tokenizer.run_lock import LOCK_NAME, FolderLockedError, acquire


def test_second_job_is_refused_naming_the_holder(tmp_path):
    held = acquire(tmp_path, job="a")
    with pytest.raises(FolderLockedError, match=rf"in use by another imgtok tokenize run \(pid {os.getpid()} on host "
                                                rf"{socket.gethostname()}, started .*\); wait for it"):
        acquire(tmp_path, job="b")
    held.release()
    acquire(tmp_path, job="b").release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_ranks_of_one_job_share_it(tmp_path):
    first, second = acquire(tmp_path, job="j"), acquire(tmp_path, job="j")
    assert first.created and not second.created
    second.release()  # any rank of the job may release it
    assert not (tmp_path / LOCK_NAME).exists()
    first.release()  # a second release is harmless


def test_release_leaves_another_jobs_lock(tmp_path):
    mine = acquire(tmp_path, job="a")
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "job": "b"}))
    mine.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["job"] == "b"


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "job": "old"}))
    lock = acquire(tmp_path, job="new")
    assert lock.created and json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_lock_from_another_host_is_not_judged_stale(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "node-17", "job": "x", "started": "T"}))
    with pytest.raises(FolderLockedError, match=rf"pid 1 on host node-17, started T\).*delete .*{LOCK_NAME}"):
        acquire(tmp_path, job="y")


def test_unreadable_lock_file_is_refused_not_ignored(tmp_path):
    (tmp_path / LOCK_NAME).write_text("{garbage")
    with pytest.raises(FolderLockedError, match="unknown process .*unreadable lock file"):
        acquire(tmp_path, job="y", wait_seconds=0.1)


def test_an_independent_live_process_holds_it(tmp_path):
    # Loads run_lock.py alone (not the package, which imports torch): a quick second process.
    code = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("run_lock", {str(run_lock.__file__)!r})
        module = sys.modules["run_lock"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        lock = module.acquire({str(tmp_path)!r}, job="other")
        print("held", flush=True)
        sys.stdin.readline()
        lock.release()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=rf"pid {proc.pid} on host"):
            acquire(tmp_path, job="mine")
    finally:
        proc.communicate("\n", timeout=60)
    acquire(tmp_path, job="mine").release()  # released by its holder
