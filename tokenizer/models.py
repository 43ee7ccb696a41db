"""The three model families on tensors in [-1, 1]: VQ tokenizer, KL VAE, plain autoencoder.

These are the ``nn.Module``s that train and that checkpoints hold. ``tokenizer.api`` wraps them with the
image-in / ids-out interface users call.

Axis letters: B batch, H/W image size, h/w latent grid (H/f, W/f), D latent channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .blocks import Decoder, Encoder
from .config import AEConfig, AutoencoderConfig, KLConfig, VQConfig
from .patch_shortcut import LinearPatchShortcut
from .quantizer import QuantizerOutput
from .quantizers import build_quantizer

# The modules that decide a model's ids (tokenizer) or latents (VAE). Training only the rest (decoder-only
# fine-tuning, ``python -m train --decoder-only``) keeps every id the model gives, so the ids of a dataset
# tokenized before still decode, now with the new decoder.
ENCODER_SIDE = ("encoder", "quant_conv", "quantizer", "shortcut.encode_proj")

# Runs an encoder or decoder on its input: the module itself, or a tiled runner (``tokenizer.tiling``).
Runner = Callable[[Any], torch.Tensor]


class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))) (Kingma & Welling 2014)."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.mean = mean  # (B, D, h, w)
        self.logvar = logvar  # (B, D, h, w)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # Reparameterisation trick (Kingma & Welling 2014, sec. 2.4): z = mu + sigma * eps keeps z
        # differentiable in mu and sigma.
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, summed over latent dims (Kingma & Welling 2014, appendix B)."""
        mean, logvar = self.mean.float(), self.logvar.float()
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3))  # (B,)


@dataclass
class VQModelOutput:
    reconstruction: torch.Tensor  # (B, 3, H, W) in [-1, 1] (unclamped)
    quantizer: QuantizerOutput


@dataclass
class KLModelOutput:
    reconstruction: torch.Tensor  # (B, 3, H, W)
    posterior: DiagonalGaussian
    kl: torch.Tensor  # (B,)


@dataclass
class AEModelOutput:
    reconstruction: torch.Tensor  # (B, 3, H, W)
    latents: torch.Tensor  # (B, D, h, w)


class _Autoencoder(nn.Module):
    """Encoder and decoder around a bottleneck of ``bottleneck_channels``."""

    config: AutoencoderConfig

    def __init__(self, config: AutoencoderConfig, encoder_channels: int, bottleneck_channels: int):
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = Encoder(config, encoder_channels)
        self.decoder = Decoder(config, config.decoder_in_channels)
        self.quant_conv = (
            nn.Conv2d(encoder_channels, bottleneck_channels, 1) if config.use_quant_conv else nn.Identity()
        )
        self.post_quant_conv = (
            nn.Conv2d(config.latent_channels, config.decoder_in_channels, 1)
            if config.has_post_quant_conv
            else nn.Identity()
        )

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def decode_latents(self, z: torch.Tensor, decoder: Runner | None = None) -> torch.Tensor:
        """(B, D, h, w) bottleneck latents -> (B, 3, h*f, w*f) image in about [-1, 1].

        ``decoder`` replaces ``self.decoder`` (``tokenizer.tiling`` passes one that runs it tile by tile).
        """
        return (decoder or self.decoder)(self.post_quant_conv(z))


class VQModel(_Autoencoder):
    """Encoder -> quantizer (VQ, FSQ, LFQ, BSQ or residual VQ, by ``config.quantizer``) -> decoder
    (VQ-VAE; VQGAN's generator)."""

    def __init__(self, config: VQConfig):
        super().__init__(config, config.z_channels, config.latent_channels)
        self.quantizer = build_quantizer(config.quantizer, config.latent_channels)

    @property
    def vocab_size(self) -> int:
        """Ids one token can take (one depth's codebook for residual VQ)."""
        return self.quantizer.vocab_size

    @property
    def depth(self) -> int:
        """Ids per grid position (residual VQ depths; else 1)."""
        return self.quantizer.depth

    def encode_latents(self, x: Any, encoder: Runner | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, D, h, w) continuous latents before quantization.

        ``encoder`` replaces ``self.encoder`` (``tokenizer.tiling`` passes one that reads x tile by tile).
        """
        return self.quant_conv((encoder or self.encoder)(x))

    def encode_ids(self, x: Any, encoder: Runner | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, h, w) long ids ((B, h, w, depth) for residual VQ)."""
        return self.quantizer.lookup(self.encode_latents(x, encoder))

    def decode_ids(self, ids: torch.Tensor, decoder: Runner | None = None) -> torch.Tensor:
        """(B, h, w) ids ((B, h, w, depth) for residual VQ) -> (B, 3, H, W)."""
        z = self.quantizer.latents_from_ids(ids)  # (B, D, h, w)
        param = self.post_quant_conv.weight if self.config.has_post_quant_conv else self.decoder.conv_in.weight
        return self.decode_latents(z.to(param.dtype), decoder)

    def forward(self, x: torch.Tensor) -> VQModelOutput:
        q = self.quantizer(self.encode_latents(x))
        return VQModelOutput(self.decode_latents(q.quantized.to(x.dtype)), q)


