"""Typed configs of the quantizers, nested under ``"quantizer"`` in a tokenizer's ``config.json``.

Each has a ``kind`` key that picks its class on load: ``VectorQuantizerConfig`` ("vq"), ``FSQConfig`` ("fsq"),
``LFQConfig`` ("lfq"), ``BSQConfig`` ("bsq"), ``ResidualVQConfig`` ("rvq"). ``dim`` (the latent channels a
quantizer works on) belongs to the tokenizer config, so every method that needs it takes it as an argument.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from .config_fields import INT_LIMIT, ConfigError, field_problems


def _to_json(value: Any) -> Any:
    if isinstance(value, QuantizerConfig):
        return value.to_dict()
    return list(value) if isinstance(value, tuple) else value



@dataclass
class QuantizerConfig:
    """Base of the quantizer configs. ``dim`` (the latent channels it quantizes) comes from the tokenizer."""

    kind: ClassVar[str] = "base"

    def vocab_size(self, dim: int) -> int:
        """Ids one token can take (one depth's codebook for residual VQ)."""
        raise NotImplementedError

    @property
    def depth(self) -> int:
        """Ids per grid position (residual depths); 1 for every single-stage quantizer."""
        return 1

    def validate(self, dim: int) -> None:
        """Raise a ConfigError naming the first field whose type or range is wrong (``dim``: latent channels)."""
        problems = field_problems(self)
        if problems:
            raise ConfigError(f"quantizer ({self.kind}): " + "; ".join(problems))

    def parameter_estimate(self, dim: int) -> int:
        """Parameters and codebook entries of the quantizer module, without building it."""
        return 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            out[f.name] = _to_json(getattr(self, f.name))
        return out

    @staticmethod
    def from_dict(data: Any, source: str = "quantizer") -> "QuantizerConfig":
        if isinstance(data, QuantizerConfig):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected an object with a 'kind' key, got {data!r}")
        data = dict(data)
        kind = data.pop("kind", None)
        target = QUANTIZER_CLASSES.get(kind)
        if target is None:
            raise ConfigError(f"{source}: quantizer kind {kind!r}; expected one of {sorted(QUANTIZER_CLASSES)}")
        known = {f.name for f in dataclasses.fields(target)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown} for {target.__name__}")
        return target(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def replace(self, **changes: Any) -> "QuantizerConfig":
        return dataclasses.replace(self, **changes)


@dataclass
class VectorQuantizerConfig(QuantizerConfig):
    """Nearest-code lookup in a learned codebook (VQ-VAE, van den Oord et al. 2017)."""

    kind: ClassVar[str] = "vq"

    codebook_size: int = 16384
    # Factorised codes (ViT-VQGAN, Yu et al. 2021, sec. 3.2): look codes up in a low-dimensional space
    # through in/out projections. None = codes live in the latent's dimensions.
    code_dim: int | None = None
    l2_normalize: bool = True  # cosine-similarity lookup on the unit sphere (ViT-VQGAN / LlamaGen).
    commitment_beta: float = 0.25  # VQ-VAE eq. 3; 0.25 as in the paper.
    codebook_loss_weight: float = 1.0
    use_ema: bool = False  # EMA codebook updates (VQ-VAE appendix A.1) instead of the codebook loss.
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    # Dead-code restart (Jukebox, Dhariwal et al. 2020; Zeghidour et al. 2021): a code whose EMA usage
    # falls under this many assignments per step is re-seeded from an encoder output. 0 disables it.
    dead_code_threshold: float = 0.0
    usage_decay: float = 0.99  # decay of the per-code usage statistic the restart reads.
    kmeans_init: bool = False  # initialise the codebook by k-means on the first training batch.
    kmeans_iters: int = 10
    # Rotation trick (Fifty et al. 2024): the encoder's gradient passes through the rotation and scaling
    # that take the latent onto its code, instead of the straight-through copy. Same forward values.
    rotation_trick: bool = False

    field_ranges: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "codebook_size": (2, INT_LIMIT),  # the size estimate refuses a codebook that cannot be allocated
        "code_dim": (1, 65536),
        "commitment_beta": (0.0, None),
        "codebook_loss_weight": (0.0, None),
        "ema_decay": (0.0, 1.0),
        "ema_epsilon": (1e-12, 1.0),
        "dead_code_threshold": (0.0, None),
        "usage_decay": (0.0, 1.0),
        "kmeans_iters": (0, 10000),
    }

    def vocab_size(self, dim: int) -> int:
        return self.codebook_size

    def parameter_estimate(self, dim: int) -> int:
        code_dim = self.code_dim or dim
        codebook = 0 if self.use_ema else self.codebook_size * code_dim  # an EMA codebook is a buffer
        projections = 2 * dim * code_dim + dim + code_dim if code_dim != dim else 0
        return codebook + projections


@dataclass
class FSQConfig(QuantizerConfig):
    """Finite scalar quantization (Mentzer et al. 2023): each channel rounded to one of a few levels.

    The latent has one channel per entry of ``levels``; an id packs the channels' digits in mixed radix with
    channel 0 the least significant digit (as the paper's code and vector-quantize-pytorch).
    """

    kind: ClassVar[str] = "fsq"

    # 8,8,8,8 = 4096 codes, 12 bits (Mentzer et al. 2023, table 1 lists 8,5,5,5 for 1000 codes).
    levels: tuple[int, ...] = (8, 8, 8, 8)

    def vocab_size(self, dim: int) -> int:
        return math.prod(self.levels)

    field_ranges: ClassVar[dict[str, tuple[float | None, float | None]]] = {"levels": (2, 65536)}

    def validate(self, dim: int) -> None:
        super().validate(dim)
        if len(self.levels) == 0:
            raise ConfigError("FSQ levels is empty; expected one level count per latent channel")
        if math.prod(self.levels) > 2**62:
            raise ConfigError(f"FSQ levels {list(self.levels)} give more than 2^62 codes; ids would overflow")
        if dim != len(self.levels):
            raise ConfigError(f"FSQ levels {list(self.levels)} need latent_channels = {len(self.levels)}, got {dim}")


@dataclass
class LFQConfig(QuantizerConfig):
    """Lookup-free quantization (MAGVIT-v2, Yu et al. 2024): each channel's sign is one bit of the id.

    Id bit order: channel 0 is the most significant bit (as MAGVIT-v2's Open-MAGVIT2 code and
    vector-quantize-pytorch), a channel > 0 is a 1 bit.
    """

    kind: ClassVar[str] = "lfq"

    commitment_beta: float = 0.25  # ||z - sg(q)||^2 weight (Open-MAGVIT2 uses 0.25).
    # Entropy penalty (MAGVIT-v2 eq. 5): weight * (E[H(p(q|z))] - diversity_gamma * H(E[p(q|z)])).
    entropy_weight: float = 0.1
    diversity_gamma: float = 1.0
    entropy_temperature: float = 0.01  # p(q|z) ~ exp(-||z - q||^2 / T); 0.01 = vector-quantize-pytorch's 1/100.
    # H(E[p]) over 2^bits codes is estimated as the sum of the entropies of groups of this many bits
    # (Open-MAGVIT2's factorisation): (N, 2^group) memory instead of (N, 2^bits). 9 splits 18 bits in 2 x 9.
    entropy_group_bits: int = 9

    def vocab_size(self, dim: int) -> int:
        return 2**dim

    field_ranges: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "commitment_beta": (0.0, None),
        "entropy_weight": (0.0, None),
        "diversity_gamma": (0.0, None),
        "entropy_temperature": (1e-6, None),
        "entropy_group_bits": (1, 16),  # (N, 2^16) is the largest matrix the estimate forms
    }

    def validate(self, dim: int) -> None:
        super().validate(dim)
        if not 1 <= dim <= 62:
            raise ConfigError(f"{self.kind.upper()} quantizes one bit per channel: latent_channels must be 1..62 "
                              f"(ids are int64), got {dim}")


