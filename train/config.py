"""Training configuration: one dataclass, saved as ``train_config.json`` beside each run.

``--set key=value`` overrides any field here, and ``--set model.<field>=value`` any field of the model
config (e.g. ``--set model.quantizer.codebook_size=16384``). Values are parsed as JSON when they parse, else kept as
strings, so ``--set l1_weight=0.5``, ``--set amp=bf16`` and ``--set model.channel_mult=[1,2,4]`` all work.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizer.config import AutoencoderConfig, ConfigError


@dataclass
class TrainConfig:
    preset: str = "vq-f8"
    data: list[str] = field(default_factory=list)  # folders, globs or text files listing image paths
    val_data: list[str] = field(default_factory=list)
    out: str = "runs/run"
    seed: int = 0
    # Start from an existing model (train/init_from.py): weights, weight EMA and codebook as the model has
    # them; optimizer state starts fresh. An empty preset then means "the model's own config".
    init_from: str = ""
    allow_pickle: bool = False  # let init_from read pickled checkpoints (taming / LDM / LlamaGen .ckpt, .pt)
    # "all", or "decoder": encoder, quant_conv and codebook frozen, so the ids of every dataset already
    # tokenized with the model stay valid while its reconstructions improve.
    train_part: str = "all"
    # With init_from: the model may have residual blocks the source lacks (e.g. --set
    # model.decoder_layers_per_block=3 over a 2-block decoder); they start as identities, so the run starts
    # exactly where the source was, with more capacity (train/init_from.py grown_state).
    grow: bool = False

    # --- optimisation ---
    steps: int = 100_000
    batch_size: int = 16  # per rank
    crop_size: int = 256
    lr: float = 1e-4  # AdamW; VQGAN/LlamaGen use 1e-4 at batch 128 without warmup-sensitivity
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 500
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # EMA copy of the weights, exported at the end (DiT/LlamaGen practice)
    ema_start: int = 0

    # --- data ---
    # Random rescale: the image's short side is resized to a value drawn between crop_size and
    # min(its own short side, max_short_side) before the random crop (scale augmentation).
    max_short_side: int = 1024
    hflip: bool = True
    cache_images: bool = True  # keep decoded uint8 images in RAM (small photo sets; saves decode time)
    # The cache's bound per rank, in MiB, shared by its loader workers; images are cached at most at
    # max_short_side resolution, and each rank reads only its 1/world share of the files.
    cache_mb: int = 2048
    # Loader processes that decode and crop (torchrun gives the training process one CPU thread, too few
    # to decode photos at GPU speed). -1: min(4, CPUs per rank - 1); 0: decode in the training process.
    num_workers: int = -1
    # Denoising-autoencoder corruption of the input (Vincent et al. 2008); the target stays clean.
    denoise_mask_ratio: float = 0.0  # share of 8x8 patches zeroed (set to mid-grey) in the input
    denoise_noise_std: float = 0.0  # Gaussian noise std added to the input, in [0, 1] units

    # --- losses ---
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    perceptual_weight: float = 0.0
    colour_weight: float = 0.0  # L1 on the mean colour of colour_patch x colour_patch patches (losses.patch_colour_loss)
    colour_patch: int = 8
    perceptual_net: str = "alex"  # "alex" or "vgg"; LPIPS if its weights load, else shift-tolerant LPIPS
    # Samples of each batch the perceptual loss sees (the batch's first k; its crops are drawn at random, so
    # this is an unbiased estimate of the whole batch's mean at k/B of the backbone's cost); 0 = all. On a CPU
    # the VGG backbone's forward and backward cost more than a small autoencoder's whole step.
    perceptual_batch: int = 0
    # Run the perceptual backbone under the step's autocast (amp) too, instead of fp32: 1.59x faster for VGG's
    # forward and backward on this project's bf16 CPU, the distance equal to 3 digits. Off when amp is "none".
    perceptual_amp: bool = False
    kl_weight: float = 1e-6  # per-element KL weight; equals LDM's kl_weight for its sum-normalised losses
    entropy_weight: float = 0.0  # codebook entropy regulariser (MaskGIT/MAGVIT-v2 style)
    entropy_temperature: float = 0.01
    gan_weight: float = 0.0
    gan_start: int = 0  # step from which the adversarial loss is on (VQGAN's disc_start)
    gan_loss: str = "hinge"  # "hinge" or "non_saturating"
    adaptive_weight_max: float = 1e4  # clamp of ||grad L_rec|| / ||grad L_gan|| (VQGAN eq. 7)
    disc_lr: float = 1e-4
    disc_channels: int = 64
    disc_layers: int = 3
    lecam_weight: float = 0.0  # LeCam regularisation (Tseng et al. 2021)
    lecam_decay: float = 0.999

    # --- engine ---
    amp: str = "auto"  # "auto" (bf16 on CUDA and on CPUs with bf16 support), "bf16", "none"
    channels_last: bool = False
    compile: bool = False
    device: str = "auto"
    threads: int = 0  # torch CPU threads (0 = torch default)
    # How long a collective waits for a missing rank before raising (a crashed rank then ends the job
    # with an error, not a hang). Checkpoint writing and evaluation on rank 0 must fit in it.
    dist_timeout_minutes: float = 15.0

    # --- bookkeeping ---
    log_every: int = 20
    ckpt_every: int = 500
    sample_every: int = 1000
    eval_every: int = 1000
    eval_images: int = 16
    max_minutes: float = 0.0  # stop (checkpoint + export) after this wall time; 0 = no limit

    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's model config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training config field(s) {unknown}")
        data = dict(data)
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def apply_overrides(self, items: list[str]) -> None:
        """Apply ``key=value`` strings; ``model.key=value`` goes to the model overrides."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        for item in items:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected key=value")
            key, raw = item.split("=", 1)
            value = _parse_value(raw)
            if key.startswith("model."):
                self.model[key[len("model."):]] = value
                continue
            if key not in fields or key == "model":
                raise ConfigError(f"--set {key}: unknown training config field; known: {sorted(fields)}")
            current = getattr(self, key)
            if isinstance(current, tuple):
                value = tuple(value)
            elif isinstance(current, list) and not isinstance(value, list):
                value = [value]
            elif isinstance(current, bool) and not isinstance(value, bool):
                raise ConfigError(f"--set {key}={raw}: expected true or false")
            elif isinstance(current, float) and isinstance(value, int):
                value = float(value)
            elif type(current) in (int, float, str) and not isinstance(value, type(current)):
                raise ConfigError(f"--set {key}={raw}: expected a {type(current).__name__}")
            setattr(self, key, value)

    def differences(self, other: "TrainConfig") -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ, as ``{field: (self's, other's)}`` (``out`` excluded: a run folder may move)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in mine if k != "out" and mine[k] != theirs[k]}

    def model_config(self, base: AutoencoderConfig | None = None) -> AutoencoderConfig:
        """The preset's config (or ``base``, the --init-from model's, when no preset was chosen) with the
        ``model.*`` overrides applied."""
        from tokenizer.presets import get_preset

        if self.preset:
            base = get_preset(self.preset)
        elif base is None:
            raise ConfigError("no model: pass --preset NAME or --init-from MODEL")
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in self.model.items()}
        known = {f.name for f in dataclasses.fields(base)}
        unknown = sorted(k for k in overrides if k.split(".")[0] not in known)  # "quantizer.<field>" too
        if unknown:
            raise ConfigError(f"unknown model config field(s) {unknown} for {self.preset or base.model_type!r} models")
        return base.replace(**overrides) if overrides else base


