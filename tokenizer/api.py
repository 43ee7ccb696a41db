"""The API users call: ``ImageTokenizer`` (image <-> integer ids), ``ImageVAE`` and ``ImageAE`` (image <-> latents).

One shape rule for both: a single image in gives a single grid out ((h, w), or (C, h, w) for the VAE);
a 4-D batch (B, C, H, W) gives (B, h, w) ((B, C, h, w)); a list gives a list. ``decode`` mirrors it. A tokenizer with ``depth`` > 1 (residual VQ) adds a last axis of
``depth`` ids, (h, w, depth) and (B, h, w, depth): its depth is what tells one deep grid from a batch.
Sizes that are not a multiple of f are edge-padded on encode; ``reconstruct`` crops back.

Axis letters: B batch, H/W image size, h/w grid (ceil(H/f), ceil(W/f)), C latent channels.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import build, save_folder
from .colour import is_grayscale, to_gray
from .config import AutoencoderConfig, ConfigError, KLConfig
from .devices import resolve_device
from .fast import InferenceOptions, autocast_context
from .fast import configure as configure_inference
from .hub import HubOptions
from .image_io import as_image_list
from .metrics import bits_per_pixel
from .models import AEModel, KLModel, Runner, VQModel, build_model
from .model_card import ModelCardInfo, render_model_card
from .presets import get_preset
from .pretrained import load_checkpoint
from .shipped import ModelIdentity, identify, resolve_shipped
from .tiling import PixelSource, TiledDecoder, TiledEncoder, as_float_image, choose_tile_size

Size = tuple[int, int]


class _ImageModel(nn.Module):
    """Shared plumbing: loading, saving, pre/post-processing and batching by image size."""

    model_type: str = ""
    # Images of one size are run through the network this many at a time.
    max_batch: int = 16
    # Fast inference (bf16 autocast, channels-last, compile); None = plain fp32. See optimize_for_inference.
    inference: InferenceOptions | None = None
    # Where the weights came from (set by from_pretrained): the name as given (shipped models by their name),
    # the folder and weights file read, the Hub revision asked for.
    source: str = "in-memory"
    folder: Path | None = None
    weights_file: Path | None = None
    revision: str | None = None

    def __init__(self, model: nn.Module):
        super().__init__()
        if model.config.model_type != self.model_type:
            raise ConfigError(
                f"{type(self).__name__} needs a {self.model_type!r} model, got {model.config.model_type!r}"
            )
        self.model = model.eval()

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: AutoencoderConfig):
        return cls(build_model(config))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any):
        """Fresh (untrained) weights for a registered preset, e.g. ``"vq-f8"``; overrides replace config fields."""
        config = get_preset(name)
        if config.model_type != cls.model_type:
            raise ConfigError(f"preset {name!r} is a {config.model_type!r} model; {cls.__name__} needs {cls.model_type!r}")
        return cls.from_config(config.replace(**overrides) if overrides else config)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None = None,
        revision: str | None = None,
        subfolder: str | None = None,
        cache_dir: str | Path | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        """Load a model folder, a Hub repo id, or (no name) the bundled default model.

        Args:
            name_or_path: a folder with config.json + model.safetensors, a Hub repo id, or None.
            revision, subfolder, cache_dir, token, local_files_only: as in ``huggingface_hub``.
            device: where to put the model (default: the GPU when there is one, else the CPU;
                ``tokenizer.devices.default_device``).
            dtype: weights dtype (e.g. torch.bfloat16); the quantizer always stays fp32.
        """
        options = HubOptions(revision, subfolder, cache_dir, token, local_files_only)
        return cls._from_checkpoint(load_checkpoint(name_or_path, options, cls.model_type), name_or_path,
                                    device, dtype, revision)

    @classmethod
    def _from_checkpoint(cls, checkpoint, name_or_path, device, dtype, revision=None):
        wrapper = cls(build(checkpoint))
        shipped = resolve_shipped(name_or_path, cls.model_type)
        wrapper.source = shipped.name if shipped is not None else str(name_or_path)  # one naming: tokenizer/shipped.py
        wrapper.folder = Path(checkpoint.source).parent  # the folder the weights were read from
        wrapper.weights_file = Path(checkpoint.source)
        wrapper.revision = revision
        return wrapper.to(device=resolve_device(device), dtype=dtype)

    @property
    def identity(self) -> ModelIdentity:
        """Which weights these are: name (``imgtok-vq-f8`` for the shipped ones, else the path or repo id it was
        loaded from), version and sha256 of the weights. Files written with the model record it."""
        cached = self.__dict__.get("_identity")
        if cached is None:
            if self.weights_file is not None and self.weights_file.is_file():
                cached = identify(self.source, self.weights_file, self.model_type, self.revision)
            else:  # built in memory: the sha256 of the file save_pretrained would write
                from safetensors.torch import save as save_bytes

                state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
                digest = hashlib.sha256(save_bytes(state, metadata={"format": "pt"})).hexdigest()
                cached = ModelIdentity(self.source, None, digest)
            self.__dict__["_identity"] = cached
        return cached

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        quantizer = getattr(self.model, "quantizer", None)
        if quantizer is not None:
            quantizer.float()  # distances in fp32 whatever the weights' dtype
        return out

    def save_pretrained(
        self, folder: str | Path, dtype: torch.dtype | None = None, model_card: ModelCardInfo | str | bool = True
    ) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (weights optionally stored as ``dtype``) + ``README.md``.

        Args:
            folder: created if missing; existing files of the same names are replaced.
            dtype: storage dtype of the weights (the codebook stays fp32).
            model_card: True renders a card from the config; a ``ModelCardInfo`` adds names, datasets and
                metrics; a str is written as is; False writes no README.md.
        """
        folder = save_folder(self.model, folder, dtype=dtype)
        if model_card is not False:
            text = model_card if isinstance(model_card, str) else self.model_card(None if model_card is True else model_card)
            (folder / "README.md").write_text(text, encoding="utf-8")
        return folder

    def model_card(self, info: ModelCardInfo | None = None) -> str:
        """The model card (README.md text: Hub YAML metadata + description) for this model."""
        return render_model_card(self.config, info, num_parameters=sum(p.numel() for p in self.model.parameters()))

    def push_to_hub(
        self,
        repo_id: str,
        private: bool = False,
        commit_message: str | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        model_card: ModelCardInfo | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        """Create the Hub repo if needed and upload config.json, model.safetensors and a README.md card.

        Returns ``huggingface_hub.CommitInfo``: a str holding the commit URL, with ``.oid`` the commit sha
        (pass it as ``revision=`` to ``from_pretrained`` to pin these exact weights).

        Args:
            repo_id: "namespace/name".
            private: create the repo private.
            commit_message: the commit's summary (default "Upload imgtok model").
            revision: branch to push to (created from main if missing); default main.
            token: as in ``huggingface_hub`` (default: the saved login or ``HF_TOKEN``).
            model_card: a ``ModelCardInfo`` (e.g. with measured metrics) or a finished card; default: rendered
                from the config.
            dtype: storage dtype of the uploaded weights.
        """
        import dataclasses
        import tempfile

        from .hub import push_folder  # huggingface_hub is only imported when the Hub is used

        if not isinstance(model_card, str):
            info = model_card or ModelCardInfo()
            model_card = self.model_card(dataclasses.replace(info, repo_id=info.repo_id or repo_id))
        with tempfile.TemporaryDirectory(prefix="imgtok-push-") as tmp:
            folder = self.save_pretrained(tmp, dtype=dtype, model_card=model_card)
            return push_folder(
                folder, repo_id, private=private, commit_message=commit_message, revision=revision, token=token,
            )

    # --- properties -------------------------------------------------------------------------------
    @property
    def config(self) -> AutoencoderConfig:
        return self.model.config

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.decoder.conv_out.weight.dtype

    def grid_size(self, height: int, width: int) -> Size:
        f = self.downsample_factor
        return math.ceil(height / f), math.ceil(width / f)

    def optimize_for_inference(self, bf16: bool | None = None, channels_last: bool = True, compile: bool = False):
        """Switch ``encode``/``decode`` to the fast path (``tokenizer.fast``); returns ``self``.

        Args:
            bf16: bf16 autocast (the quantizer stays fp32); None: on where the device has bf16 units.
            channels_last: NHWC weights and inputs.
            compile: ``torch.compile`` the encoder and decoder (slow first call per input shape).
        A few ids may differ from the fp32 path (bf16 rounding in the encoder); call with
        ``bf16=False, channels_last=False`` to return to fp32 (compilation stays).
        """
        self.inference = configure_inference(self.model, self.device, bf16=bf16, channels_last=channels_last,
                                             compile=compile)
        return self

    def _inference_context(self):
        return autocast_context(self.inference, self.device)

    # --- pre/post-processing ----------------------------------------------------------------------
    def _to_model_input(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, f*h, f*w) in [-1, 1], edge-padded to a multiple of f."""
        f = self.downsample_factor
        height, width = images.shape[-2:]
        pad_h, pad_w = (-height) % f, (-width) % f
        x = images.to(self.device, self.dtype) * 2.0 - 1.0
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")  # (B, 3, H + pad_h, W + pad_w)
        if self.inference is not None and self.inference.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @staticmethod
    def _to_image(x: torch.Tensor, size: Size | None) -> torch.Tensor:
        """(B, 3, H', W') in about [-1, 1] -> float32 in [0, 1], cropped to ``size``."""
        if size is not None:
            x = x[..., : size[0], : size[1]]
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def tiled_encoder(self, tile_size: int) -> TiledEncoder:
        """The encoder run tile by tile (``tokenizer.tiling``), for the models' ``encoder=`` argument."""
        return TiledEncoder(self.model.encoder, tile_size)

    def tiled_decoder(self, tile_size: int) -> TiledDecoder:
        """The decoder run tile by tile with blended borders, for ``decode_latents``' ``decoder=``."""
        return TiledDecoder(self.model.decoder, self.downsample_factor, tile_size)

    def _encode_batch(self, images: torch.Tensor, fn: Callable[..., torch.Tensor], tile_size: int | None = None):
        """``fn(model_input, encoder)`` on (B, 3, H, W) same-size images (uint8 or float in [0, 1]).

        Whole when ``choose_tile_size`` says so (the model input as one tensor, ``encoder`` None); else one
        image at a time through a ``PixelSource`` read tile by tile and the tiled encoder.
        """
        tile = choose_tile_size(images.shape[-2], images.shape[-1], tile_size)
        with self._inference_context():
            if tile is None:
                return fn(self._to_model_input(as_float_image(images)), None)
            channels_last = self.inference is not None and self.inference.channels_last
            return torch.cat([
                fn(PixelSource(image[None], self.downsample_factor, self.device, self.dtype, channels_last),
                   self.tiled_encoder(tile))
                for image in images
            ])

    def _decode_batch(self, z: torch.Tensor, fn: Callable[..., torch.Tensor], size: Size | None,
                      tile_size: int | None, grid: Size) -> torch.Tensor:
        """``fn(z_chunk, decoder)`` over (B, ...) grids of ``grid`` (h, w) -> (B, 3, H, W) in [0, 1]; tiled if large."""
        f = self.downsample_factor
        tile = choose_tile_size(grid[0] * f, grid[1] * f, tile_size)
        with self._inference_context():
            if tile is not None:
                return torch.cat([self._to_image(fn(z[i : i + 1], self.tiled_decoder(tile)), size)
                                  for i in range(z.shape[0])])
            return torch.cat([self._to_image(fn(z[s : s + self.max_batch], None), size)
                              for s in range(0, z.shape[0], self.max_batch)])

    def _encode_images(self, image: Any, fn: Callable[..., torch.Tensor], tile_size: int | None = None):
        """Apply ``fn`` to images grouped by size, in batches, and shape the result by the input's form."""
        # 8-bit images stay uint8 until a batch (or a tile) is converted: a quarter of the memory.
        images, form = as_image_list(image, keep_uint8=True)
        results: list[torch.Tensor | None] = [None] * len(images)
        by_size: dict[Size, list[int]] = {}
        for i, img in enumerate(images):
            by_size.setdefault(tuple(img.shape[-2:]), []).append(i)
        for indices in by_size.values():
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start : start + self.max_batch]
                batch = torch.stack([images[i] for i in chunk])  # (b, 3, H, W)
                out = self._encode_batch(batch, fn, tile_size)
                for i, row in zip(chunk, out):
                    results[i] = row
        if form == "single":
            return results[0]
        if form == "batch":
            return torch.stack(results)
        return results

    @staticmethod
    def _split_sizes(size, count: int) -> list[Size | None]:
        if size is None or (len(size) == 2 and all(_is_int(s) for s in size)):
            return [size] * count
        if len(size) != count:
            raise ValueError(f"size: got {len(size)} sizes for {count} inputs")
        return list(size)

    def _checked_size(self, size: Any, grid: tuple[int, int]) -> Size | None:
        """``size`` as (H, W) ints within what a (h, w) grid decodes to (h*f, w*f), else a ValueError."""
        if size is None:
            return None
        full = (grid[0] * self.downsample_factor, grid[1] * self.downsample_factor)
        try:
            ok = len(size) == 2 and all(_is_int(s) for s in size)
        except TypeError:  # no len(): a number, None inside, ...
            ok = False
        if not ok:
            raise ValueError(f"decode: size {size!r}; expected (H, W), two integers")
        height, width = int(size[0]), int(size[1])
        if not (1 <= height <= full[0] and 1 <= width <= full[1]):
            raise ValueError(
                f"decode: size ({height}, {width}) does not fit the decoded image {full[0]} x {full[1]} "
                f"(grid {grid[0]} x {grid[1]} at f={self.downsample_factor}); expected 1 <= H <= {full[0]} "
                f"and 1 <= W <= {full[1]}"
            )
        return height, width

    @torch.no_grad()
    def reconstruct(self, image: Any, tile_size: int | None = None):
        """Encode and decode; the output has the input's size and form, float in [0, 1].

        A grayscale input (equal channels) comes back gray: the decoder may tint it (it only ever saw
        colour photos), and a gray picture with a colour cast is wrong however small the cast.

        Args:
            tile_size: as in ``encode`` (None: automatic above ``tiling.TILE_THRESHOLD_PIXELS``).
        """
        images, form = as_image_list(image, keep_uint8=True)
        t = {"tile_size": tile_size}
        if form == "batch":  # one size for all: encode and decode in batches
            outs = list(self.decode(self.encode(torch.stack(images), **t), size=tuple(images[0].shape[-2:]), **t))
        else:
            codes = self.encode(images, **t)  # grouped by size inside
            outs = [self.decode(code, size=tuple(img.shape[-2:]), **t) for code, img in zip(codes, images)]
        outs = [to_gray(out) if is_grayscale(img) else out for out, img in zip(outs, images)]
        if form == "batch":
            return torch.stack(outs)
        return outs[0] if form == "single" else outs


