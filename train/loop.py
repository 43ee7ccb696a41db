"""The training loop, top to bottom: setup, data, step, bookkeeping, export.

Single process, or DDP under ``torchrun`` (detected from ``RANK``; NCCL on CUDA, gloo on CPU). Seeds differ
per rank; logging, samples and checkpoints come from rank 0 only; the quantizer all-reduces its codebook
statistics itself, so every rank keeps an identical codebook.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from tokenizer.image_io import save_image
from tokenizer.metrics import psnr
from tokenizer.models import KLModel, VQModel, build_model
from tokenizer.pretrained import save_folder

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .init_from import apply_train_part, load_init_weights, read_init_source
from .data import (CORRUPTION_STREAM, RandomCrops, StepSampler, corrupt, list_images, load_eval_images,
                   step_generator)
from .discriminator import PatchDiscriminator
from .losses import (
    LeCam,
    PerceptualLoss,
    adaptive_gan_weight,
    codebook_entropy_loss,
    discriminator_loss,
    generator_loss,
    reconstruction_loss,
)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_pref: str) -> tuple[Dist, torch.device]:
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        info = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    else:
        info = Dist()
    if device_pref == "auto":
        device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_pref)
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{info.local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp != "auto":
        raise ValueError(f"amp={amp!r}: expected 'auto', 'bf16' or 'none'")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    # On CPUs with native bf16 (AVX512-BF16 / AMX) convolutions run about twice as fast under autocast.
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup then cosine decay to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """EMA of the weights; the codebook is copied, not averaged (restarted codes would blur)."""
    ema_state = ema.state_dict()
    for name, value in model.state_dict().items():
        target = ema_state[name]
        if value.is_floating_point() and not name.startswith("quantizer."):
            target.lerp_(value.to(target.dtype), 1.0 - decay)
        else:
            target.copy_(value)


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg = cfg
        self.dist, self.device = setup_distributed(cfg.device)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.run_dir = Path(cfg.out)
        # Every rank builds the same initial model (parameters *and* buffers such as the EMA codebook
        # statistics, which DDP does not broadcast with broadcast_buffers=False); only then do the
        # ranks' random streams diverge, one seed per rank as in DiT.
        torch.manual_seed(cfg.seed)
        self.init_source = read_init_source(cfg.init_from, cfg.allow_pickle) if cfg.init_from else None
        self.model_config = cfg.model_config(self.init_source.config if self.init_source else None)
        self.model = build_model(self.model_config).to(self.device)
        torch.manual_seed(cfg.seed + self.dist.rank)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        apply_train_part(self.model, cfg.train_part)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(trainable, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.modules: dict[str, torch.nn.Module] = {"model": self.model, "ema": self.ema}
        self.optimizers: dict[str, torch.optim.Optimizer] = {"opt": self.opt}
        self.disc = None
        self.lecam = None
        if cfg.gan_weight > 0:
            self.disc = PatchDiscriminator(cfg.disc_channels, cfg.disc_layers).to(self.device)
            self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.9))
            self.modules["disc"] = self.disc
            self.optimizers["opt_d"] = self.opt_d
            if cfg.lecam_weight > 0:
                self.lecam = LeCam(cfg.lecam_decay).to(self.device)
                self.modules["lecam"] = self.lecam
        self.perceptual = PerceptualLoss(cfg.perceptual_net).to(self.device) if cfg.perceptual_weight > 0 else None
        self.amp_dtype = autocast_dtype(cfg.amp, self.device)

        self.start_step = 0
        ckpt = latest_checkpoint(self.run_dir) if resume else None
        if ckpt is not None:
            state = load_checkpoint(ckpt, self.modules, self.optimizers)
            self.start_step = state["step"]
            self.log(f"resumed from {ckpt} at step {self.start_step}")
        else:
            if resume:
                self.log(f"--resume: no checkpoint in {self.run_dir}, starting fresh")
            if self.init_source is not None:
                loaded = load_init_weights(self.init_source, self.model, self.ema, self.disc)
                self.log(f"initialised from {self.init_source.description}: {', '.join(loaded)}")
        if cfg.train_part != "all":
            self.log(f"training only the {cfg.train_part}; frozen: encoder, quant_conv, quantizer")
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.run_dir / "train_config.json")
            self.model_config.save(self.run_dir / "model_config.json")

        self.net = self.model
        if self.dist.world > 1:
            self.net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                           broadcast_buffers=False)
        if cfg.compile:
            self.net = torch.compile(self.net)

        paths = list_images(cfg.data)
        self.dataset = RandomCrops(paths, cfg.crop_size, cfg.seed, self.dist.rank, cfg.max_short_side,
                                   cfg.hflip, cfg.cache_images)
        self.eval_images = load_eval_images(cfg.val_data, cfg.crop_size, cfg.eval_images) if self.dist.main else None
        self.log(f"{len(paths)} training images; model {self.model_config.model_type} "
                 f"{sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M params; device {self.device}; "
                 f"autocast {self.amp_dtype}; world {self.dist.world}"
                 + (f"; perceptual {self.perceptual.name}" if self.perceptual else ""))

    # --- helpers ----------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.dist.main:
            print(f"[train] {message}", flush=True)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def gan_active(self, step: int) -> bool:
        return self.disc is not None and step >= self.cfg.gan_start

    # --- one step ---------------------------------------------------------------------------------
    def train_step(self, step: int, batch: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        for group in self.opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        clean = batch.to(self.device, non_blocking=True)
        if cfg.denoise_mask_ratio > 0 or cfg.denoise_noise_std > 0:
            # Its own stream per (seed, rank, step), like the crops: a resumed run corrupts step k
            # exactly as the uninterrupted run did, whatever else drew from the global generator.
            g = step_generator(cfg.seed, self.dist.rank, step, CORRUPTION_STREAM)
            noisy = corrupt(clean, cfg.denoise_mask_ratio, cfg.denoise_noise_std, g)
        else:
            noisy = clean
        target = (clean * 2 - 1).contiguous(memory_format=self.memory_format)  # (B, 3, H, W) in [-1, 1]
        inputs = (noisy * 2 - 1).contiguous(memory_format=self.memory_format)
        stats: dict[str, float] = {}
        with self.autocast():
            out = self.net(inputs)
            recon = out.reconstruction
            rec = reconstruction_loss(recon, target, cfg.l1_weight, cfg.l2_weight)
            stats["rec"] = rec.item()
            if self.perceptual is not None:
                p = self.perceptual(recon, target)
                rec = rec + cfg.perceptual_weight * p
                stats["perceptual"] = p.item()
            total = rec
            if isinstance(self.model, VQModel):
                q = out.quantizer
                total = total + q.loss
                stats.update(codebook=q.codebook_loss.item(), commit=q.commitment_loss.item(),
                             perplexity=q.perplexity.item(), usage=q.usage.item())
                if cfg.entropy_weight > 0:
                    ent = codebook_entropy_loss(self.model.quantizer, self.model.encode_latents(inputs), cfg.entropy_temperature)
                    total = total + cfg.entropy_weight * ent
                    stats["entropy"] = ent.item()
            elif isinstance(self.model, KLModel):
                # Per-element KL, so kl_weight matches LDM's weight on its sum-normalised losses.
                kl = out.kl.mean() / target[0].numel()
                total = total + cfg.kl_weight * kl
                stats["kl"] = kl.item()
            if self.gan_active(step):
                g = generator_loss(self.disc(recon.float()), cfg.gan_loss)
                weight = adaptive_gan_weight(rec, g, self.model.decoder.last_layer, cfg.adaptive_weight_max)
                total = total + cfg.gan_weight * weight * g
                stats.update(gan_g=g.item(), gan_weight=weight.item())
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        if cfg.grad_clip > 0:
            stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip).item()
        self.opt.step()

        if self.gan_active(step):
            with self.autocast():
                real = self.disc(target)
                fake = self.disc(recon.detach().float())
                d_loss = discriminator_loss(real.float(), fake.float(), cfg.gan_loss)
                if self.lecam is not None:
                    d_loss = d_loss + cfg.lecam_weight * self.lecam(real.float(), fake.float())
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            if self.dist.world > 1:  # the discriminator is not wrapped in DDP: average its gradients by hand
                for p in self.disc.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= self.dist.world
            self.opt_d.step()
            stats["gan_d"] = d_loss.item()

        decay = 0.0 if step < cfg.ema_start else min(cfg.ema_decay, (1 + step) / (10 + step))
        update_ema(self.ema, self.model, decay)
        stats["loss"] = total.item()
        stats["lr"] = self.opt.param_groups[0]["lr"]
        return stats

    # --- bookkeeping ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        if self.eval_images is None:
            return {}
        psnrs, counts = [], None
        for start in range(0, len(self.eval_images), 4):
            x = self.eval_images[start : start + 4].to(self.device)
            with self.autocast():
                out = self.ema(x * 2 - 1)
            recon = ((out.reconstruction.float() + 1) / 2).clamp(0, 1)
            psnrs.append(psnr(recon.cpu(), x.cpu()))
            if isinstance(self.ema, VQModel):
                ids = out.quantizer.indices.flatten()
                hist = torch.bincount(ids, minlength=self.ema.vocab_size)
                counts = hist if counts is None else counts + hist
        result = {"val_psnr": torch.cat(psnrs).mean().item()}
        if counts is not None:
            result["val_usage"] = (counts > 0).float().mean().item()
        return result

    @torch.no_grad()
    def save_samples(self, step: int, batch: torch.Tensor) -> None:
        import torchvision

        x = (self.eval_images[:8] if self.eval_images is not None else batch[:8]).to(self.device)
        with self.autocast():
            recon = self.ema(x * 2 - 1).reconstruction
        recon = ((recon.float() + 1) / 2).clamp(0, 1)
        grid = torchvision.utils.make_grid(torch.cat([x.float(), recon]), nrow=len(x), padding=2)  # input row | recon row
        folder = self.run_dir / "samples"
        folder.mkdir(exist_ok=True)
        save_image(grid.cpu(), folder / f"step_{step:07d}.png")

    def checkpoint(self, step: int) -> None:
        if self.dist.main:
            save_checkpoint(self.run_dir, step, self.modules, self.optimizers,
                            {"config": self.cfg.to_dict(), "model_config": self.model_config.to_dict()})
        if self.dist.world > 1:
            dist.barrier()

    def export(self, folder: Path) -> Path:
        """The EMA weights as a model folder that ``from_pretrained`` loads."""
        return save_folder(self.ema, folder)

    # --- loop -------------------------------------------------------------------------------------
    def fit(self, stop_after: int = 0, export_dir: str | None = None) -> dict[str, float]:
        cfg = self.cfg
        end = cfg.steps if stop_after <= 0 else min(cfg.steps, stop_after)
        sampler = StepSampler(self.start_step, end, cfg.batch_size)
        # A private generator: creating the loader's iterator draws a base seed, and from the global
        # generator that draw would shift every later random number of a resumed run by one.
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                            persistent_workers=False, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(cfg.seed))
        self.model.train()
        apply_train_part(self.model, cfg.train_part)  # frozen parts back to eval mode
        log_file = open(self.run_dir / "log.jsonl", "a") if self.dist.main else None
        started = time.time()
        window_start, window_images = time.time(), 0
        done = self.start_step
        last: dict[str, float] = {}
        for step, batch in enumerate(loader, start=self.start_step):
            stats = self.train_step(step, batch)
            window_images += batch.shape[0] * self.dist.world
            done = step + 1
            if done % cfg.log_every == 0 or done == end:
                elapsed = time.time() - window_start
                stats["images_per_s"] = window_images / max(elapsed, 1e-9)
                window_start, window_images = time.time(), 0
                if done % cfg.eval_every == 0 or done == end:
                    stats.update(self.evaluate(done))
                stats["step"] = done
                last = stats
                if log_file is not None:
                    log_file.write(json.dumps(stats) + "\n")
                    log_file.flush()
                shown = " ".join(f"{k}={v:.4g}" for k, v in stats.items() if k not in ("step", "lr"))
                self.log(f"step {done}/{cfg.steps} lr={stats['lr']:.2e} {shown}")
            if self.dist.main and (done % cfg.sample_every == 0 or done == end):
                self.save_samples(done, batch)
            if done % cfg.ckpt_every == 0 and done != end:
                self.checkpoint(done)
            if cfg.max_minutes > 0 and (time.time() - started) / 60 > cfg.max_minutes:
                self.log(f"max_minutes={cfg.max_minutes} reached at step {done}")
                break
        self.checkpoint(done)
        if self.dist.main:
            folder = self.export(Path(export_dir) if export_dir else self.run_dir / "export")
            self.log(f"step {done}: exported EMA weights to {folder}")
            if log_file is not None:
                log_file.close()
        if self.dist.world > 1:
            dist.barrier()
        return last


def run(cfg: TrainConfig, resume: bool = False, export_dir: str | None = None, stop_after: int = 0) -> dict[str, float]:
    trainer = Trainer(cfg, resume=resume)
    try:
        return trainer.fit(stop_after=stop_after, export_dir=export_dir)
    finally:
        if trainer.dist.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["Trainer", "run", "lr_at", "update_ema", "autocast_dtype"]
