"""Shared, generic fixtures. Test files keep their own specific fixtures to themselves."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Process-group tests (gloo) talk over loopback: left alone, gloo binds to the address the machine's
# hostname resolves to, which on some CI machines is not reachable and makes the ranks wait forever.
# Set before any test forks or spawns ranks, so they inherit it.
if Path("/sys/class/net/lo").exists():
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

# Make `tests/helpers_*.py` importable as plain modules (`from helpers_images import ...`).
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state, so a failure reproduces."""
    torch.manual_seed(0)


@pytest.fixture
def tiny_tokenizer():
    """A fresh ``vq-tiny`` ImageTokenizer (f=2, 64 codes), in eval mode."""
    from tokenizer import ImageTokenizer

    return ImageTokenizer.from_preset("vq-tiny")


@pytest.fixture
def tiny_vae():
    """A fresh ``kl-tiny`` ImageVAE (f=2, 4 latent channels), in eval mode."""
    from tokenizer import ImageVAE

    return ImageVAE.from_preset("kl-tiny")


@pytest.fixture
def saved_tiny_tokenizer(tiny_tokenizer, tmp_path):
    """A ``vq-tiny`` model folder (config.json + model.safetensors) and the tokenizer it holds."""
    folder = tiny_tokenizer.save_pretrained(tmp_path / "vq-tiny")
    return folder, tiny_tokenizer


@pytest.fixture
def fake_perceptual(monkeypatch) -> list:
    """``tokenizer.perceptual.PerceptualDistance`` replaced by a stand-in (the real backbone needs the optional
    extra); returns the list of the ``compute_dtype`` each built instance was given, for plumbing tests."""
    import tokenizer.perceptual

    built = []

    class FakeDistance(torch.nn.Module):
        def __init__(self, net="alex", backend="auto", compute_dtype=None):
            super().__init__()
            built.append(compute_dtype)
            self.name = f"fake-{net}"

        def forward(self, x, y):
            return (x - y).abs().mean(dim=(1, 2, 3))  # (B, 3, H, W) -> (B,)

    monkeypatch.setattr(tokenizer.perceptual, "PerceptualDistance", FakeDistance)
    return built