class ImageTokenizer(_ImageModel):
    """Images <-> grids of integer token ids from a fixed vocabulary.

    Example:
        >>> tok = ImageTokenizer.from_preset("vq-tiny")
        >>> ids = tok.encode(torch.rand(3, 32, 48))   # (4, 6) long
        >>> img = tok.decode(ids)                     # (3, 32, 48) float in [0, 1]
    """

    model_type = "vq"
    model: VQModel

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    @property
    def depth(self) -> int:
        """Ids per grid position: the residual depths of an RVQ tokenizer, else 1. Grids of a tokenizer with
        depth > 1 have a last axis of ``depth`` ids: (h, w, depth) for one image, (B, h, w, depth) for a batch."""
        return self.model.depth

    @property
    def bits_per_token(self) -> float:
        """log2(vocab_size): the bits of one id (one depth)."""
        return math.log2(self.vocab_size)

    @property
    def grid_ndim(self) -> int:
        """Dimensions of one image's ids: 2 for (h, w), 3 for (h, w, depth)."""
        return 2 if self.depth == 1 else 3

    @torch.no_grad()
    def encode(self, image: Any, tile_size: int | None = None) -> torch.Tensor | list[torch.Tensor]:
        """Image(s) -> long ids: (h, w) for one image, (B, h, w) for a batch, a list for a list
        ((h, w, depth) and (B, h, w, depth) when ``depth`` > 1).

        Args:
            image: path, PIL image, array or tensor (see ``tokenizer.image_io``), a 4-D batch, or a list.
            tile_size: None: automatic (images above ``tiling.TILE_THRESHOLD_PIXELS`` are encoded in tiles of
                ``tiling.DEFAULT_TILE_SIZE`` px, smaller ones whole, as always); 0: never tile; N: N-px tiles.
        """
        return self._encode_images(image, self.model.encode_ids, tile_size)

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor, tile_size: int | None = None) -> torch.Tensor:
        """Already-decoded pixels (B, 3, H, W) in [0, 1], one size, -> (B, h, w) long ids in one pass.

        What ``encode`` does for each batch, without its input handling (paths, lists, grouping by size),
        for callers with their own data pipeline (the batch tokenizer, benchmarks): same ids as ``encode``.
        """
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[1] != 3:
            got = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise ValueError(f"encode_pixels: expected a (B, 3, H, W) float tensor in [0, 1], got {got}")
        return self._encode_batch(pixels, self.model.encode_ids, tile_size)

    def _check_ids(self, ids: Any, what: str) -> torch.Tensor:
        if isinstance(ids, torch.Tensor) and ids.dtype in (torch.uint16, torch.uint32, torch.uint64):
            ids = ids.cpu().numpy()  # .long() would wrap 2**64 - 1 to -1: check the range in numpy first
        if isinstance(ids, np.ndarray):
            if ids.dtype.kind not in "iu":
                raise TypeError(f"{what}: ids have dtype {ids.dtype}; expected an integer dtype")
            if ids.ndim in (self.grid_ndim, self.grid_ndim + 1) and ids.size:
                high = int(ids.max())  # a Python int: exact for uint64
                if high >= self.vocab_size:
                    raise ValueError(f"{what}: id {high} is outside the vocabulary [0, {self.vocab_size})")
                ids = ids.astype(np.int64)
            ids = torch.from_numpy(ids)
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"{what}: expected a tensor or numpy array of integer ids, got {type(ids).__name__}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"{what}: ids have dtype {ids.dtype}; expected an integer dtype")
        grid = self.grid_ndim
        if ids.ndim not in (grid, grid + 1) or ids.numel() == 0 or (grid == 3 and ids.shape[-1] != self.depth):
            # empty: min()/max() below would fail
            single = "(h, w)" if grid == 2 else f"(h, w, {self.depth})"
            batch = "(B, h, w)" if grid == 2 else f"(B, h, w, {self.depth})"
            why = f" (this tokenizer has depth {self.depth}: one id per residual depth, last)" if grid == 3 else ""
            raise ValueError(f"{what}: ids of shape {tuple(ids.shape)}; expected {single} or {batch}{why}")
        ids = ids.long()
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"{what}: id {bad} is outside the vocabulary [0, {self.vocab_size})")
        return ids

    @torch.no_grad()
    def decode(self, ids: Any, size: Size | Sequence[Size] | None = None, tile_size: int | None = None):
        """Ids -> images in [0, 1]: (h, w) -> (3, H, W); (B, h, w) -> (B, 3, H, W); list -> list.
        With ``depth`` > 1: (h, w, depth) -> (3, H, W); (B, h, w, depth) -> (B, 3, H, W).

        Args:
            ids: integer ids in [0, vocab_size).
            size: (H, W) to crop to (e.g. the original size before padding); for a list, one per entry.
            tile_size: as in ``encode``, for the decoded size (grid x f); tiles are blended at their borders.
        """
        if isinstance(ids, (list, tuple)):
            sizes = self._split_sizes(size, len(ids))
            return [self.decode(item, s, tile_size) for item, s in zip(ids, sizes)]
        ids = self._check_ids(ids, "decode")
        single = ids.ndim == self.grid_ndim
        batch = (ids[None] if single else ids).to(self.device)  # (B, h, w) or (B, h, w, depth)
        size = self._checked_size(size, tuple(batch.shape[1:3]))
        out = self._decode_batch(batch, self.model.decode_ids, size, tile_size, tuple(batch.shape[1:3]))  # (B, 3, H, W)
        return out[0] if single else out

    def bits_per_pixel(self, height: int, width: int) -> float:
        """positions x depth x log2(vocab) / pixels, with the grid of an H x W image (every depth counts)."""
        h, w = self.grid_size(height, width)
        return bits_per_pixel(h * w * self.depth, self.vocab_size, height * width)


