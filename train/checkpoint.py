"""Checkpoints without pickle: tensors in safetensors, everything else in JSON, written atomically.

A checkpoint is a folder ``RUN/checkpoints/step_XXXXXXX`` holding ``model.safetensors``,
``ema.safetensors``, optional ``disc.safetensors``, ``optim.safetensors`` (optimizer tensors) and
``state.json`` (step, optimizer hyper-parameters, RNG states, config). It is written into a temporary
folder and renamed into place, so a run killed mid-write never leaves a half checkpoint; ``latest``
is the newest complete folder.
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
from safetensors.torch import load_file, save_file


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


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    meta = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(run_dir: Path, step: int, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], extra: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically; keep the newest ``keep`` checkpoints."""
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
    rng_tensors, rng_meta = _rng_state()
    optim_tensors.update(rng_tensors)
    save_file(optim_tensors, str(tmp / "optim.safetensors"))
    state = {"step": step, "optimizers": optim_meta, "rng": rng_meta, **extra}
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
                    optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
    """Restore modules, optimizers and RNG states; return the JSON state (step, extras)."""
    path = Path(path)
    for name, module in modules.items():
        module.load_state_dict(load_file(str(path / f"{name}.safetensors")), strict=True)
    tensors = load_file(str(path / "optim.safetensors"))
    state = json.loads((path / "state.json").read_text())
    for name, opt in optimizers.items():
        _unflat_optimizer(opt, tensors, state["optimizers"][name])
    _set_rng_state(tensors, state["rng"])
    return state
