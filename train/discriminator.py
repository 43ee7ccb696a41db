"""PatchGAN discriminator (pix2pix, Isola et al. 2017) as used by VQGAN (Esser et al. 2021).

GroupNorm instead of BatchNorm: batch statistics differ per rank under DDP and with tiny CPU batches.
"""

from __future__ import annotations

import torch
from torch import nn

from tokenizer.blocks import group_norm


class PatchDiscriminator(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, 1, H', W') real/fake logits, one per ~70x70 patch at 3 layers."""

    def __init__(self, channels: int = 64, layers: int = 3, in_channels: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            mods += [nn.Conv2d(width, out, 4, stride, 1, bias=False), group_norm(out, 32), nn.LeakyReLU(0.2)]
            width = out
        mods.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        # pix2pix initialisation: N(0, 0.02) convs, N(1, 0.02) norm scales.
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.GroupNorm):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
