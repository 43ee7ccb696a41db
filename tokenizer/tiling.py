"""Tiled encode and decode: any image size at bounded memory, with tokens in mind.

An untiled encoder holds a few (C, H, W) activations at full resolution: 128 channels x 12 megapixels x
4 bytes is 6 GiB each. Here the encoder and decoder run tile by tile over the steps of
``Encoder.layers()`` / ``Decoder.layers()``, and memory is a few tiles' activations plus the maps at the
lowest resolution, whatever the image size.

Three things make plain tiling (diffusers' ``enable_tiling``) differ from the untiled model, and each is
handled here so that tiled ids agree with untiled ones:

- Receptive field. A tile is run with a halo of context around its interior and contributes only the
  interior to the output, so an interior position sees what it would see in the whole image as long as
  the halo covers the (effective) receptive field. Tiles are aligned to whole cells of the coarser map
  (one token / latent), so stride-2 convolutions see the same phase as in the whole image.
- GroupNorm. Its mean and variance are taken over the whole image, not the tile. Before the output pass,
  one statistics pass per GroupNorm accumulates that norm's per-group sums over the tile interiors
  (float64), normalising every earlier norm with the global statistics already gathered, and stops each
  tile at that norm. So every norm sees the untiled model's statistics (up to the halo's effect on the
  interiors). Cheaper schemes were measured and rejected on a photo with the bundled tokenizer: plain
  per-tile statistics gave 24% of the ids of the untiled encode, and iterating whole passes (each using the
  previous pass's statistics) does not converge (46%, then 16%), because an error in an early norm's
  variance is amplified by every later norm. With exact statistics a 64 px halo gave 100%.
  To keep the statistics passes cheap, a segment is cut after a down/upsampling step whose output map
  fits ``MAP_BUDGET_BYTES``: that map is assembled whole and the next levels' passes start from it instead
  of recomputing the full-resolution levels.
- Self-attention (the mid block's ``AttnBlock``, and attention levels). It mixes all positions, so it is
  never tiled: the map before it is assembled at its own (lowest) resolution, attention runs on the whole
  map (SDPA's fused kernel: memory linear in positions), and tiling resumes after it.

Decoding blends overlapping tiles with linear ramps (weights summing to one) instead of cutting at tile
borders, so that the small residual differences between neighbouring tiles fade in instead of showing a
seam.

Tiling is automatic and deterministic: it depends only on the image size and ``tile_size`` (never on the
machine), and images of at most ``TILE_THRESHOLD_PIXELS`` run untiled, exactly as before.

Axis letters: B batch, C channels, H/W size of a step's input map, h/w of its output; a "cell" is the
unit a segment is tiled in: one position of the coarser of its input and output maps.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import AttnBlock, ChannelToSpace, Decoder, Downsample, Encoder, SpaceToChannel, Step, Upsample

# Images above this many pixels (H * W) are tiled unless ``tile_size=0``; at or below it they run whole,
# with exactly the ids of an untiled encode. 1 MiP (1024 x 1024) keeps the common sizes (256^2 to Kodak's
# 768 x 512) untiled, and keeps an untiled run of the 128-channel presets under ~2 GiB.
TILE_THRESHOLD_PIXELS = 1 << 20
# Side of a tile's interior in image pixels (the stride between tiles). 512 px: a vq-f8 tile with its halo
# holds ~0.2 GiB per full-resolution activation; larger tiles spend less on halos but more memory.
DEFAULT_TILE_SIZE = 512
# Context around each tile, in image pixels (rounded up to whole cells). The theoretical receptive field
# of the f8 presets is ~160 px, but the effective one is much smaller: see scripts/bench_memory.py for
# the ids agreement this gives on photos.
HALO_PIXELS = 64
# Decoding: half-width of the linear ramp across each tile border, in image pixels (inside the halo).
BLEND_PIXELS = 16
# Maps between resolution levels are kept whole (cutting the recomputation of the statistics passes)
# when they take at most this many bytes; larger ones are recomputed tile by tile instead.
MAP_BUDGET_BYTES = 512 << 20


def choose_tile_size(height: int, width: int, tile_size: int | None = None) -> int | None:
    """The tile size to encode/decode an H x W image with, or None to run it whole.

    Args:
        height, width: the image size in pixels (for decoding: the grid size times f).
        tile_size: None: ``DEFAULT_TILE_SIZE`` above ``TILE_THRESHOLD_PIXELS``, else untiled; 0: never
            tile; a positive size: tile with it whenever the image does not fit in one tile.
    """
    if tile_size is None:
        return DEFAULT_TILE_SIZE if height * width > TILE_THRESHOLD_PIXELS else None
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 0:
        raise ValueError(f"tile_size = {tile_size!r}; expected None (automatic), 0 (never tile) or a positive int")
    if tile_size == 0 or (height <= tile_size and width <= tile_size):
        return None
    return tile_size


def as_float_image(image: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 in [0, 1] (the values ``tokenizer.image_io`` decodes to); float as is."""
    return image.float() / 255.0 if image.dtype == torch.uint8 else image