@dataclass
class BSQConfig(LFQConfig):
    """Binary spherical quantization (Zhao et al. 2024): LFQ on the l2-normalised latent, codes +-1/sqrt(d).

    Same id bit order as LFQ.
    """

    kind: ClassVar[str] = "bsq"


@dataclass
class ResidualVQConfig(QuantizerConfig):
    """Residual VQ (SoundStream, Zeghidour et al. 2021; RQ-VAE, Lee et al. 2022): ``depth`` codebooks,
    each quantizing what the previous ones left. Ids are (h, w, depth); ``vocab_size`` is one depth's.
    """

    kind: ClassVar[str] = "rvq"

    num_depths: int = 4
    shared_codebook: bool = False  # one codebook for every depth (RQ-VAE) or one per depth (SoundStream).
    # SoundStream sec. 3.3: train on a random number of depths 1..num_depths per step, so that the
    # decoder also works from the first few depths (a coarser rate from the same model).
    quantizer_dropout: bool = False
    # The codebook of each depth. Residuals shrink with depth, so no l2 normalisation (a unit-norm code
    # cannot match a small residual).
    codebook: VectorQuantizerConfig = dataclasses.field(
        default_factory=lambda: VectorQuantizerConfig(l2_normalize=False)
    )

    def __post_init__(self) -> None:
        if isinstance(self.codebook, dict):
            self.codebook = QuantizerConfig.from_dict({"kind": "vq", **self.codebook}, "quantizer.codebook")

    @property
    def depth(self) -> int:
        return self.num_depths

    def vocab_size(self, dim: int) -> int:
        return self.codebook.codebook_size

    field_ranges: ClassVar[dict[str, tuple[float | None, float | None]]] = {"num_depths": (1, 64)}

    def parameter_estimate(self, dim: int) -> int:
        return (1 if self.shared_codebook else self.num_depths) * self.codebook.parameter_estimate(dim)

    def validate(self, dim: int) -> None:
        super().validate(dim)
        if not isinstance(self.codebook, VectorQuantizerConfig):
            raise ConfigError(f"rvq codebook must be a vector quantizer config, got {self.codebook!r}")
        self.codebook.validate(dim)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["codebook"].pop("kind")
        return out


QUANTIZER_CLASSES: dict[str, type[QuantizerConfig]] = {
    cls.kind: cls for cls in (VectorQuantizerConfig, FSQConfig, LFQConfig, BSQConfig, ResidualVQConfig)
}
