"""Devices and precision: one bf16 test, GPU by default where there is one, full-fp32 code lookups."""

from __future__ import annotations

import subprocess
import sys

import torch

import tokenizer.quantizer as quantizer_module
from tokenizer.devices import bf16_supported, default_device, full_precision_matmul, resolve_device


def test_default_device_is_the_gpu_when_there_is_one():
    assert default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == default_device() and resolve_device("cpu") == torch.device("cpu")


def test_one_bf16_test_for_library_and_trainer():
    import tokenizer.fast
    from train.common import autocast_dtype

    assert tokenizer.fast.bf16_supported is bf16_supported
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) == (torch.bfloat16 if bf16_supported(cpu) else None)
    assert autocast_dtype("bf16", cpu) == torch.bfloat16 and autocast_dtype("none", cpu) is None


def test_code_lookup_runs_in_full_fp32_whatever_the_global_setting(monkeypatch):
    seen = []
    real_addmm = torch.addmm

    def spy(*args, **kwargs):
        seen.append((torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32))
        return real_addmm(*args, **kwargs)

    monkeypatch.setattr(torch, "addmm", spy)
    x, codes = torch.randn(64, 8), torch.randn(16, 8)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # TF32 on CUDA, bf16 on oneDNN
        ids = quantizer_module.nearest_code(x, codes)
        assert torch.get_float32_matmul_precision() == "medium"  # restored
    finally:
        torch.set_float32_matmul_precision(previous)
    assert seen and all(s == ("highest", False) for s in seen)
    assert torch.equal(ids, torch.cdist(x.double(), codes.double()).argmin(1))


def test_full_precision_block_restores_the_per_backend_api():
    # A fresh interpreter: once the per-backend API is set, torch refuses the global getter for the process.
    code = (
        "import torch\n"
        "from tokenizer.devices import full_precision_matmul\n"
        "torch.backends.cuda.matmul.fp32_precision = 'tf32'\n"
        "with full_precision_matmul():\n"
        "    assert torch.backends.cuda.matmul.fp32_precision == 'ieee'\n"
        "    assert torch.backends.mkldnn.matmul.fp32_precision == 'ieee'\n"
        "assert torch.backends.cuda.matmul.fp32_precision == 'tf32'\n"
    )
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch < 2.9: one API only
        return
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_full_precision_block_is_a_no_op_at_highest():
    assert torch.get_float32_matmul_precision() == "highest"
    with full_precision_matmul():
        assert torch.get_float32_matmul_precision() == "highest"
