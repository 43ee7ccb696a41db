"""One perceptual distance for evaluation and for training losses: LPIPS, or shift-tolerant LPIPS offline.

LPIPS (Zhang et al. 2018) compares unit-normalised deep features of two images with learned per-channel
weights. Its ``lpips`` package needs torchvision's ImageNet backbone, which is downloaded at run time; where
that download is impossible (offline machines) we fall back to the shift-tolerant LPIPS of
Ghildyal & Liu 2022 (PyPI ``stlpips-pytorch``), whose wheel ships complete backbone + linear weights.
The two give different numbers, so the metric always says which one it is through ``.name``
(e.g. ``"lpips-alex"`` or ``"stlpips-alex-shift_tolerant"``); report that name beside every figure.

The network is frozen (no parameter gradients) and stays in eval mode, so it can serve as a loss: gradients
flow to the inputs only. It runs in fp32 whatever the caller's autocast, unless built with
``compute_dtype=torch.bfloat16``: training losses may take that (on this project's CPU the VGG backbone's
forward and backward ran 1.59x faster in bf16, its distance equal to 3 digits); evaluation figures never do.

Install: ``pip install "imgtok[perceptual]"``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

PERCEPTUAL_EXTRA_HINT = 'pip install "imgtok[perceptual]"  (stlpips-pytorch, ipython, torchsummary)'
# torchvision checkpoints that lpips' backbones load; present in the torch hub cache only if downloaded before.
_TORCHVISION_CHECKPOINTS = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
NETS = ("alex", "vgg")
BACKENDS = ("auto", "lpips", "stlpips")


class PerceptualUnavailable(ImportError):
    """No perceptual network can be loaded on this machine (the optional extra is missing)."""


def _lpips_backbone_cached(net: str) -> bool:
    """lpips only works offline when torchvision's backbone weights are already in the torch hub cache."""
    if importlib.util.find_spec("lpips") is None:
        return False
    return (Path(torch.hub.get_dir()) / "checkpoints" / _TORCHVISION_CHECKPOINTS[net]).is_file()


def perceptual_available() -> bool:
    """True when :class:`PerceptualDistance` can be built (lpips with cached weights, or stlpips-pytorch)."""
    if importlib.util.find_spec("stlpips_pytorch") is not None:
        return all(importlib.util.find_spec(m) is not None for m in ("IPython", "torchsummary"))
    return any(_lpips_backbone_cached(net) for net in NETS)


