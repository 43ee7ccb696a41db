"""What the tokenizer trainer (train/loop.py) and the prior trainer (train/prior_loop.py) share.

Process groups under ``torchrun`` (with a timeout, so a rank that died turns into an error instead of a
hang), the autocast choice, the learning-rate schedule, rank-0 logging, and the decisions every rank
must take together (stop now? resume from which step?), which rank 0 takes and broadcasts: each rank's
own clock or disk would give different answers, and a rank that leaves the loop early leaves the others
waiting inside a collective.
"""

from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from tokenizer.devices import bf16_supported


@dataclass
class Dist:
    """This process's place in the job. ``distributed``: a process group is up (any torchrun launch,
    even ``--nproc_per_node 1``, so that one-GPU runs exercise the same DDP path as many-GPU ones)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    distributed: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup_distributed(device_pref: str, timeout_minutes: float = 15.0) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU) and pick this rank's device.

    Args:
        device_pref: "auto" (cuda:LOCAL_RANK when CUDA is available, else CPU) or a torch device string;
            "cuda" without an index means cuda:LOCAL_RANK.
        timeout_minutes: how long a collective may wait for a missing rank before it raises.
    """
    if launched_by_torchrun():
        info = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)), True)
    else:
        info = Dist()
    if device_pref == "auto":
        device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_pref)
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{info.local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # else every rank opens a context (and allocates) on GPU 0
    if info.distributed and not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_minutes)
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", timeout=timeout, device_id=device)
        else:
            dist.init_process_group(backend="gloo", timeout=timeout)
    return info, device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """"auto": bf16 where the device has native bf16 units (``tokenizer.devices.bf16_supported``), else
    fp32; "bf16" forces bf16; "none" is fp32."""
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp != "auto":
        raise ValueError(f"amp={amp!r}: expected 'auto', 'bf16' or 'none'")
    return torch.bfloat16 if bf16_supported(device) else None


def lr_at(step: int, cfg) -> float:
    """Linear warmup over ``cfg.warmup_steps``, then cosine decay to ``cfg.lr * cfg.min_lr_ratio`` at
    ``cfg.steps`` (and flat after it). ``cfg``: any config with those four fields."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def log_main(info: Dist, prefix: str, message: str, file: Path | None = None) -> None:
    """Print (and append to ``file``) on rank 0 only."""
    if not info.main:
        return
    print(f"[{prefix}] {message}", flush=True)
    if file is not None:
        with open(file, "a") as f:
            f.write(message + "\n")


def broadcast_int(value: int, info: Dist, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank (a decision rank 0 takes for all: the resume step, stop or go)."""
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def stop_together(stop: bool, info: Dist, device: torch.device) -> bool:
    """Rank 0's stop decision, on every rank. Call it at the same steps on all ranks: it is a collective."""
    return bool(broadcast_int(int(stop), info, device))


def any_rank(flag: bool, info: Dist, device: torch.device) -> int:
    """How many ranks have ``flag`` set (0 when none): lets every rank fail together instead of one
    raising while the others wait for it in the next collective."""
    if not info.distributed:
        return int(flag)
    t = torch.tensor([int(flag)], dtype=torch.long, device=device)
    dist.all_reduce(t)
    return int(t.item())


def gather_bytes(payload: bytes, info: Dist, device: torch.device) -> list[bytes] | None:
    """Every rank's ``payload`` on rank 0 (None elsewhere), as tensors: nothing is pickled."""
    if not info.distributed:
        return [payload]
    size = torch.tensor([len(payload)], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(info.world)]
    dist.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    buffer = torch.zeros(longest, dtype=torch.uint8)
    if payload:
        buffer[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    gathered = [torch.zeros_like(buffer, device=device) for _ in range(info.world)]
    dist.all_gather(gathered, buffer.to(device))
    if not info.main:
        return None
    return [g[: int(s.item())].cpu().numpy().tobytes() for g, s in zip(gathered, sizes)]


__all__ = ["Dist", "launched_by_torchrun", "setup_distributed", "autocast_dtype", "lr_at", "log_main",
           "broadcast_int", "stop_together", "any_rank", "gather_bytes"]
