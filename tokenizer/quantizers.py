"""The quantizer families, by config kind: the one place that maps a ``QuantizerConfig`` to its module."""

from __future__ import annotations

from torch import nn

from .quantizer_config import QuantizerConfig
from .fsq import FiniteScalarQuantizer
from .lfq import BinarySphericalQuantizer, LookupFreeQuantizer
from .quantizer import VectorQuantizer
from .rvq import ResidualVectorQuantizer

QUANTIZER_MODULES: dict[str, type[nn.Module]] = {
    "vq": VectorQuantizer,
    "fsq": FiniteScalarQuantizer,
    "lfq": LookupFreeQuantizer,
    "bsq": BinarySphericalQuantizer,
    "rvq": ResidualVectorQuantizer,
}


def build_quantizer(config: QuantizerConfig, dim: int) -> nn.Module:
    """The quantizer module for ``config``, quantizing ``dim``-channel latents."""
    return QUANTIZER_MODULES[config.kind](config, dim)


__all__ = ["QUANTIZER_MODULES", "build_quantizer"]
