"""The fast inference path: bf16 autocast, channels-last memory and (optionally) ``torch.compile``.

Enabled per model with ``ImageTokenizer.optimize_for_inference()`` / ``ImageVAE.optimize_for_inference()``;
``encode``/``decode`` keep their signatures and shapes. What changes and why:

- bf16 autocast runs convolutions and matmuls in bfloat16 where the hardware has bf16 units (Ampere+ GPUs;
  CPUs with AVX512-BF16 or AMX, e.g. Cooper Lake, Sapphire Rapids, Zen 4), about 2x fp32 throughput.
  The quantizer's distances stay fp32 (``VectorQuantizer`` disables autocast): bf16 distances flip
  nearest codes. The encoder's own bf16 rounding can still move a latent across a Voronoi boundary, so a
  small share of ids differs from the fp32 path; ``scripts/benchmark.py`` measures that share on photos.
- channels-last (NHWC) is the layout oneDNN and cuDNN convolutions run natively; NCHW inputs are
  reordered on every call otherwise.
- ``torch.compile`` fuses GroupNorm + SiLU and the elementwise tails of each block; the first call per
  input shape pays the compilation (tens of seconds on CPU), so it pays off only for long runs of one size.

Weights are not converted: saving after ``optimize_for_inference`` writes the same fp32 tensors.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .devices import bf16_supported  # the one bf16 test; re-exported here, where it has always been imported from


@dataclass
class InferenceOptions:
    """How a model runs inference.

    autocast_dtype: torch.bfloat16 for bf16 autocast, None for the model's own dtype (fp32).
    channels_last: weights and inputs in NHWC memory format.
    compiled: encoder and decoder compiled with ``torch.compile`` (in place; state-dict keys unchanged).
    """

    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    compiled: bool = False


class FP32Conv2d(nn.Conv2d):
    """A Conv2d that runs in fp32 under autocast.

    The encoder's first convolution reads pixels: bf16 keeps 8 significant bits, so it cannot hold the
    255 levels of an 8-bit image in [-1, 1] exactly, and rounding the input alone changed 1.6% of the ids
    of a trained vq-f8-cpu model on Kodak crops. With 3 input channels this conv is ~1.5% of the FLOPs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def configure(model: nn.Module, device: torch.device, bf16: bool | None = None, channels_last: bool = True,
              compile: bool = False) -> InferenceOptions:
    """Convert ``model`` (an encoder/decoder autoencoder) for fast inference and return its options.

    Args:
        model: the ``VQModel``/``KLModel`` inside an ``ImageTokenizer``/``ImageVAE``.
        device: where it runs.
        bf16: bf16 autocast; None picks it when :func:`bf16_supported`; True forces it (errors nowhere, but
            is slow on hardware without bf16 units).
        channels_last: NHWC weights and inputs.
        compile: compile the encoder and decoder with ``torch.compile``.
    """
    use_bf16 = bf16_supported(device) if bf16 is None else bool(bf16)
    conv_in = model.encoder.conv_in
    if type(conv_in) in (nn.Conv2d, FP32Conv2d):
        # Same parameters and state-dict keys; only forward changes (undone when bf16 is switched off).
        conv_in.__class__ = FP32Conv2d if use_bf16 else nn.Conv2d
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if compile:
        model.encoder.compile()
        model.decoder.compile()
    compiled = compile or getattr(model.encoder, "_compiled_call_impl", None) is not None
    return InferenceOptions(torch.bfloat16 if use_bf16 else None, channels_last, compiled)


def autocast_context(options: InferenceOptions | None, device: torch.device):
    """The autocast context an inference call runs in (a no-op unless bf16 is on)."""
    if options is None or options.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=options.autocast_dtype)