class _LatentModel(_ImageModel):
    """Images <-> continuous latents: (C, h, w) for one image, (B, C, h, w) for a batch, a list for a list.

    ``encode`` returns ``(z - shift) * scale`` and ``decode`` undoes it (scale 1, shift 0 for families whose
    config has no scaling).
    """

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def _scale_shift(self) -> tuple[float, float]:
        return getattr(self.config, "scaling_factor", 1.0), getattr(self.config, "shift_factor", 0.0)

    def _scaled(self, z: torch.Tensor) -> torch.Tensor:
        scale, shift = self._scale_shift
        return (z.float() - shift) * scale

    @torch.no_grad()
    def decode(self, latents: Any, size: Size | Sequence[Size] | None = None, tile_size: int | None = None):
        """Scaled latents -> images in [0, 1], mirroring ``encode``'s shapes.

        Args:
            size: as in ``ImageTokenizer.decode``.
            tile_size: as in ``ImageTokenizer.decode``.
        """
        if isinstance(latents, (list, tuple)):
            sizes = self._split_sizes(size, len(latents))
            return [self.decode(item, s, tile_size) for item, s in zip(latents, sizes)]
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            raise TypeError("decode: expected a float tensor of latents (C, h, w) or (B, C, h, w)")
        if latents.ndim not in (3, 4) or latents.shape[-3] != self.latent_channels:
            raise ValueError(
                f"decode: latents of shape {tuple(latents.shape)}; expected (C, h, w) or (B, C, h, w) "
                f"with C = {self.latent_channels}"
            )
        if latents.shape[-1] == 0 or latents.shape[-2] == 0 or latents.numel() == 0:
            raise ValueError(f"decode: latents of shape {tuple(latents.shape)} are empty; expected h, w >= 1")
        if not torch.isfinite(latents).all():  # a NaN spreads through every conv: an all-NaN image
            bad = int((~torch.isfinite(latents)).sum())
            raise ValueError(f"decode: latents contain {bad} NaN or infinite value(s); expected finite numbers")
        size = self._checked_size(size, tuple(latents.shape[-2:]))
        single = latents.ndim == 3
        z = latents[None] if single else latents  # (B, C, h, w)
        scale, shift = self._scale_shift
        z = z.to(self.device).float() / scale + shift
        out = self._decode_batch(z.to(self.dtype), self.model.decode_latents, size, tile_size,
                                 tuple(z.shape[-2:]))  # (B, 3, H, W)
        return out[0] if single else out