class PixelSource:
    """An image kept as it was loaded (uint8 or float in [0, 1]) and read as model input one crop at a time.

    Converting a 121-megapixel image to float at once takes 1.4 GiB (and the model input another); here
    only a tile is ever converted. ``crop`` returns exactly the values the untiled path feeds the model:
    [0, 1] -> [-1, 1], edge-padded to a multiple of ``multiple``.

    Args:
        image: (B, 3, H, W) uint8, or float in [0, 1].
        multiple: the model's downsampling factor f.
        device, dtype: where and as what the model runs.
        channels_last: hand crops over in NHWC memory format.
    """

    def __init__(self, image: torch.Tensor, multiple: int, device: torch.device, dtype: torch.dtype,
                 channels_last: bool = False):
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"PixelSource: expected (B, 3, H, W), got {tuple(image.shape)}")
        self.image, self.device, self.dtype, self.channels_last = image, device, dtype, channels_last
        batch, _, height, width = image.shape
        self.height, self.width = height, width
        self.shape = (batch, 3, math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple)

    def crop(self, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
        """Rows [top, bottom) and columns [left, right) of the padded model input: (B, 3, bottom-top, right-left)."""
        part = self.image[:, :, top : min(bottom, self.height), left : min(right, self.width)]
        x = as_float_image(part).to(self.device, self.dtype) * 2.0 - 1.0
        pad_h, pad_w = bottom - max(top, min(bottom, self.height)), right - max(left, min(right, self.width))
        if pad_h or pad_w:  # past the image's edge (at most f - 1 rows/columns): replicate, as the untiled pad
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


# --------------------------------------------------------------------------------------------------
# GroupNorm with global statistics
# --------------------------------------------------------------------------------------------------
@dataclass
class _Tile:
    """The tile being run, in cells: the halo-extended region [top, bottom) x [left, right) and its interior."""

    top: int
    bottom: int
    left: int
    right: int
    inner_top: int
    inner_bottom: int
    inner_left: int
    inner_right: int


class _StopTile(Exception):
    """Raised by the norm a statistics pass gathers, once it has its sums: the rest of the tile is not needed."""


@dataclass
class _NormState:
    """What the patched GroupNorms read: the current tile, the norm being gathered, the global statistics."""

    tile: _Tile | None = None
    target: nn.GroupNorm | None = None  # the norm this statistics pass gathers (None: the output pass)
    sums: torch.Tensor | None = None  # (B, G, 3) float64 [count, sum, sum of squares] over tile interiors
    # id(norm) -> ((B, G) mean, (B, G) 1/sqrt(var + eps)), float32.
    stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def finish_pass(self) -> None:
        """Turn the target norm's sums into its global statistics."""
        norm, acc = self.target, self.sums
        assert norm is not None and acc is not None
        count, total, total_sq = acc.unbind(-1)  # (B, G) each
        mean = total / count
        var = (total_sq / count - mean.square()).clamp_min(0.0)
        self.stats[id(norm)] = (mean.float(), torch.rsqrt(var + norm.eps).float())
        self.target, self.sums = None, None


def _group_norm(norm: nn.GroupNorm, state: _NormState, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` inside a tile: gather interior sums (then stop the tile), or normalise with global statistics."""
    tile = state.tile
    if tile is None:  # a whole-map step (attention): its own statistics are global already
        return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    batch, channels, height, width = x.shape
    groups = norm.num_groups
    if norm is state.target:
        per_cell = height // (tile.bottom - tile.top)  # positions of this map per cell
        inner = x[:, :, (tile.inner_top - tile.top) * per_cell : (tile.inner_bottom - tile.top) * per_cell,
                  (tile.inner_left - tile.left) * per_cell : (tile.inner_right - tile.left) * per_cell]
        var, mean = torch.var_mean(inner.float(), dim=(2, 3), correction=0)  # (B, C) each
        n = inner.shape[2] * inner.shape[3]
        mean, var = mean.double().view(batch, groups, -1), var.double().view(batch, groups, -1)  # (B, G, C/G)
        acc = torch.stack([  # (B, G, 3)
            torch.full((batch, groups), float(n * mean.shape[2]), dtype=torch.float64, device=x.device),
            mean.sum(2) * n, (var + mean.square()).sum(2) * n,
        ], dim=-1)
        state.sums = acc if state.sums is None else state.sums + acc
        raise _StopTile
    stats = state.stats.get(id(norm))
    if stats is None:
        raise RuntimeError(f"tiling: GroupNorm {norm} ran before its statistics were gathered")
    mean, rstd = stats  # (B, G) each
    # (x - mean) * rstd * weight + bias as one scale and shift per (sample, channel).
    scale = (rstd[:, :, None] * norm.weight.float().view(groups, -1)).reshape(batch, channels)  # (B, C)
    shift = norm.bias.float() - (mean[:, :, None] * scale.view(batch, groups, -1)).reshape(batch, channels)
    return torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None])  # (B, C, H, W)


@contextlib.contextmanager
def _global_group_norms(norms: Sequence[nn.GroupNorm], state: _NormState) -> Iterator[None]:
    """Route the forward of each GroupNorm in ``norms`` through ``_group_norm`` for the duration."""
    patched = []
    try:
        for norm in norms:
            if "forward" in vars(norm):  # already patched (shared module): leave it
                continue
            norm.forward = lambda x, norm=norm: _group_norm(norm, state, x)
            patched.append(norm)
        yield
    finally:
        for norm in patched:
            del norm.forward


# --------------------------------------------------------------------------------------------------
# Segments: runs of steps between whole-map (attention) steps
# --------------------------------------------------------------------------------------------------
@dataclass
class _Segment:
    """Steps run tile by tile (``whole`` False), or one whole-map step (attention)."""

    steps: list[Step]
    whole: bool = False
    down: int = 1  # input positions per cell (the product of the Downsample / SpaceToChannel factors)
    up: int = 1  # output positions per cell (the product of the Upsample / ChannelToSpace factors)

    def norms(self) -> list[nn.GroupNorm]:
        out: list[nn.GroupNorm] = []
        for step in self.steps:
            owner = step if isinstance(step, nn.Module) else getattr(step, "__self__", None)
            if isinstance(owner, nn.Module):
                norms = [m for m in owner.modules() if isinstance(m, nn.GroupNorm)]
                if not isinstance(step, nn.Module):  # a bound method (``head``): its norm_out only
                    norms = [getattr(owner, "norm_out")]
                out += [n for n in norms if all(n is not o for o in out)]
        return out


def _segments(steps: Sequence[Step], shape: tuple[int, ...]) -> list[_Segment]:
    """Cut ``steps`` at attention steps (run whole) and after resampling steps whose map fits the budget.

    Args:
        shape: (B, C, H, W) of the input map, to size the maps between levels.
    """
    out: list[_Segment] = []
    current = _Segment([])
    batch, _, height, width = shape
    for step in steps:
        if isinstance(step, AttnBlock):
            if current.steps:
                out.append(current)
            out.append(_Segment([step], whole=True))
            current = _Segment([])
            continue
        current.steps.append(step)
        # The stem's pixel-(un)shuffle: tiles stay aligned to its p x p patches. No cut after it: it has no
        # GroupNorm to gather, and the next steps read the image tile by tile instead of a whole map.
        if isinstance(step, SpaceToChannel):
            current.down *= step.factor
            height, width = height // step.factor, width // step.factor
        elif isinstance(step, ChannelToSpace):
            current.up *= step.factor
            height, width = height * step.factor, width * step.factor
        elif isinstance(step, (Downsample, Upsample)):
            if isinstance(step, Downsample):
                current.down *= 2
                height, width = height // 2, width // 2
            else:
                current.up *= 2
                height, width = height * 2, width * 2
            if batch * step.conv.out_channels * height * width * 4 <= MAP_BUDGET_BYTES:
                out.append(current)
                current = _Segment([])
    if current.steps:
        out.append(current)
    return out


def _spans(n: int, tile: int) -> list[tuple[int, int]]:
    """[0, n) cut into ceil(n / tile) near-equal spans (no sliver at the end)."""
    k = max(1, math.ceil(n / tile))
    bounds = [i * n // k for i in range(k + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _ramp(start: int, stop: int, inner_start: int, inner_stop: int, n: int, blend: int, scale: int,
          device: torch.device) -> torch.Tensor:
    """1-D blend weights over output positions [start, stop) * scale of one tile.

    Across each inner border that has a neighbour, the weight rises linearly over [border - blend,
    border + blend) cells; the neighbour's weight falls over the same positions, and the two sum to one.
    """
    pos = torch.arange(start * scale, stop * scale, device=device, dtype=torch.float64) + 0.5
    width = 2 * blend * scale
    w = torch.ones_like(pos)
    if inner_start > 0:
        w = torch.minimum(w, (pos - (inner_start - blend) * scale) / width)
    if inner_stop < n:
        w = torch.minimum(w, ((inner_stop + blend) * scale - pos) / width)
    return w.clamp(0.0, 1.0).float()


def _read(x: torch.Tensor | PixelSource, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    if isinstance(x, PixelSource):
        return x.crop(top, bottom, left, right)
    return x[:, :, top:bottom, left:right]


def _run_steps(steps: Sequence[Step], x: torch.Tensor) -> torch.Tensor:
    for step in steps:
        x = step(x)
    return x


def _run_tiled(segment: _Segment, x: torch.Tensor | PixelSource, tile: int, halo: int, blend: int) -> torch.Tensor:
    """One local segment over a map (or the image), tile by tile; sizes in cells. Returns the assembled map."""
    batch, _, height, width = x.shape
    rows_n, cols_n = height // segment.down, width // segment.down  # the map in cells
    down, up = segment.down, segment.up
    if rows_n <= tile and cols_n <= tile:  # one tile: the plain forward (its statistics are global)
        return _run_steps(segment.steps, _read(x, 0, height, 0, width))
    rows, cols = _spans(rows_n, tile), _spans(cols_n, tile)
    blend = min(blend, halo, min(b - a for a, b in rows + cols) // 2)
    norms = segment.norms()
    state = _NormState()

    def tiles(context: int) -> Iterator[tuple[_Tile, torch.Tensor]]:
        for r0, r1 in rows:
            for c0, c1 in cols:
                t = _Tile(max(0, r0 - context), min(rows_n, r1 + context), max(0, c0 - context),
                          min(cols_n, c1 + context), r0, r1, c0, c1)
                state.tile = t
                try:
                    y = _run_steps(segment.steps, _read(x, t.top * down, t.bottom * down, t.left * down, t.right * down))
                except _StopTile:  # a statistics pass got its sums
                    continue
                finally:
                    state.tile = None
                yield t, y

    with _global_group_norms(norms, state):
        for norm in norms:  # in forward order: each pass normalises the earlier norms globally
            state.target = norm
            for _ in tiles(halo):
                pass
            state.finish_pass()
        out: torch.Tensor | None = None
        for t, y in tiles(halo):  # y: (B, C', (bottom - top) * up, (right - left) * up)
            if out is None:
                dtype = y.dtype if blend == 0 else torch.float32  # ramp sums in fp32 whatever the autocast
                out = torch.zeros(batch, y.shape[1], rows_n * up, cols_n * up, dtype=dtype, device=y.device)
            if blend == 0:  # hard cut: the interior only (the encoder: each token from one tile)
                out[:, :, t.inner_top * up : t.inner_bottom * up, t.inner_left * up : t.inner_right * up] = y[
                    :, :, (t.inner_top - t.top) * up : (t.inner_bottom - t.top) * up,
                    (t.inner_left - t.left) * up : (t.inner_right - t.left) * up]
                continue
            # The interior widened by the ramp, weighted (B, C', h, w) * (h, 1) * (1, w).
            top, bottom = max(0, t.inner_top - blend), min(rows_n, t.inner_bottom + blend)
            left, right = max(0, t.inner_left - blend), min(cols_n, t.inner_right + blend)
            wy = _ramp(top, bottom, t.inner_top, t.inner_bottom, rows_n, blend, up, y.device)
            wx = _ramp(left, right, t.inner_left, t.inner_right, cols_n, blend, up, y.device)
            part = y[:, :, (top - t.top) * up : (bottom - t.top) * up, (left - t.left) * up : (right - t.left) * up]
            out[:, :, top * up : bottom * up, left * up : right * up] += part.float() * (wy[:, None] * wx[None, :])
    assert out is not None
    return out


def run_tiled(steps: Sequence[Step], x: torch.Tensor | PixelSource, pixels_per_position: int, tile_size: int,
              halo: int = HALO_PIXELS, blend: int = 0) -> torch.Tensor:
    """Run ``steps`` (an encoder's or decoder's ``layers()``) on ``x`` in tiles; attention steps on whole maps.

    Args:
        steps: the sequence of steps.
        x: (B, C, H, W) input map, or the image as a ``PixelSource``.
        pixels_per_position: image pixels per position of ``x`` (1 for the image, f for latents).
        tile_size, halo, blend: tile interior, context and decoding ramp half-width, in image pixels.
    """
    for segment in _segments(steps, tuple(x.shape)):
        if segment.whole:
            if isinstance(x, PixelSource):
                x = x.crop(0, x.shape[2], 0, x.shape[3])
            x = _run_steps(segment.steps, x)
            continue
        cell = pixels_per_position * segment.down  # image pixels per cell
        x = _run_tiled(segment, x, tile=max(1, tile_size // cell), halo=math.ceil(halo / cell), blend=blend // cell)
        pixels_per_position = pixels_per_position * segment.down // segment.up
    return x


class TiledEncoder:
    """Runs an ``Encoder`` tile by tile; pass it as ``encoder=`` to ``VQModel.encode_ids`` / ``KLModel.posterior``.

    Args:
        encoder: the model's encoder.
        tile_size: tile interior side in image pixels.
    """

    def __init__(self, encoder: Encoder, tile_size: int = DEFAULT_TILE_SIZE, halo: int = HALO_PIXELS):
        self.encoder, self.tile_size, self.halo = encoder, tile_size, halo

    def __call__(self, source: PixelSource) -> torch.Tensor:
        """The image -> (B, C, h, w) encoder features (the encoder's own output, assembled)."""
        return run_tiled(self.encoder.layers(), source, 1, self.tile_size, self.halo, blend=0)


class TiledDecoder:
    """Runs a ``Decoder`` tile by tile with blended borders; pass it as ``decoder=`` to ``decode_latents``.

    Args:
        decoder: the model's decoder.
        downsample_factor: the model's f (image pixels per latent position).
        tile_size: tile interior side in image pixels.
    """

    def __init__(self, decoder: Decoder, downsample_factor: int, tile_size: int = DEFAULT_TILE_SIZE,
                 halo: int = HALO_PIXELS, blend: int = BLEND_PIXELS):
        self.decoder, self.f = decoder, downsample_factor
        self.tile_size, self.halo, self.blend = tile_size, halo, blend

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) decoder input -> (B, 3, h*f, w*f)."""
        return run_tiled(self.decoder.layers(), z, self.f, self.tile_size, self.halo, self.blend)


__all__ = [
    "TILE_THRESHOLD_PIXELS", "DEFAULT_TILE_SIZE", "HALO_PIXELS", "BLEND_PIXELS", "MAP_BUDGET_BYTES",
    "choose_tile_size", "as_float_image", "PixelSource", "TiledEncoder", "TiledDecoder", "run_tiled",
]
