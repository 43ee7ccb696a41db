"""Convolutional encoder/decoder blocks in the layout the field converged on.

taming-transformers' VQGAN (Esser et al. 2021) and the LDM autoencoders (Rombach et al. 2022), which
diffusers' ``AutoencoderKL``/``VQModel`` and LlamaGen's VQ re-implement: ResNet blocks with GroupNorm
and SiLU, stride-2 convolutions down, nearest-neighbour + conv up, self-attention in a mid block at the
lowest resolution. Module names follow taming (``down.{i}.block.{j}``, ``mid.attn_1``, ``up.{i}``) so
that the family's checkpoints map onto these modules key by key (see ``tokenizer/interop``).

Axis letters: B batch, C channels, H/W spatial size at the current level, L = H*W positions.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import AutoencoderConfig


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    # Tiny presets have widths below 32; use the largest divisor of the width not above `groups`.
    groups = max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Two 3x3 convs with pre-activation GroupNorm + SiLU and a (1x1 if needed) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections (taming's ``AttnBlock``)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, height, width = x.shape
        h = self.norm(x)
        # `.contiguous()` matters: the rearranged views have stride L in their last dimension, and
        # SDPA's fused (flash / memory-efficient) kernels need a unit stride there. Without it PyTorch
        # falls back to the math kernel, which materialises the (L, L) matrix: gigabytes at 2048^2 / f8.
        q, k, v = (
            rearrange(m(h), "b c h w -> b 1 (h w) c").contiguous() for m in (self.q, self.k, self.v)
        )  # (B, 1, L, C)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, L, C)
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=height, w=width)  # (B, C, H, W)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv with asymmetric (0, 1, 0, 1) padding, as taming and LDM.

    ``shortcut`` adds DC-AE's space-to-channel shortcut (Chen et al. 2024, sec. 3.1): pixel-unshuffle by 2
    then the average of each group of 4 channels, which for equal widths in and out is 2x2 average pooling.
    """

    def __init__(self, channels: int, shortcut: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.pad(x, (0, 1, 0, 1)))  # (B, C, H, W) -> (B, C, H/2, W/2)
        return h + F.avg_pool2d(x, 2) if self.shortcut else h


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (avoids the checkerboard of transposed convs).

    ``shortcut`` adds DC-AE's channel-to-space shortcut (Chen et al. 2024, sec. 3.1): each channel duplicated
    4 times then pixel-shuffled by 2, which is the nearest-neighbour upsampled input the conv reads.
    """

    def __init__(self, channels: int, shortcut: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, h, w) -> (B, C, 2h, 2w)
        h = self.conv(up)
        return h + up if self.shortcut else h


class SpaceToChannel(nn.Module):
    """Pixel-unshuffle by ``factor``: (B, C, H, W) -> (B, C*p*p, H/p, W/p), no weights (the encoder's stem)."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, self.factor)  # (B, C, H, W) -> (B, C*p*p, H/p, W/p)


class ChannelToSpace(nn.Module):
    """Pixel-shuffle by ``factor``: (B, C*p*p, h, w) -> (B, C, h*p, w*p), no weights (the decoder's last step)."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(x, self.factor)  # (B, C*p*p, h, w) -> (B, C, h*p, w*p)


class Level(nn.Module):
    """One resolution level: ResNet blocks, optional attention after each, optional resampler."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module], resample: nn.Module | None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        if resample is not None:
            # Attribute name matters for checkpoint keys: "downsample" in the encoder, "upsample" in the decoder.
            setattr(self, "downsample" if isinstance(resample, Downsample) else "upsample", resample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in _level_layers(self):
            x = step(x)
        return x


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, dropout: float, attention: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups, dropout)
        self.attn_1 = AttnBlock(channels, groups) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, groups, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in _mid_layers(self):
            x = step(x)
        return x


# One step of ``Encoder.layers()`` / ``Decoder.layers()``: (B, C, H, W) -> (B, C', H', W').
Step = Callable[[torch.Tensor], torch.Tensor]


def _level_layers(level: Level) -> list[Step]:
    out: list[Step] = []
    for i, block in enumerate(level.block):
        out.append(block)
        if len(level.attn) > 0:
            out.append(level.attn[i])
    return out


def _mid_layers(mid: MidBlock) -> list[Step]:
    return [m for m in (mid.block_1, mid.attn_1, mid.block_2) if not isinstance(m, nn.Identity)]


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> features (B, out_channels, H/f, W/f).

    f = patch_size * 2**(levels - 1): an optional space-to-channel stem, then one ``Downsample`` per level.
    """

    def __init__(self, config: AutoencoderConfig, out_channels: int):
        super().__init__()
        c, g = config, config.norm_groups
        widths = [c.base_channels * m for m in c.channel_mult]
        p = c.patch_size
        # The space-to-channel stem (None in the LDM layout); no weights, so checkpoint keys are unchanged.
        self.space_to_channel = SpaceToChannel(p) if p > 1 else None
        self.conv_in = nn.Conv2d(c.in_channels * p * p, c.base_channels, 3, padding=1)
        levels = []
        in_ch = c.base_channels
        for i, width in enumerate(widths):
            blocks, attns = [], []
            for _ in range(c.layers_per_block):
                blocks.append(ResnetBlock(in_ch, width, g, c.dropout))
                in_ch = width
                if i in c.attn_levels:
                    attns.append(AttnBlock(width, g))
            last = i == len(widths) - 1
            levels.append(Level(blocks, attns, None if last else Downsample(width, c.resample_shortcut)))
        self.down = nn.ModuleList(levels)
        self.mid = MidBlock(in_ch, g, c.dropout, c.mid_attention)
        self.norm_out = group_norm(in_ch, g)
        self.conv_out = nn.Conv2d(in_ch, out_channels, 3, padding=1)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(h)))

    def layers(self) -> list[Step]:
        """The forward pass as a flat sequence of steps, in order (what ``tokenizer.tiling`` runs tile by tile).

        Only ``AttnBlock`` steps mix distant positions; ``Downsample`` halves the size, ``SpaceToChannel``
        divides it by its factor, the rest keep it.
        """
        steps: list[Step] = [self.conv_in]
        if self.space_to_channel is not None:
            steps.insert(0, self.space_to_channel)  # (B, 3, H, W) -> (B, 3*p*p, H/p, W/p)
        for level in self.down:
            steps += _level_layers(level)
            if hasattr(level, "downsample"):
                steps.append(level.downsample)  # (B, C, H, W) -> (B, C, H/2, W/2)
        return steps + _mid_layers(self.mid) + [self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x  # (B, in_channels, H, W)
        for step in self.layers():
            h = step(h)
        return h  # (B, out_channels, H/f, W/f)


class Decoder(nn.Module):
    """Latent (B, in_channels, h, w) -> image (B, out_channels, h*f, w*f).

    ``up[i]`` is the level at the same resolution as the encoder's ``down[i]`` (taming's convention),
    so ``up[-1]`` runs first. Each level has one more ResNet block than the encoder's (taming/LDM), unless
    ``decoder_layers_per_block`` says otherwise.
    """

    def __init__(self, config: AutoencoderConfig, in_channels: int):
        super().__init__()
        c, g = config, config.norm_groups
        widths = [c.base_channels * m for m in c.channel_mult]
        ch = widths[-1]
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.mid = MidBlock(ch, g, c.dropout, c.mid_attention)
        levels: list[Level] = []
        for i in reversed(range(len(widths))):
            blocks, attns = [], []
            for _ in range(c.decoder_blocks):
                blocks.append(ResnetBlock(ch, widths[i], g, c.dropout))
                ch = widths[i]
                if i in c.attn_levels:
                    attns.append(AttnBlock(ch, g))
            levels.insert(0, Level(blocks, attns, Upsample(ch, c.resample_shortcut) if i > 0 else None))
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(ch, g)
        p = c.patch_size
        # With a stem, conv_out emits p*p values per output pixel at 1/p of the size, and a pixel-shuffle
        # puts them in place (the inverse of the encoder's SpaceToChannel).
        self.conv_out = nn.Conv2d(ch, c.out_channels * p * p, 3, padding=1)
        self.channel_to_space = ChannelToSpace(p) if p > 1 else None

    @property
    def last_layer(self) -> nn.Parameter:
        """Weight of the final conv: where the adaptive GAN weight of VQGAN (eq. 7) is measured."""
        return self.conv_out.weight

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(h)))

    def layers(self) -> list[Step]:
        """The forward pass as a flat sequence of steps, in order (see ``Encoder.layers``; ``Upsample`` doubles,
        ``ChannelToSpace`` multiplies by its factor)."""
        steps: list[Step] = [self.conv_in] + _mid_layers(self.mid)
        for level in reversed(self.up):
            steps += _level_layers(level)
            if hasattr(level, "upsample"):
                steps.append(level.upsample)  # (B, C, h, w) -> (B, C, 2h, 2w)
        steps.append(self.head)
        if self.channel_to_space is not None:
            steps.append(self.channel_to_space)  # (B, 3*p*p, H/p, W/p) -> (B, 3, H, W)
        return steps

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z  # (B, in_channels, h, w)
        for step in self.layers():
            h = step(h)
        return h  # (B, out_channels, H, W)