class ImageVAE(_LatentModel):
    """Images <-> continuous latents (diagonal-Gaussian VAE), scaled for diffusion models.

    Latents returned by ``encode`` are ``(mode - shift_factor) * scaling_factor``; ``decode`` undoes it.
    """

    model_type = "kl"
    model: KLModel

    @property
    def config(self) -> KLConfig:
        return self.model.config

    @torch.no_grad()
    def encode(self, image: Any, sample: bool = False, generator: torch.Generator | None = None,
               tile_size: int | None = None):
        """Image(s) -> scaled latents: (C, h, w) for one image, (B, C, h, w) for a batch, list for a list.

        Args:
            sample: draw from the posterior instead of taking its mode.
            generator: random generator for ``sample=True``.
            tile_size: as in ``ImageTokenizer.encode``.
        """
        def fn(x: Any, encoder: Runner | None) -> torch.Tensor:
            post = self.model.posterior(x, encoder)
            return self._scaled(post.sample(generator) if sample else post.mode())

        return self._encode_images(image, fn, tile_size)


class ImageAE(_LatentModel):
    """Images <-> continuous latents of a plain (deterministic) autoencoder, with ``ImageVAE``'s conventions.

    The family has no scaling: ``encode`` returns the bottleneck latents as they are.
    """

    model_type = "ae"
    model: AEModel

    @torch.no_grad()
    def encode(self, image: Any, tile_size: int | None = None):
        """Image(s) -> latents: (C, h, w) for one image, (B, C, h, w) for a batch, list for a list.

        Args:
            tile_size: as in ``ImageTokenizer.encode``.
        """
        return self._encode_images(image, lambda x, enc: self._scaled(self.model.encode_latents(x, enc)), tile_size)


API_CLASSES: dict[str, type[_ImageModel]] = {"vq": ImageTokenizer, "kl": ImageVAE, "ae": ImageAE}


def load_any(name_or_path: str | Path | None = None, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None, **hub_options: Any) -> ImageTokenizer | ImageVAE | ImageAE:
    """The API class of whichever family the folder/file/repo holds (default: the bundled tokenizer).

    Args:
        name_or_path, device, dtype: as in ``from_pretrained``.
        hub_options: revision, subfolder, cache_dir, token, local_files_only (``HubOptions``).
    """
    checkpoint = load_checkpoint(name_or_path, HubOptions(**hub_options), None if name_or_path else "vq")
    cls = API_CLASSES[checkpoint.config.model_type]
    return cls._from_checkpoint(checkpoint, name_or_path, device, dtype, hub_options.get("revision"))


def _is_int(value: Any) -> bool:
    """An integer of any kind (Python, numpy, 0-d tensor), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) or (
        isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point()
        and value.dtype != torch.bool)