# What a resumed run may change: none of it alters the maths of the steps already taken (the model card's
# ``--set steps=2400 --resume`` extends a run; the intervals only change what is logged and kept).
RESUME_MAY_CHANGE = ("steps", "max_minutes", "log_every", "eval_every", "ckpt_every", "sample_every")


def saved_run_config(run_dir: str | Path) -> tuple[TrainConfig, Path] | None:
    """The configuration a run folder was trained with, and where it was read from.

    The newest checkpoint's copy first (the settings its steps were taken with), else the run's
    ``train_config.json`` (a run stopped before its first checkpoint); None for a folder with neither.
    """
    from .checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(Path(run_dir))
    if ckpt is not None and (ckpt / "state.json").is_file():
        state = json.loads((ckpt / "state.json").read_text())
        if "config" in state:
            return TrainConfig.from_dict(state["config"]), ckpt / "state.json"
    path = Path(run_dir) / "train_config.json"
    if path.is_file():
        return TrainConfig.load(path), path
    return None


def check_resume(saved: TrainConfig, requested: TrainConfig, source: str | Path) -> dict[str, tuple[Any, Any]]:
    """The allowed changes ``requested`` makes to a saved run's config; any other difference is a ConfigError.

    Args:
        saved: the run's configuration (``saved_run_config``).
        requested: the saved configuration with the flags given alongside ``--resume`` applied.
        source: where ``saved`` was read from, for the message.
    """
    changes = saved.differences(requested)
    refused = {k: v for k, v in changes.items() if k not in RESUME_MAY_CHANGE}
    if refused:
        listed = "; ".join(f"{k}: run {old!r}, given {new!r}" for k, (old, new) in refused.items())
        raise ConfigError(
            f"--resume: the flags given change the saved run configuration ({source}): {listed}. A resumed run "
            f"continues its configuration exactly; only {', '.join(RESUME_MAY_CHANGE)} may change. Drop those "
            "flags, or start a new run in another --out"
        )
    return changes


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def smoke(config: TrainConfig) -> TrainConfig:
    """Shrink everything so the whole pipeline runs in well under a minute on a CPU."""
    config.steps = min(config.steps, 12)
    config.batch_size = 2
    config.crop_size = 32
    config.warmup_steps = 2
    config.log_every = 2
    config.ckpt_every = 6
    config.sample_every = 6
    config.eval_every = 6
    config.eval_images = 2
    config.max_short_side = 64
    config.num_workers = 0
    if config.gan_weight > 0:
        config.gan_start = min(config.gan_start, 4)
        config.disc_channels = 8
        config.disc_layers = 2
    if config.init_from:  # the model is the one given; shrink only the run
        return config
    config.model = {
        "base_channels": 8, "channel_mult": [1, 2], "layers_per_block": 1, "norm_groups": 4,
        "attn_levels": [], **({"quantizer.codebook_size": 64} if config.preset.startswith("vq") else {}),
        **{k: v for k, v in config.model.items() if k not in ("base_channels", "channel_mult", "layers_per_block")},
    }
    return config
