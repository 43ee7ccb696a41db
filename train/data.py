"""Training images: recursive folders, globs or list files (``tokenizer.inputs``) -> random rescaled crops with flips.

Every crop is a pure function of (seed, rank, world, step, slot): a resumed run draws exactly the crops
the uninterrupted run would have drawn, with any number of loader workers.

Memory is bounded whatever the dataset: each rank reads only its share of the files (every world-th), an
image is kept at most at ``max_short_side`` (larger photos are downscaled once, when read: no crop ever
needs more), and the decoded-image cache of a rank holds at most ``cache_mb`` MiB, split between its
loader workers (each worker is a process with its own cache).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, get_worker_info

from tokenizer.image_io import ImageError, read_image
from tokenizer.inputs import center_crop, list_images  # finding images and the eval crop: one home

__all__ = ["list_images", "RandomCrops", "StepSampler", "step_generator", "corrupt", "default_workers", "load_eval_images"]

class RandomCrops(Dataset):
    """Item (step, slot) -> one (3, S, S) float crop in [0, 1], deterministic in (seed, rank, world, step, slot).

    The image's short side is resized to a size drawn in [S, min(short side, max_short_side)] (scale
    augmentation, downscaling only), then an S x S crop is taken at a random place and flipped at random.
    Unreadable files are reported once and skipped. Rank ``rank`` of ``world`` draws from every
    world-th file only (all files when there are fewer files than ranks).
    """

    def __init__(self, paths: list[str], crop_size: int, seed: int = 0, rank: int = 0,
                 max_short_side: int = 1024, hflip: bool = True, cache: bool = True, world: int = 1,
                 cache_mb: int = 2048):
        paths = list(paths)
        self.paths = paths[rank::world] if len(paths) >= world else paths
        self.crop_size = crop_size
        self.seed, self.rank = seed, rank
        self.max_short_side = max(max_short_side, crop_size)
        self.hflip = hflip
        self.cache = cache
        self.cache_bytes = cache_mb * 2**20  # this process's share is decided in the process (workers)
        self._cached_bytes = 0
        self._images: dict[int, torch.Tensor] = {}
        self.bad: set[int] = set()

    def __len__(self) -> int:  # conceptually infinite; the sampler decides how many items are drawn
        return len(self.paths)

    def _load(self, index: int) -> torch.Tensor | None:
        if index in self._images:
            return self._images[index]
        if index in self.bad:
            return None
        try:
            image = read_image(self.paths[index])  # (3, H, W) float in [0, 1]
        except (ImageError, OSError) as err:
            self.bad.add(index)
            print(f"[data] skipping unreadable image {self.paths[index]}: {err}", file=sys.stderr)
            return None
        _, height, width = image.shape
        if min(height, width) > self.max_short_side:  # no crop reads finer than max_short_side: keep no more
            scale = self.max_short_side / min(height, width)
            size = (max(self.max_short_side, round(height * scale)), max(self.max_short_side, round(width * scale)))
            image = F.interpolate(image[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0]
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)  # (3, H', W')
        if self.cache and self._cached_bytes + image.numel() <= self._cache_budget():
            self._images[index] = image
            self._cached_bytes += image.numel()
        return image

    def _cache_budget(self) -> int:
        worker = get_worker_info()
        return self.cache_bytes // (worker.num_workers if worker is not None else 1)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        step, slot = key
        g = step_generator(self.seed, self.rank, step, slot)
        for _ in range(len(self.paths) + 10):
            image = self._load(int(torch.randint(len(self.paths), (1,), generator=g)))
            if image is not None:
                return self._crop(image, g)
        raise RuntimeError(f"no readable training image among {len(self.paths)} files")

    def _crop(self, image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s = self.crop_size
        _, height, width = image.shape
        short = min(height, width)
        if short < s:  # small images are upscaled so that a crop fits
            scale = s / short
        else:
            hi = max(s, min(short, self.max_short_side))
            target = s + float(torch.rand((), generator=g)) * (hi - s)
            scale = target / short
        # Crop the source region first and resize only it (cheap for large photos).
        src = min(max(1, round(s / scale)), height, width)
        top = int(torch.randint(height - src + 1, (1,), generator=g))
        left = int(torch.randint(width - src + 1, (1,), generator=g))
        region = image[:, top : top + src, left : left + src].float()[None] / 255.0  # (1, 3, src, src)
        if src != s:
            region = F.interpolate(region, size=(s, s), mode="bicubic", antialias=src > s, align_corners=False)
        crop = region[0].clamp(0, 1)  # (3, S, S)
        if self.hflip and bool(torch.rand((), generator=g) < 0.5):
            crop = crop.flip(-1)
        return crop


class StepSampler(torch.utils.data.Sampler):
    """Yields batches of (step, slot) keys from ``start_step`` on: resume = start at the saved step."""

    def __init__(self, start_step: int, total_steps: int, batch_size: int):
        self.start, self.total, self.batch = start_step, total_steps, batch_size

    def __iter__(self):
        for step in range(self.start, self.total):
            yield [(step, slot) for slot in range(self.batch)]

    def __len__(self) -> int:
        return max(0, self.total - self.start)


# The stream of the denoising corruption; crops use their batch slot (>= 0) as the stream.
CORRUPTION_STREAM = -1


def step_generator(seed: int, rank: int, step: int, stream: int) -> torch.Generator:
    """A generator determined by (seed, rank, step, stream) alone: resumed runs redraw exactly."""
    return torch.Generator().manual_seed(hash((seed, rank, step, stream)) & 0x7FFF_FFFF_FFFF)


def corrupt(x: torch.Tensor, mask_ratio: float, noise_std: float, g: torch.Generator | None = None) -> torch.Tensor:
    """Denoising-autoencoder input corruption (Vincent et al. 2008) of (B, 3, H, W) in [0, 1]."""
    if mask_ratio > 0:
        b, _, h, w = x.shape
        keep = torch.rand(b, 1, (h + 7) // 8, (w + 7) // 8, generator=g) >= mask_ratio  # (B, 1, h8, w8)
        keep = keep.repeat_interleave(8, 2).repeat_interleave(8, 3)[..., :h, :w].to(x.device)  # (B, 1, H, W)
        x = torch.where(keep, x, torch.full_like(x, 0.5))
    if noise_std > 0:
        x = (x + noise_std * torch.randn(x.shape, generator=g).to(x.device)).clamp(0, 1)
    return x


def default_workers(num_workers: int, local_world: int = 1) -> int:
    """``num_workers`` as given, or for -1: min(4, CPUs per rank - 1) (one CPU left to the training process)."""
    if num_workers >= 0:
        return num_workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cpus // max(1, local_world) - 1))


def load_eval_images(sources: list[str], size: int, limit: int) -> torch.Tensor | None:
    """Centre crops (``tokenizer.inputs.center_crop``) of held-out images, (N, 3, size, size) in [0, 1]."""
    if not sources:
        return None
    crops = []
    for path in list_images(sources)[:limit]:
        try:
            image = read_image(path)  # (3, H, W)
        except (ImageError, OSError) as err:
            print(f"[data] skipping unreadable eval image {path}: {err}", file=sys.stderr)
            continue
        crops.append(center_crop(image, size))
    return torch.stack(crops) if crops else None
