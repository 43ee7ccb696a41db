"""Named model presets: the one registry that ``from_preset``, ``python -m train --preset`` and the tests read.

Each preset is a small factory returning a fresh config (DiT-style name -> constructor dict).
"""

from __future__ import annotations

import dataclasses

from typing import Callable

from .config import (AEConfig, AutoencoderConfig, BSQConfig, ConfigError, FSQConfig, KLConfig, LFQConfig,
                     ResidualVQConfig, VectorQuantizerConfig, VQConfig)


def vq_f8() -> VQConfig:
    # LDM f8 widths with LlamaGen's codebook recipe: 16384 codes of 8 l2-normalised dims
    # (LlamaGen, Sun et al. 2024, table 2: 8-dim codes keep usage near 100%).
    return VQConfig(
        base_channels=128, channel_mult=(1, 2, 2, 4), layers_per_block=2, z_channels=256,
        latent_channels=8, quantizer=VectorQuantizerConfig(codebook_size=16384, l2_normalize=True),
    )


def vq_f16() -> VQConfig:
    # LlamaGen's VQ-16 widths and levels. LlamaGen also puts attention after every ResNet block of the
    # lowest level (attn_levels=(4,), set by the LlamaGen converter); this preset keeps only the mid
    # block's, which is cheaper at high resolution.
    return VQConfig(
        base_channels=128, channel_mult=(1, 1, 2, 2, 4), layers_per_block=2, z_channels=256,
        latent_channels=8, quantizer=VectorQuantizerConfig(codebook_size=16384, l2_normalize=True),
    )


def vq_f4() -> VQConfig:
    return VQConfig(
        base_channels=128, channel_mult=(1, 2, 4), layers_per_block=2, z_channels=256,
        latent_channels=8, quantizer=VectorQuantizerConfig(codebook_size=8192, l2_normalize=True),
    )


def vq_f8_cpu() -> VQConfig:
    # The bundled default tokenizer: narrow enough to train on a 2-core CPU in about an hour,
    # no attention (quadratic in positions, and little gain at this width). See model_cards/.
    return VQConfig(
        base_channels=32, channel_mult=(1, 2, 2, 4), layers_per_block=1, z_channels=64,
        latent_channels=64, mid_attention=False, norm_groups=8,
        quantizer=VectorQuantizerConfig(code_dim=8, codebook_size=4096, l2_normalize=True, kmeans_init=True,
                                        dead_code_threshold=0.05),
    )


def vq_f8_cpu_s2c() -> VQConfig:
    # vq-f8-cpu's quantizer (12 bits, 0.1875 bpp) behind a space-to-channel stem (DC-AE, Chen et al. 2024):
    # a 2x pixel-unshuffle, then 64 channels at half resolution and channel_mult (1, 2, 2) inside, still
    # f8 overall. No convolution runs at full resolution, where CPU convolutions are memory-bound; in
    # issue 12's throwaway measurement it trained 1.6x faster than vq-f8-cpu and reached 21.1 dB where
    # vq-f8-cpu reached 18.0 dB after 15 minutes.
    return VQConfig(**_CPU_S2C, z_channels=64, latent_channels=64, quantizer=vq_f8_cpu().quantizer)


# --- the other quantizer families (FSQ, LFQ, BSQ, residual VQ) on the same trunks ------------------
_F8 = dict(base_channels=128, channel_mult=(1, 2, 2, 4), layers_per_block=2, z_channels=256)  # as vq-f8
_F16 = dict(base_channels=128, channel_mult=(1, 1, 2, 2, 4), layers_per_block=2, z_channels=256)  # as vq-f16
# The bundled CPU trunk (vq-f8-cpu) and its f16 version, for the quantizer comparison on a CPU.
_CPU = dict(base_channels=32, layers_per_block=1, z_channels=64, mid_attention=False, norm_groups=8)
# The CPU trunk with a space-to-channel stem (see vq_f8_cpu_s2c).
_CPU_S2C = dict(patch_size=2, base_channels=64, channel_mult=(1, 2, 2), layers_per_block=1, mid_attention=False,
                norm_groups=8)


