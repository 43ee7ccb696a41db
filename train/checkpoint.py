"""Checkpoints without pickle: tensors in safetensors, everything else in JSON, written atomically.

A checkpoint is a folder ``RUN/checkpoints/step_XXXXXXX`` holding ``model.safetensors``,
``ema.safetensors``, optional ``disc.safetensors``, ``optim.safetensors`` (optimizer tensors) and
``state.json`` (step, optimizer hyper-parameters, config) and ``rng/rank_XXXXX.safetensors``, the random
state of every rank (a resumed rank draws what the uninterrupted rank would have: KL posterior samples,
restart picks). It is written into a temporary folder and renamed into place, so a run killed mid-write
never leaves a half checkpoint; ``latest`` is the newest complete folder.

Under torchrun, rank 0 writes (the other ranks send it their random states) and rank 0 alone decides
which checkpoint a resumed run starts from; every rank then reads that folder, and if any rank cannot
(``--out`` on node-local disks, say) every rank raises, naming the ranks and the folder.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import safetensors.torch
from safetensors.torch import load_file, save_file

from .common import Dist, any_rank, broadcast_int, gather_bytes


def _flat_optimizer(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for idx, state in sd["state"].items():
        entry = {}
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                key = f"{prefix}.{idx}.{name}"
                tensors[key] = value.detach().cpu().contiguous()
                entry[name] = {"tensor": key}
            else:
                entry[name] = value
        meta["state"][str(idx)] = entry
    return tensors, meta


def _unflat_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state = {}
    for idx, entry in meta["state"].items():
        state[int(idx)] = {
            name: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v for name, v in entry.items()
        }
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state_blob() -> bytes:
    """This process's random state (torch CPU and CUDA, Python, NumPy) as safetensors bytes."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state()
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": json.dumps([version, list(internal), gauss]),
        "numpy": json.dumps([np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]),
    }
    return safetensors.torch.save(tensors, metadata=meta)


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _restore_rng_file(path: Path) -> None:
    with safetensors.safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    _restore_rng(tensors, meta)


def _state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(run_dir: Path, step: int, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], extra: dict[str, Any], keep: int = 2,
                    rng_blobs: list[bytes] | None = None) -> Path:
    """Write checkpoint ``step`` atomically; keep the newest ``keep`` checkpoints.

    Args:
        rng_blobs: every rank's :func:`rng_state_blob`, by rank (None: this process's, as rank 0).
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, module in modules.items():
        save_file(_state_dict(module), str(tmp / f"{name}.safetensors"))
    optim_tensors: dict[str, torch.Tensor] = {}
    optim_meta: dict[str, Any] = {}
    for name, opt in optimizers.items():
        t, m = _flat_optimizer(opt, name)
        optim_tensors.update(t)
        optim_meta[name] = m
    save_file(optim_tensors, str(tmp / "optim.safetensors"))
    (tmp / "rng").mkdir()
    for rank, blob in enumerate(rng_blobs if rng_blobs is not None else [rng_state_blob()]):
        (tmp / "rng" / f"rank_{rank:05d}.safetensors").write_bytes(blob)
    state = {"step": step, "optimizers": optim_meta, "world_size": len(rng_blobs or [0]), **extra}
    (tmp / "state.json").write_text(json.dumps(state))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)  # atomic on POSIX: the folder appears complete or not at all
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((Path(run_dir) / "checkpoints").glob("step_*"))
    return found[-1] if found else None


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], rank: int = 0) -> dict[str, Any]:
    """Restore modules, optimizers and rank ``rank``'s random state; return the JSON state (step, extras),
    with ``rng_restored`` False when the checkpoint holds no state for this rank (another world size)."""
    path = Path(path)
    for name, module in modules.items():
        module.load_state_dict(load_file(str(path / f"{name}.safetensors")), strict=True)
    tensors = load_file(str(path / "optim.safetensors"))
    state = json.loads((path / "state.json").read_text())
    for name, opt in optimizers.items():
        _unflat_optimizer(opt, tensors, state["optimizers"][name])
    rng_file = path / "rng" / f"rank_{rank:05d}.safetensors"
    if rng_file.is_file():
        _restore_rng_file(rng_file)
        state["rng_restored"] = True
    elif rank == 0 and "rng.torch" in tensors:  # checkpoints written before per-rank states: rank 0's only
        _restore_rng({"torch": tensors["rng.torch"], **({"cuda": tensors["rng.cuda"]} if "rng.cuda" in tensors else {})},
                     state["rng"])
        state["rng_restored"] = True
    else:
        state["rng_restored"] = False
    return state


def save_checkpoint_all_ranks(info: Dist, device: torch.device, run_dir: Path, step: int,
                              modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                              extra: dict[str, Any], keep: int = 2) -> Path | None:
    """Called by every rank at the same step: rank 0 writes the checkpoint with every rank's random state."""
    blobs = gather_bytes(rng_state_blob(), info, device)
    return save_checkpoint(run_dir, step, modules, optimizers, extra, keep, blobs) if info.main else None


def resume_latest(info: Dist, device: torch.device, run_dir: Path, modules: dict[str, torch.nn.Module],
                  optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any] | None:
    """Called by every rank: rank 0 finds the newest checkpoint in its ``run_dir`` and broadcasts its step;
    every rank loads that step from its own ``run_dir``. Returns the state (None when there is none).

    Raises RuntimeError on every rank when any rank cannot read the checkpoint rank 0 chose.
    """
    found = latest_checkpoint(run_dir) if info.main else None
    step = broadcast_int(int(found.name.removeprefix("step_")) if found is not None else -1, info, device)
    if step < 0:
        return None
    path = Path(run_dir) / "checkpoints" / f"step_{step:07d}"
    state, error = None, None
    try:
        state = load_checkpoint(path, modules, optimizers, info.rank)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        error = err
    failed = any_rank(error is not None, info, device)
    if error is not None:
        raise RuntimeError(f"rank {info.rank}: cannot read checkpoint {path} (chosen by rank 0): "
                           f"{type(error).__name__}: {error}") from error
    if failed:
        raise RuntimeError(f"{failed} of {info.world} ranks cannot read checkpoint {path} (chosen by rank 0); "
                           "every rank needs it: put --out on a shared file system or copy the folder to every node")
    return state
