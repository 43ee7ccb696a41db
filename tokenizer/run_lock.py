"""An exclusive lock on an output folder for one job: ``<folder>/.imgtok.lock``.

Two independent runs writing one folder would do the work twice and delete each other's temporary files.
The lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local and NFSv3+ file systems) holding the
holder's pid, host, job id and start time as JSON:

- the ranks of one job (same ``job``) share it: the first rank creates it, the others find their job in it;
- another job exits at once with a ``FolderLockedError`` naming the holder's pid, host and start time;
- a lock whose holder ran on this host and no longer exists is stale: it is taken over (renamed away first,
  which only one contender can do, so two runs never both take it).

``job_id`` says which processes form one job: the token rank 0 broadcasts under ``torch.distributed``, the
torchrun rendezvous (``MASTER_ADDR``/``MASTER_PORT``/``TORCHELASTIC_RUN_ID``) for ranks that have not
initialised it, else a fresh token (a lone process is its own job).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCK_NAME = ".imgtok.lock"


class FolderLockedError(RuntimeError):
    """The output folder is held by another job that is still running (or on another host)."""


@dataclass
class FolderLock:
    """A held lock; ``release()`` removes it if this job still holds it (ranks other than the creator too)."""

    path: Path
    job: str
    created: bool  # this process made the file (else it joined its job's lock, or took over a stale one)

    def release(self) -> None:
        holder = _read(self.path)
        if holder is not None and holder.get("job") == self.job:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def job_id() -> str:
    """The id shared by the processes of one job (see the module docstring)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        token = [uuid.uuid4().hex if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(token, src=0)
        return f"dist:{token[0]}"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("MASTER_PORT"):
        return "torchrun:{}:{}:{}".format(os.environ.get("MASTER_ADDR", ""), os.environ["MASTER_PORT"],
                                           os.environ.get("TORCHELASTIC_RUN_ID", ""))
    return f"process:{uuid.uuid4().hex}"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable or half-written: treated as held by an unknown job
    return data if isinstance(data, dict) else {}


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _create(path: Path, record: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def acquire(folder: str | os.PathLike, job: str | None = None, what: str = "imgtok tokenize",
            wait_seconds: float = 2.0) -> FolderLock:
    """Hold ``folder`` for ``job`` (default ``job_id()``), or raise ``FolderLockedError`` at once.

    Args:
        folder: the output folder (created if missing).
        job: the job id; processes passing the same id share the lock.
        what: the program named in messages.
        wait_seconds: how long to wait for a lock file that exists but is still being written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    job = job or job_id()
    host = socket.gethostname()
    record = {"pid": os.getpid(), "host": host, "job": job, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    deadline = time.monotonic() + wait_seconds
    while True:
        if _create(path, record):
            return FolderLock(path, job, created=True)
        holder = _read(path)
        if holder is None:
            continue  # released between our attempt and the read: try again
        if holder.get("job") == job:
            return FolderLock(path, job, created=False)
        if not holder and time.monotonic() < deadline:
            time.sleep(0.05)  # created but not written yet
            continue
        pid, holder_host = holder.get("pid"), holder.get("host")
        if holder_host == host and not _alive(pid):
            # Stale: its process is gone. Renaming it away succeeds for exactly one contender.
            stale = path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
            try:
                os.rename(path, stale)
            except FileNotFoundError:
                continue
            stale.unlink(missing_ok=True)
            continue
        where = f"pid {pid} on host {holder_host}" if holder else "an unknown process (unreadable lock file)"
        since = f", started {holder['started']}" if holder.get("started") else ""
        gone = ("" if holder_host == host else
                f"; if that run is gone, delete {path}")
        raise FolderLockedError(
            f"{folder}: in use by another {what} run ({where}{since}); wait for it to finish or write to "
            f"another folder{gone}"
        )


__all__ = ["LOCK_NAME", "FolderLock", "FolderLockedError", "acquire", "job_id"]