class PerceptualDistance(nn.Module):
    """Perceptual distance between two image batches in [-1, 1]: (B, 3, H, W) x 2 -> (B,).

    Args:
        net: backbone, "alex" (fast; the usual evaluation choice) or "vgg" (the usual loss choice).
        backend: "auto" (LPIPS when its backbone weights are cached, else shift-tolerant LPIPS),
            "lpips" or "stlpips" (that one or an error).
        compute_dtype: None (fp32, autocast off: the reference figures) or torch.bfloat16 (the backbone under
            bf16 autocast, for a training loss on hardware with bf16 units); the distances returned are fp32.
    Attributes:
        name: which metric this is, e.g. "lpips-alex" or "stlpips-alex-shift_tolerant".
    Raises:
        PerceptualUnavailable: neither backend can be loaded; the message names the extra to install.
    """

    def __init__(self, net: str = "alex", backend: str = "auto", compute_dtype: torch.dtype | None = None):
        super().__init__()
        if compute_dtype not in (None, torch.float32, torch.bfloat16):
            raise ValueError(f"perceptual compute_dtype {compute_dtype}; expected None (fp32) or torch.bfloat16")
        self.compute_dtype = None if compute_dtype == torch.float32 else compute_dtype
        if net not in NETS:
            raise ValueError(f"perceptual net {net!r}; expected one of {', '.join(NETS)}")
        if backend not in BACKENDS:
            raise ValueError(f"perceptual backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        self.net_name = net
        use_lpips = backend == "lpips" or (backend == "auto" and _lpips_backbone_cached(net))
        if use_lpips:
            try:
                import lpips
            except ImportError as err:
                raise PerceptualUnavailable(f"backend 'lpips' asked for but not installed ({err}): pip install lpips") from err
            self.net = lpips.LPIPS(net=net, verbose=False)
            self.name = f"lpips-{net}"
        else:
            try:
                from stlpips_pytorch import stlpips
            except ImportError as err:
                raise PerceptualUnavailable(
                    f"no perceptual network available ({err}); LPIPS weights cannot be downloaded here, "
                    f"install the shift-tolerant LPIPS: {PERCEPTUAL_EXTRA_HINT}"
                ) from err
            # variant= selects the shift-tolerant networks whose weights ship in the wheel; without it the
            # package falls back to torchvision backbones and tries to download them.
            self.net = stlpips.LPIPS(net=net, variant="shift_tolerant", verbose=False)
            self.name = f"stlpips-{net}-shift_tolerant"
        self.net.eval()
        self.net.requires_grad_(False)

    def train(self, mode: bool = True) -> "PerceptualDistance":
        # Frozen metric: dropout and batch statistics must never switch on, whatever the parent module does.
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distances (B,) between ``x`` and ``y``, both (B, 3, H, W) in [-1, 1]; 0 for identical images."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"perceptual distance: got shapes {tuple(x.shape)} and {tuple(y.shape)}; expected two equal "
                "(B, 3, H, W) batches in [-1, 1]"
            )
        with self._precision(x.device.type):
            out = self.net(x.float(), y.float())  # (B, 1, 1, 1)
        return out.float().reshape(x.shape[0])  # (B, 1, 1, 1) -> (B,)

    def _precision(self, device_type: str) -> torch.autocast:
        if self.compute_dtype is None:
            return torch.autocast(device_type, enabled=False)
        return torch.autocast(device_type, dtype=self.compute_dtype)

    # An evaluation compares one original with several reconstructions; its features are computed once.
    # Both backends share LPIPS' layout (scaling_layer, net, lins, L), so this is LPIPS' forward in two
    # halves (Zhang et al. 2018, eq. 1: unit-normalise features per position, weight squared differences
    # per channel, average over positions, sum over layers); a test checks it equals ``forward``.
    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised backbone features of (B, 3, H, W) images in [-1, 1], for :meth:`distance`."""
        with self._precision(x.device.type):
            x = x.float()
            if getattr(self.net, "version", "0.1") == "0.1":
                x = self.net.scaling_layer(x)
            feats = self.net.net.forward(x)
            # LPIPS' normalize_tensor: divide by the channel norm at each position.
            feats = [f.float() for f in list(feats)[: self.net.L]]
            return [f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10) for f in feats]

    def distance(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        """Distances (B,) from two :meth:`features` lists."""
        total = None
        for layer, (a, b) in enumerate(zip(fx, fy)):
            term = self.net.lins[layer]((a - b).pow(2)).mean(dim=(2, 3))  # (B, 1)
            total = term if total is None else total + term
        return total[:, 0]

    def extra_repr(self) -> str:
        return f"name={self.name}" + (f", compute_dtype={self.compute_dtype}" if self.compute_dtype else "")


def load_perceptual(spec: str = "auto") -> PerceptualDistance:
    """A :class:`PerceptualDistance` from a short spec, as configs and command lines give it.

    Args:
        spec: "auto" (= "alex": LPIPS-alex if its weights are available, else shift-tolerant LPIPS-alex),
            "alex", "vgg", or a backend and net such as "lpips-vgg" or "stlpips-alex".
    """
    if spec == "auto":
        return PerceptualDistance("alex")
    if spec in NETS:
        return PerceptualDistance(spec)
    backend, _, net = spec.partition("-")
    if backend in ("lpips", "stlpips") and net in NETS:
        return PerceptualDistance(net, backend=backend)
    raise ValueError(
        f"perceptual spec {spec!r}; expected 'auto', 'alex', 'vgg', 'lpips-alex', 'lpips-vgg', 'stlpips-alex' "
        "or 'stlpips-vgg'"
    )