def fsq_f8() -> VQConfig:
    # 8,8,8,8 levels: 4096 implicit codes, 12 bits per token (0.1875 bpp at f8), as vq-f8-cpu's rate.
    return VQConfig(**_F8, latent_channels=4, quantizer=FSQConfig(levels=(8, 8, 8, 8)))


def lfq_f16() -> VQConfig:
    # 18 sign bits per token (2^18 codes), the Open-MAGVIT2 rate: 0.0703 bpp at f16.
    return VQConfig(**_F16, latent_channels=18, quantizer=LFQConfig())


def bsq_f16() -> VQConfig:
    # 18 bits on the unit sphere (Zhao et al. 2024 use 18 for their image tokenizer).
    return VQConfig(**_F16, latent_channels=18, quantizer=BSQConfig())


def _rvq_codebook() -> VectorQuantizerConfig:
    # SoundStream's recipe per depth: Euclidean codes (residuals shrink, so no l2 normalisation), EMA
    # updates, k-means initialisation and dead-code restarts.
    return VectorQuantizerConfig(codebook_size=4096, l2_normalize=False, use_ema=True, kmeans_init=True,
                                 dead_code_threshold=0.05)


def rvq_f16() -> VQConfig:
    # 4 depths of 4096 codes: 48 bits per position, 0.1875 bpp at f16 (the rate of vq-f8-cpu at f8).
    return VQConfig(**_F16, latent_channels=16, quantizer=ResidualVQConfig(num_depths=4, codebook=_rvq_codebook()))


def fsq_f8_cpu() -> VQConfig:
    return VQConfig(**_CPU, channel_mult=(1, 2, 2, 4), latent_channels=4, quantizer=FSQConfig(levels=(8, 8, 8, 8)))


def lfq_f8_cpu() -> VQConfig:
    # 12 bits at f8 (0.1875 bpp) for the CPU comparison with vq-f8-cpu; one entropy group covers all bits.
    return VQConfig(**_CPU, channel_mult=(1, 2, 2, 4), latent_channels=12, quantizer=LFQConfig(entropy_group_bits=12))


def rvq_f16_cpu() -> VQConfig:
    return VQConfig(**_CPU, channel_mult=(1, 2, 2, 4, 4), latent_channels=16,
                    quantizer=ResidualVQConfig(num_depths=4, codebook=_rvq_codebook()))


def kl_f8() -> KLConfig:
    # The Stable Diffusion VAE layout (LDM, Rombach et al. 2022): 4 latent channels at f8.
    return KLConfig(
        base_channels=128, channel_mult=(1, 2, 4, 4), layers_per_block=2, z_channels=4,
        latent_channels=4, scaling_factor=0.18215,
    )


def kl_f8_c16() -> KLConfig:
    # 16 latent channels as in the newer VAEs (SD3, FLUX): more bits, far better reconstructions.
    return KLConfig(
        base_channels=128, channel_mult=(1, 2, 4, 4), layers_per_block=2, z_channels=16,
        latent_channels=16,
    )


def kl_f8_cpu() -> KLConfig:
    # The bundled default VAE: same trunk as vq-f8-cpu, 4 latent channels.
    return KLConfig(
        base_channels=32, channel_mult=(1, 2, 2, 4), layers_per_block=1, z_channels=4,
        latent_channels=4, mid_attention=False, norm_groups=8,
    )


def kl_f8_cpu_s2c() -> KLConfig:
    # kl-f8-cpu's bottleneck (4 latent channels at f8) on the space-to-channel trunk of vq-f8-cpu-s2c, with
    # DC-AE's resample shortcuts (Chen et al. 2024, sec. 3.1). Issue 12's equal-minutes comparison (one CPU
    # thread, L1 + L2, batch 8 of 128 px crops, 5 held-out photos at full resolution): from scratch it reached
    # 21.3 dB after 8 CPU-minutes where kl-f8-cpu from scratch reached 17.9.
    return KLConfig(**_CPU_S2C, z_channels=4, latent_channels=4, resample_shortcut=True)