# Log-variance bias of the posterior when training starts at the linear shortcut (see ``KLModel``).
SHORTCUT_INITIAL_LOGVAR = -10.0


class KLModel(_Autoencoder):
    """Encoder -> diagonal Gaussian posterior -> decoder (the LDM ``AutoencoderKL``)."""

    def __init__(self, config: KLConfig):
        # The encoder emits mean and log-variance stacked on channels ("double_z").
        super().__init__(config, 2 * config.z_channels, 2 * config.latent_channels)
        self.shortcut: LinearPatchShortcut | None = None
        if config.linear_shortcut:
            self.shortcut = LinearPatchShortcut(config.downsample_factor, config.in_channels, config.latent_channels)
            self._start_at_the_shortcut()
        self._shortcut_seen = False  # ``shortcut.initialized`` read once (a host sync), as the quantizer does
        self.register_load_state_dict_post_hook(lambda module, _keys: setattr(module, "_shortcut_seen", False))

    @torch.no_grad()
    def _start_at_the_shortcut(self) -> None:
        """Zero the trunk's contributions to the latent mean and to the image, so that the untrained model is
        the shortcut alone (the linear autoencoder once it is fitted) and the trunk learns the residual, as
        zero-initialised last layers do in residual networks (Goyal et al. 2017; ControlNet's zero convs)."""
        d = self.config.latent_channels
        last = self.quant_conv if isinstance(self.quant_conv, nn.Conv2d) else self.encoder.conv_out
        last.weight[:d].zero_()  # rows [0, d) are the mean, [d, 2d) the log-variance
        last.bias[:d].zero_()
        # A small posterior variance from the start: sigma = exp(-5) against unit-variance (whitened) latents.
        last.bias[d:].fill_(SHORTCUT_INITIAL_LOGVAR)
        nn.init.zeros_(self.decoder.conv_out.weight)
        nn.init.zeros_(self.decoder.conv_out.bias)

    def posterior(self, x: Any, encoder: Runner | None = None) -> DiagonalGaussian:
        moments = self.quant_conv((encoder or self.encoder)(x))  # (B, 2D, h, w)
        mean, logvar = moments.chunk(2, dim=1)  # (B, D, h, w) each
        if self.shortcut is not None:
            if self.training and not self._shortcut_seen:
                if not bool(self.shortcut.initialized):
                    self.shortcut.fit_pca(x)
                self._shortcut_seen = True
            pixels = self.shortcut.encode(x) if isinstance(x, torch.Tensor) else self.shortcut.encode_source(x)
            mean = mean + pixels.to(mean.dtype)
        low, high = self.config.logvar_clamp
        return DiagonalGaussian(mean, logvar.clamp(low, high))

    def decode_latents(self, z: torch.Tensor, decoder: Runner | None = None) -> torch.Tensor:
        image = super().decode_latents(z, decoder)  # (B, 3, H, W)
        if self.shortcut is not None:
            image = image + self.shortcut.decode(z.to(self.shortcut.decode_proj.weight.dtype)).to(image.dtype)
        return image

    def forward(self, x: torch.Tensor, sample: bool = True) -> KLModelOutput:
        post = self.posterior(x)
        z = post.sample() if sample else post.mode()
        return KLModelOutput(self.decode_latents(z), post, post.kl())


class AEModel(_Autoencoder):
    """Deterministic autoencoder from the same blocks, no bottleneck regulariser."""

    def __init__(self, config: AEConfig):
        super().__init__(config, config.z_channels, config.latent_channels)

    def encode_latents(self, x: Any, encoder: Runner | None = None) -> torch.Tensor:
        return self.quant_conv((encoder or self.encoder)(x))

    def forward(self, x: torch.Tensor) -> AEModelOutput:
        z = self.encode_latents(x)
        return AEModelOutput(self.decode_latents(z), z)


MODEL_CLASSES: dict[str, type[_Autoencoder]] = {"vq": VQModel, "kl": KLModel, "ae": AEModel}


def build_model(config: AutoencoderConfig) -> _Autoencoder:
    """The module for a config of any family."""
    return MODEL_CLASSES[config.model_type](config)
