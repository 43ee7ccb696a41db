"""Devices and numeric precision: the one place that decides where models run and in what precision.

Three questions every entry point asks (the library, the CLI, the scripts, the trainers):

- which device, when the caller names none: the GPU when there is one (``default_device``);
- whether bf16 autocast pays off on a device (``bf16_supported``): only with native bf16 units, because
  emulated bf16 (oneDNN on CPUs without AVX512-BF16/AMX, pre-Ampere GPUs) is slower than fp32;
- how to keep a computation in true fp32 whatever the user set globally (``full_precision_matmul``):
  TF32 (cuBLAS) and bf16 (oneDNN) fp32 matmuls keep 10 and 8 mantissa bits, enough to flip the argmin
  of nearest-code distances, so token ids would depend on a global flag.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def default_device() -> torch.device:
    """The device a model goes to when none is given: ``cuda`` (the current CUDA device) if available, else CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device``; None means :func:`default_device`."""
    return default_device() if device is None else torch.device(device)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def bf16_supported(device: torch.device | str) -> bool:
    """Whether ``device`` has native bf16 matmul units (so that bf16 autocast is faster, not slower).

    Args:
        device: a torch device (CPU: AVX512-BF16 or AMX-BF16 via oneDNN; CUDA: compute capability >= 8).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        # Without native units oneDNN emulates bf16 through fp32, which is slower than plain fp32
        # (torch.ops.mkldnn._is_mkldnn_bf16_supported() says True there: it counts emulation).
        return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags()) and torch.backends.mkldnn.is_available()
    return False


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A block without autocast on ``device_type`` (quantizer maths stays fp32 whatever the caller's autocast).

    ``torch.autocast(..., enabled=False)`` when autocast is on, else a no-op: entering and leaving
    ``torch.autocast`` costs ~35 us of Python on a CPU (measured on this project's 2-core machine), 2% of an
    FSQ train step at N = 16384 that had nothing to switch off.
    """
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


@contextlib.contextmanager
def full_precision_matmul():
    """Run fp32 matmuls in full fp32 inside the block (no TF32 on CUDA, no bf16 on oneDNN), then restore.

    PyTorch has two APIs for this flag and refuses to read one after the other was set, so the block
    restores the state through the API the caller used: ``torch.set_float32_matmul_precision`` (and
    ``torch.backends.cuda.matmul.allow_tf32``), or the per-backend ``fp32_precision`` attributes.
    """
    try:
        saved = torch.get_float32_matmul_precision()
    except RuntimeError:  # the caller set the per-backend API; the global getter refuses to answer
        saved = None
    if saved == "highest":
        yield
        return
    if saved is not None:
        torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(saved)
        return
    backends = [torch.backends.cuda.matmul, torch.backends.mkldnn.matmul]
    previous = [b.fp32_precision for b in backends]
    for b in backends:
        b.fp32_precision = "ieee"
    try:
        yield
    finally:
        for b, value in zip(backends, previous):
            b.fp32_precision = value


__all__ = ["default_device", "resolve_device", "bf16_supported", "autocast_off", "full_precision_matmul"]