def kl_f8_cpu_pca() -> KLConfig:
    # kl-f8-cpu with the linear patch shortcut (``tokenizer.patch_shortcut``): training starts at the whitened
    # 8 x 8 patch PCA of its first batch and the trunk learns the residual. Four principal components of 8 x 8
    # patches alone reconstruct the 5 held-out photos at 25.37 dB where the bundled VAE v2 (kl-f8-cpu, 133
    # CPU-minutes) scored 24.04, and Kodak-24 at 23.61 against 23.63.
    return dataclasses.replace(kl_f8_cpu(), linear_shortcut=True)


def ae_f8() -> AEConfig:
    return AEConfig(
        base_channels=128, channel_mult=(1, 2, 4, 4), layers_per_block=2, z_channels=4, latent_channels=4
    )


# Tiny presets: a few thousand parameters, for tests and smoke runs.
_TINY = dict(base_channels=8, channel_mult=(1, 2), layers_per_block=1, norm_groups=4, z_channels=4,
             latent_channels=4)


def vq_tiny() -> VQConfig:
    return VQConfig(**_TINY, quantizer=VectorQuantizerConfig(codebook_size=64, l2_normalize=True))


def fsq_tiny() -> VQConfig:
    return VQConfig(**{**_TINY, "latent_channels": 3}, quantizer=FSQConfig(levels=(5, 4, 3)))


def lfq_tiny() -> VQConfig:
    return VQConfig(**{**_TINY, "latent_channels": 6}, quantizer=LFQConfig(entropy_group_bits=3))


def bsq_tiny() -> VQConfig:
    return VQConfig(**{**_TINY, "latent_channels": 6}, quantizer=BSQConfig(entropy_group_bits=3))


def rvq_tiny() -> VQConfig:
    return VQConfig(**_TINY, quantizer=ResidualVQConfig(
        num_depths=3, codebook=VectorQuantizerConfig(codebook_size=32, l2_normalize=False)))


def vq_tiny_s2c() -> VQConfig:
    # vq-tiny behind a 2x space-to-channel stem: f4, for the tests of the stem (tiling, odd sizes, smoke).
    return VQConfig(**_TINY, patch_size=2, quantizer=VectorQuantizerConfig(codebook_size=64, l2_normalize=True))


def kl_tiny() -> KLConfig:
    return KLConfig(**_TINY)


def ae_tiny() -> AEConfig:
    return AEConfig(**_TINY)


PRESETS: dict[str, Callable[[], AutoencoderConfig]] = {
    "vq-f4": vq_f4,
    "vq-f8": vq_f8,
    "vq-f16": vq_f16,
    "vq-f8-cpu": vq_f8_cpu,
    "vq-f8-cpu-s2c": vq_f8_cpu_s2c,
    "vq-tiny": vq_tiny,
    "vq-tiny-s2c": vq_tiny_s2c,
    "fsq-f8": fsq_f8,
    "fsq-f8-cpu": fsq_f8_cpu,
    "fsq-tiny": fsq_tiny,
    "lfq-f16": lfq_f16,
    "lfq-f8-cpu": lfq_f8_cpu,
    "lfq-tiny": lfq_tiny,
    "bsq-f16": bsq_f16,
    "bsq-tiny": bsq_tiny,
    "rvq-f16": rvq_f16,
    "rvq-f16-cpu": rvq_f16_cpu,
    "rvq-tiny": rvq_tiny,
    "kl-f8": kl_f8,
    "kl-f8-c16": kl_f8_c16,
    "kl-f8-cpu": kl_f8_cpu,
    "kl-f8-cpu-s2c": kl_f8_cpu_s2c,
    "kl-f8-cpu-pca": kl_f8_cpu_pca,
    "kl-tiny": kl_tiny,
    "ae-f8": ae_f8,
    "ae-tiny": ae_tiny,
}


def get_preset(name: str) -> AutoencoderConfig:
    """A fresh config for a registered preset name."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
    config = factory()
    config.validate()
    return config
