"""The training loop, top to bottom: setup, data, step, bookkeeping, export.

Single process, or DDP under any ``torchrun`` launch (detected from ``RANK``, one GPU included; NCCL on
CUDA, gloo on CPU). Every module (autoencoder, discriminator) is built from the same seed on every rank,
then the ranks' random streams diverge (a seed per rank, as DiT). The autoencoder is under DDP; the
discriminator's gradients are averaged with one flattened all-reduce per step; the quantizer all-reduces
its codebook statistics itself: every rank keeps identical weights. Logging, samples and checkpoints come
from rank 0; decisions all ranks must share (stop now, resume from which step) are rank 0's, broadcast.

No host-device sync in the step: losses and statistics stay on the device, summed over the logging
window, and are read (averaged over ranks) once per ``log_every`` steps.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from tokenizer.config import ConfigError
from tokenizer.image_io import save_image
from tokenizer.metrics import psnr
from tokenizer.models import KLModel, VQModel, build_model
from tokenizer.pretrained import save_folder

from .checkpoint import resume_latest, save_checkpoint_all_ranks
from .common import autocast_dtype, log_main, lr_at, setup_distributed, stop_together
from .config import TrainConfig
from .init_from import apply_train_part, frozen_from_ema, load_init_weights, read_init_source
from .data import (CORRUPTION_STREAM, RandomCrops, StepSampler, corrupt, default_workers, list_images,
                   load_eval_images, step_generator)
from .discriminator import PatchDiscriminator
from .losses import (
    LeCam,
    PerceptualLoss,
    adaptive_gan_weight,
    discriminator_loss,
    generator_loss,
    patch_colour_loss,
    reconstruction_loss,
    training_entropy_loss,
)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, check_fresh: bool = True) -> None:
    """EMA of the weights; the codebook is copied, not averaged (restarted codes would blur).

    A submodule initialised from data this step (its ``initialized`` buffer differs from the EMA's: the
    linear patch shortcut's PCA) is copied too, or the EMA would spend thousands of steps crawling from the
    placeholder zeros to it. Data-dependent initialisation happens on a process's first step, so the trainer
    checks for it then only (``check_fresh``): comparing buffers is a host sync on a GPU."""
    ema_state = ema.state_dict()
    model_state = model.state_dict()
    fresh = tuple(name[: -len("initialized")] for name, value in model_state.items()
                  if check_fresh and name.endswith("initialized") and not name.startswith("quantizer.")
                  and not torch.equal(value, ema_state[name]))
    for name, value in model_state.items():
        target = ema_state[name]
        if value.is_floating_point() and not name.startswith(("quantizer.",) + fresh):
            target.lerp_(value.to(target.dtype), 1.0 - decay)
        else:
            target.copy_(value)


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg = cfg
        self.dist, self.device = setup_distributed(cfg.device, cfg.dist_timeout_minutes)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        if self.device.type == "cuda":
            # Fixed-size crops: let cuDNN time its convolution algorithms once and keep the fastest.
            torch.backends.cudnn.benchmark = True
        self.run_dir = Path(cfg.out)
        # Every rank builds the same initial modules (parameters *and* buffers such as the EMA codebook
        # statistics, which DDP does not broadcast with broadcast_buffers=False; and the discriminator,
        # which no DDP wrapper would re-synchronise); only then do the ranks' streams diverge, one seed
        # per rank as in DiT.
        torch.manual_seed(cfg.seed)
        self.init_source = read_init_source(cfg.init_from, cfg.allow_pickle) if cfg.init_from else None
        self.model_config = cfg.model_config(self.init_source.config if self.init_source else None)
        self.model = build_model(self.model_config).to(self.device)
        self.disc = PatchDiscriminator(cfg.disc_channels, cfg.disc_layers).to(self.device) if cfg.gan_weight > 0 else None
        torch.manual_seed(cfg.seed + self.dist.rank)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        apply_train_part(self.model, cfg.train_part)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(trainable, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.modules: dict[str, torch.nn.Module] = {"model": self.model, "ema": self.ema}
        self.optimizers: dict[str, torch.optim.Optimizer] = {"opt": self.opt}
        self.lecam = None
        if self.disc is not None:
            self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.9))
            self.modules["disc"] = self.disc
            self.optimizers["opt_d"] = self.opt_d
            if cfg.lecam_weight > 0:
                self.lecam = LeCam(cfg.lecam_decay).to(self.device)
                self.modules["lecam"] = self.lecam
        if cfg.perceptual_batch < 0:
            raise ConfigError(f"perceptual_batch={cfg.perceptual_batch}: expected 0 (the whole batch) or a number "
                              "of samples per step")
        self.amp_dtype = autocast_dtype(cfg.amp, self.device)
        perceptual_dtype = self.amp_dtype if cfg.perceptual_amp else None
        self.perceptual = (PerceptualLoss(cfg.perceptual_net, compute_dtype=perceptual_dtype).to(self.device)
                           if cfg.perceptual_weight > 0 else None)

        self.start_step = 0
        state = resume_latest(self.dist, self.device, self.run_dir, self.modules, self.optimizers) if resume else None
        if state is not None:
            self.start_step = state["step"]
            if not state["rng_restored"]:  # saved by a run with fewer ranks: a fresh stream, still per rank
                torch.manual_seed(cfg.seed + self.dist.rank + 1_000_003 * self.start_step)
            self.log(f"resumed from step {self.start_step} of {self.run_dir / 'checkpoints'}"
                     + ("" if state["rng_restored"] else f" (no random state saved for rank {self.dist.rank})"))
        else:
            if resume:
                self.log(f"--resume: no checkpoint in {self.run_dir}, starting fresh")
            if self.init_source is not None:
                loaded = load_init_weights(self.init_source, self.model, self.ema, self.disc, cfg.grow)
                self.log(f"initialised from {self.init_source.description}: {', '.join(loaded)}")
                synced = frozen_from_ema(self.model, self.ema, cfg.train_part)
                if synced:
                    self.log(f"frozen {', '.join(synced)} set to the EMA's values (the ids of the exported model)")
        if cfg.train_part != "all":
            self.log(f"training only the {cfg.train_part}; frozen: encoder, quant_conv, quantizer")
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.run_dir / "train_config.json")
            self.model_config.save(self.run_dir / "model_config.json")

        self.net = self.model
        if self.dist.distributed:
            # Buffers are not broadcast from rank 0 at each forward: they start equal (same seed, same
            # checkpoint) and the quantizer keeps its own equal by all-reducing its statistics.
            no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                              else {"broadcast_buffers": False})  # older torch
            self.net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                           **no_buffer_sync)
        if cfg.compile:
            self.net = torch.compile(self.net)

        paths = list_images(cfg.data)
        self.dataset = RandomCrops(paths, cfg.crop_size, cfg.seed, self.dist.rank, cfg.max_short_side,
                                   cfg.hflip, cfg.cache_images, world=self.dist.world, cache_mb=cfg.cache_mb)
        self.eval_images = load_eval_images(cfg.val_data, cfg.crop_size, cfg.eval_images) if self.dist.main else None
        self.log(f"{len(paths)} training images ({len(self.dataset.paths)} on this rank); model "
                 f"{self.model_config.model_type} {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M params; "
                 f"device {self.device}; autocast {self.amp_dtype}; world {self.dist.world}"
                 + (" (DDP)" if self.dist.distributed else "")
                 + (f"; perceptual {self.perceptual.name}" if self.perceptual else "")
                 + (f" in {perceptual_dtype}" if self.perceptual and perceptual_dtype else ""))

    # --- helpers ----------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        log_main(self.dist, "train", message)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def gan_active(self, step: int) -> bool:
        return self.disc is not None and step >= self.cfg.gan_start

    @torch.no_grad()
    def _average_disc_grads(self, extra: torch.Tensor) -> torch.Tensor:
        """Average the discriminator's gradients (and ``extra``) over ranks with ONE all-reduce; returns
        the averaged ``extra``. Identical initial weights + identical averaged gradients keep the ranks'
        discriminators identical, as DDP would, without DDP's trouble with two forwards per step."""
        params = [p for p in self.disc.parameters() if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1) for p in params] + [extra.float().reshape(-1)])  # (P + E,)
        if self.dist.distributed:
            dist.all_reduce(flat)
            flat /= self.dist.world
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()
        return flat[offset:]

    # --- one step ---------------------------------------------------------------------------------
    def train_mode(self) -> None:
        """The model in training mode, except what ``train_part`` freezes: frozen modules stay in eval mode, so a
        decoder-only run makes no codebook updates or dead-code restarts and every id stays as it was. Every
        caller that trains (this loop, ``scripts/bench_recipe.py``) switches modes through here."""
        self.model.train()
        apply_train_part(self.model, self.cfg.train_part)

    def train_step(self, step: int, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step; returns its statistics as 0-dim tensors still on the device."""
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
        stats: dict[str, torch.Tensor] = {}
        gan = self.gan_active(step)
        with self.autocast():
            out = self.net(inputs)
            recon = out.reconstruction
            rec = reconstruction_loss(recon, target, cfg.l1_weight, cfg.l2_weight)
            stats["rec"] = rec
            if cfg.colour_weight > 0:
                c = patch_colour_loss(recon, target, cfg.colour_patch)
                rec = rec + cfg.colour_weight * c
                stats["colour"] = c
            if self.perceptual is not None:
                k = cfg.perceptual_batch or recon.shape[0]
                p = self.perceptual(recon[:k], target[:k])  # (B, 3, H, W) -> its first k samples
                rec = rec + cfg.perceptual_weight * p
                stats["perceptual"] = p
            total = rec
            if isinstance(self.model, VQModel):
                q = out.quantizer
                total = total + q.loss
                stats.update(codebook=q.codebook_loss, commit=q.commitment_loss, perplexity=q.perplexity, usage=q.usage)
                if cfg.entropy_weight > 0:
                    # From the forward pass's own output (inside DDP): no second encoder or entropy pass.
                    ent = training_entropy_loss(self.model.quantizer, q, cfg.entropy_temperature)
                    total = total + cfg.entropy_weight * ent
                    stats["entropy"] = ent
            elif isinstance(self.model, KLModel):
                # Per-element KL, so kl_weight matches LDM's weight on its sum-normalised losses.
                kl = out.kl.mean() / target[0].numel()
                total = total + cfg.kl_weight * kl
                stats["kl"] = kl
            if gan:
                self.disc.requires_grad_(False)  # the generator's loss needs no discriminator gradients
                g = generator_loss(self.disc(recon.float()), cfg.gan_loss)
                self.disc.requires_grad_(True)
                weight = adaptive_gan_weight(rec, g, self.model.decoder.last_layer, cfg.adaptive_weight_max)
                total = total + cfg.gan_weight * weight * g
                stats.update(gan_g=g, gan_weight=weight)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        if cfg.grad_clip > 0:
            stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()

        if gan:
            with self.autocast():
                real = self.disc(target).float()
                fake = self.disc(recon.detach().float()).float()
                d_loss = discriminator_loss(real, fake, cfg.gan_loss)
                if self.lecam is not None:
                    d_loss = d_loss + cfg.lecam_weight * self.lecam(real, fake)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            means = torch.stack([real.mean(), fake.mean()]).detach()  # (2,) for LeCam's anchors
            means = self._average_disc_grads(means)
            if self.lecam is not None:
                self.lecam.update(means[0], means[1])  # the ranks' average: identical anchors everywhere
            self.opt_d.step()
            stats["gan_d"] = d_loss

        decay = 0.0 if step < cfg.ema_start else min(cfg.ema_decay, (1 + step) / (10 + step))
        update_ema(self.ema, self.model, decay, check_fresh=step == self.start_step)
        stats["loss"] = total
        return {k: v.detach().float() for k, v in stats.items()}

    # --- bookkeeping ------------------------------------------------------------------------------
    def reduce_stats(self, sums: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, float]:
        """Window sums of every rank -> means over steps and ranks, read back with one host sync.
        A collective: every rank calls it at the same steps (the keys are the same on every rank)."""
        if not sums:
            return {}
        keys = sorted(sums)
        values = torch.stack([sums[k] / counts[k] for k in keys])  # (S,)
        if self.dist.distributed:
            dist.all_reduce(values)
            values /= self.dist.world
        return dict(zip(keys, values.tolist()))

    def _reconstruct(self, x: torch.Tensor):
        """The EMA model on (B, 3, H, W) in [-1, 1], deterministic (a VAE decodes its posterior mean)."""
        return self.ema(x, sample=False) if isinstance(self.ema, KLModel) else self.ema(x)

    def _bookkeeping_rng(self):
        """Evaluation and samples run on rank 0 only: whatever they draw must not move its training stream
        (a resumed rank 0 would otherwise draw differently from the uninterrupted one)."""
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        if self.eval_images is None:
            return {}
        with self._bookkeeping_rng():
            return self._evaluate()

    def _evaluate(self) -> dict[str, float]:
        psnrs, counts = [], None
        for start in range(0, len(self.eval_images), 4):
            x = self.eval_images[start : start + 4].to(self.device)
            with self.autocast():
                out = self._reconstruct(x * 2 - 1)
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
        with self._bookkeeping_rng(), self.autocast():
            recon = self._reconstruct(x * 2 - 1).reconstruction
        recon = ((recon.float() + 1) / 2).clamp(0, 1)
        grid = torchvision.utils.make_grid(torch.cat([x.float(), recon]), nrow=len(x), padding=2)  # input row | recon row
        folder = self.run_dir / "samples"
        folder.mkdir(exist_ok=True)
        save_image(grid.cpu(), folder / f"step_{step:07d}.png")

    def checkpoint(self, step: int) -> None:
        """A collective: every rank calls it at the same step; rank 0 writes every rank's random state."""
        save_checkpoint_all_ranks(self.dist, self.device, self.run_dir, step, self.modules, self.optimizers,
                                  {"config": self.cfg.to_dict(), "model_config": self.model_config.to_dict()})
        if self.dist.distributed:
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
        workers = default_workers(cfg.num_workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=workers,
                            persistent_workers=False, pin_memory=self.device.type == "cuda",
                            prefetch_factor=2 if workers > 0 else None,
                            generator=torch.Generator().manual_seed(cfg.seed))
        self.train_mode()
        log_file = open(self.run_dir / "log.jsonl", "a") if self.dist.main else None
        started = time.monotonic()
        window_start, window_images = time.monotonic(), 0
        sums: dict[str, torch.Tensor] = {}  # this window's statistics, summed on the device
        counts: dict[str, int] = {}  # steps that reported each (the GAN's start mid-window)
        done = saved = self.start_step
        last: dict[str, float] = {}
        for step, batch in enumerate(loader, start=self.start_step):
            for key, value in self.train_step(step, batch).items():
                sums[key] = sums[key] + value if key in sums else value
                counts[key] = counts.get(key, 0) + 1
            window_images += batch.shape[0] * self.dist.world
            done = step + 1
            logging = done % cfg.log_every == 0 or done == end
            if logging:  # the one host sync of the window
                stats = self.reduce_stats(sums, counts)
                elapsed = time.monotonic() - window_start
                stats.update(lr=self.opt.param_groups[0]["lr"], images_per_s=window_images / max(elapsed, 1e-9))
                sums, counts, window_start, window_images = {}, {}, time.monotonic(), 0
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
                saved = done
            # The stop is rank 0's decision, taken at logging steps (same steps on every rank) and
            # broadcast: ranks deciding from their own clocks would leave some inside a collective.
            if cfg.max_minutes > 0 and logging and done != end:
                out_of_time = (time.monotonic() - started) / 60 > cfg.max_minutes
                if stop_together(out_of_time, self.dist, self.device):
                    self.log(f"max_minutes={cfg.max_minutes} reached at step {done}")
                    break
        if saved != done or done == self.start_step:
            self.checkpoint(done)
        if self.dist.main:
            folder = self.export(Path(export_dir) if export_dir else self.run_dir / "export")
            self.log(f"step {done}: exported EMA weights to {folder}")
            if log_file is not None:
                log_file.close()
        if self.dist.distributed:
            dist.barrier()
        return last


def run(cfg: TrainConfig, resume: bool = False, export_dir: str | None = None, stop_after: int = 0) -> dict[str, float]:
    trainer = Trainer(cfg, resume=resume)
    try:
        return trainer.fit(stop_after=stop_after, export_dir=export_dir)
    finally:
        if trainer.dist.distributed and dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["Trainer", "run", "lr_at", "update_ema", "autocast_dtype"]
