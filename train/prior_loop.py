"""Training a token prior (``train.prior.TokenPrior``) on token shards, top to bottom.

Setup (DDP from ``RANK``/``WORLD_SIZE`` as ``torchrun`` sets them: gloo on CPU, NCCL on CUDA), data (the
batch tokenizer's shards through ``tokenizer.data``), the step (AdamW, linear warmup then cosine decay,
bf16 autocast on CUDA), evaluation (validation cross-entropy in bits per image code, against the unigram
entropy of the codes on the training split: the loss of a model that ignores context), checkpoints
(safetensors + JSON) and samples (constrained raster-order sampling, decoded to PNGs by the tokenizer).
Logging, samples and checkpoints come from rank 0 only; the stop and the resume step are rank 0's
decisions, broadcast (train/common.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel as DDP

from tokenizer.data import TokenShardDataset
from tokenizer.sequence import TokenLayout

from .checkpoint import resume_latest, save_checkpoint_all_ranks
from .common import autocast_dtype, log_main, lr_at, setup_distributed, stop_together
from .prior import PRIOR_SIZES, PriorConfig, TokenPrior, sample_grids

LN2 = math.log(2.0)


@dataclass
class PriorTrainConfig:
    tokens: str  # folder of token shards written by scripts/tokenize_dataset.py
    out: str  # run folder: log, metrics.json, checkpoints/, prior/ (final weights), samples/
    prior: str = "prior-s"  # a name in train.prior.PRIOR_SIZES
    tokenizer: str | None = None  # decodes samples; None: the model named in the shards' metadata.json
    eol: bool = True  # TokenLayout options (see tokenizer/sequence.py)
    size_prefix: bool = False
    steps: int = 2000
    batch_size: int = 16  # sequences per rank and step
    lr: float = 1e-3  # small GPTs tolerate 1e-3 (nanoGPT's shakespeare-char uses it at 10M parameters)
    min_lr_ratio: float = 0.1  # cosine decays to lr * this (Chinchilla, Hoffmann et al. 2022)
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on matrices only; embeddings, biases and norms are not decayed (GPT-2)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    val_fraction: float = 0.05  # images held out for the validation loss (at least one)
    # A separate shard folder for validation (e.g. crops of held-out photos: random crops of one photo in
    # both splits would share content). When set, every image of ``tokens`` trains and val_fraction is unused.
    val_tokens: str | None = None
    eval_every: int = 200
    checkpoint_every: int = 500
    max_minutes: float = 0.0  # stop training after this wall time (0: run all steps)
    num_samples: int = 8
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; "bf16" forces it; "none" disables it
    threads: int = 0  # torch CPU threads per process (0: torch's default)
    dist_timeout_minutes: float = 15.0  # a collective waiting longer for a missing rank raises

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")


# --- data ----------------------------------------------------------------------------------------
class TokenGrids:
    """The (h, w) code grids of a token-shard folder, by index, with a deterministic train/val split."""

    def __init__(self, folder: str | Path):
        self.dataset = TokenShardDataset(folder)
        self.metadata = self.dataset.metadata
        self.vocab_size = self.dataset.vocab_size
        self.shapes = [self.dataset.grid_shape(i) for i in range(len(self.dataset))]

    def __len__(self) -> int:
        return len(self.dataset)

    def grid(self, index: int) -> torch.Tensor:
        return self.dataset[index].ids.long()  # (h, w)

    def split(self, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
        """Train and val indices: a seeded permutation, the first ``val_fraction`` of it held out."""
        if len(self) < 2:
            raise ValueError(f"{self.dataset.root}: {len(self)} image(s); a prior needs at least 2 (train + val)")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).tolist()
        n_val = min(len(self) - 1, max(1, round(val_fraction * len(self))))
        return sorted(order[n_val:]), sorted(order[:n_val])


@dataclass
class UnigramStats:
    entropy_bits: float  # -sum p log2 p of the code frequencies: a context-free model's loss
    used_codes: int  # codes seen at least once
    tokens: int  # codes counted


def unigram_stats(grids: TokenGrids, indices: list[int], vocab_size: int) -> UnigramStats:
    counts = np.zeros(vocab_size, dtype=np.int64)
    for i in indices:
        counts += np.bincount(grids.grid(i).flatten().numpy(), minlength=vocab_size)
    total = int(counts.sum())
    p = counts[counts > 0] / total
    return UnigramStats(float(-(p * np.log2(p)).sum()), int((counts > 0).sum()), total)


@dataclass
class Batch:
    inputs: torch.Tensor  # (B, T) tokens
    targets: torch.Tensor  # (B, T) next tokens, -100 on padding
    is_code: torch.Tensor  # (B, T) bool: the target is an image code (what bits/token is measured on)


def make_batch(layout: TokenLayout, grids: list[torch.Tensor], device: torch.device) -> Batch:
    batch = layout.collate([layout.to_sequence(g) for g in grids], padding_side="right")
    ids, mask = batch["input_ids"], batch["attention_mask"]  # (B, L)
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)  # (B, L - 1)
    lo, hi = layout.image_offset, layout.image_offset + layout.image_vocab_size
    is_code = (targets >= lo) & (targets < hi)
    return Batch(ids[:, :-1].to(device), targets.to(device), is_code.to(device))


# --- the final model folder ----------------------------------------------------------------------
def save_prior(folder: str | Path, model: TokenPrior, layout: TokenLayout, extra: dict[str, Any]) -> Path:
    """``config.json`` (prior config, layout, extras) + ``model.safetensors``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"prior": model.config.to_dict(), "layout": layout.to_dict(), **extra}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    return folder


def load_prior(folder: str | Path, device: str | torch.device = "cpu") -> tuple[TokenPrior, TokenLayout, dict]:
    """The model, its layout and the rest of its ``config.json``, from a ``save_prior`` folder."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    model = TokenPrior(PriorConfig(**config["prior"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.to(device).eval(), TokenLayout.from_dict(config["layout"]), config


# --- the loop ------------------------------------------------------------------------------------
@dataclass
class PriorResult:
    step: int
    val_bits_per_code: float  # cross-entropy on image-code targets of the held-out images, bits
    val_bits_per_token: float  # the same over every target (codes, end-of-row, end-of-image)
    unigram_entropy_bits: float  # of the codes on the training split
    uniform_bits: float  # log2(image vocabulary): a model that knows nothing
    first_val_bits_per_code: float  # at step 0 (or at resume)
    samples: list[str]  # PNG paths
    seconds: float


class PriorTrainer:
    def __init__(self, cfg: PriorTrainConfig, resume: bool = False):
        self.cfg = cfg
        self.dist, self.device = setup_distributed(cfg.device, cfg.dist_timeout_minutes)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        # "auto" is bf16 on CUDA only: at this width the CPU's bf16 matmuls gain little and cost accuracy.
        cpu_auto = cfg.amp == "auto" and self.device.type != "cuda"
        self.amp_dtype = None if cpu_auto else autocast_dtype(cfg.amp, self.device)
        self.run_dir = Path(cfg.out)
        torch.manual_seed(cfg.seed)  # the same initial model on every rank

        self.grids = TokenGrids(cfg.tokens)
        if cfg.val_tokens:
            self.val_grids = TokenGrids(cfg.val_tokens)
            if self.val_grids.vocab_size != self.grids.vocab_size:
                raise ValueError(f"val_tokens {cfg.val_tokens}: vocabulary {self.val_grids.vocab_size}, "
                                 f"but tokens {cfg.tokens} has {self.grids.vocab_size} (another tokenizer?)")
            self.train_idx, self.val_idx = list(range(len(self.grids))), list(range(len(self.val_grids)))
        else:
            self.val_grids = self.grids
            self.train_idx, self.val_idx = self.grids.split(cfg.val_fraction, cfg.seed)
        shapes = self.grids.shapes + self.val_grids.shapes
        self.layout = TokenLayout(image_vocab_size=self.grids.vocab_size, eol=cfg.eol, size_prefix=cfg.size_prefix,
                                  max_grid_side=max(max(s) for s in shapes))
        self.unigram = unigram_stats(self.grids, self.train_idx, self.grids.vocab_size)
        max_len = max(self.layout.sequence_length(h, w) for h, w in shapes)
        if cfg.prior not in PRIOR_SIZES:
            raise ValueError(f"prior {cfg.prior!r}: expected one of {sorted(PRIOR_SIZES)}")
        self.model = TokenPrior(PRIOR_SIZES[cfg.prior](self.layout.vocab_size, max_len)).to(self.device)
        torch.manual_seed(cfg.seed + self.dist.rank)  # then a seed per rank (DiT)
        self.opt = self._optimizer()
        self.start_step = 0
        self.history: list[dict[str, float]] = []
        state = resume_latest(self.dist, self.device, self.run_dir, {"model": self.model}, {"opt": self.opt}) if resume else None
        if state is not None:
            self.start_step, self.history = state["step"], state.get("history", [])
            self.log(f"resumed from step {self.start_step} of {self.run_dir / 'checkpoints'}")
        self.net = self.model
        if self.dist.distributed:
            self.net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.run_dir / "prior_train_config.json")
        counts = Counter(self.grids.shapes[i] for i in self.train_idx)
        self.sample_shape = counts.most_common(1)[0][0]
        self.log(
            f"{len(self.train_idx)} train / {len(self.val_idx)} val images, grids {dict(counts)}; "
            f"vocabulary {self.layout.vocab_size} ({self.grids.vocab_size} codes); sequences up to {max_len} tokens; "
            f"{cfg.prior} {self.model.num_parameters() / 1e6:.2f}M params; device {self.device}; "
            f"autocast {self.amp_dtype}; world {self.dist.world}"
        )
        self.log(
            f"unigram entropy of the training codes: {self.unigram.entropy_bits:.3f} bits "
            f"({self.unigram.used_codes} of {self.grids.vocab_size} codes used; uniform: "
            f"{math.log2(self.grids.vocab_size):.3f} bits)"
        )

    def log(self, message: str) -> None:
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        log_main(self.dist, "prior", message, self.run_dir / "log.txt")

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _optimizer(self) -> torch.optim.Optimizer:
        # Decay matrices only (GPT-2 / nanoGPT): decaying embeddings, biases and LayerNorm gains hurts.
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = self.device.type == "cuda"
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=self.cfg.betas, fused=fused)

    def train_batch(self, step: int) -> Batch:
        # The batch is a function of (seed, rank, step), so a resumed run sees what the uninterrupted one would.
        g = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + self.dist.rank) * 1_000_003 + step)
        picks = torch.randint(len(self.train_idx), (self.cfg.batch_size,), generator=g).tolist()
        return make_batch(self.layout, [self.grids.grid(self.train_idx[i]) for i in picks], self.device)

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Validation (bits per code target, bits per target), each rank taking every world-th image."""
        self.model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # code nats, codes, all nats, all
        mine = self.val_idx[self.dist.rank :: self.dist.world]
        for start in range(0, len(mine), self.cfg.batch_size):
            chunk = mine[start : start + self.cfg.batch_size]
            batch = make_batch(self.layout, [self.val_grids.grid(i) for i in chunk], self.device)
            with self.autocast():
                logits = self.model(batch.inputs).logits  # (B, T, V)
            # cross_entropy wants classes on dim 1: (B, T, V) -> (B, V, T); per-position nats (B, T).
            nats = F.cross_entropy(logits.float().transpose(1, 2), batch.targets, ignore_index=-100,
                                   reduction="none")
            valid = batch.targets != -100
            parts = [nats[batch.is_code].sum(), batch.is_code.sum(), nats[valid].sum(), valid.sum()]
            sums += torch.stack(parts).double()
        if self.dist.distributed:
            dist.all_reduce(sums)
        self.model.train()
        code_nats, codes, all_nats, count = sums.tolist()
        return code_nats / max(codes, 1) / LN2, all_nats / max(count, 1) / LN2

    def checkpoint(self, step: int) -> None:
        """A collective (every rank's random state goes to rank 0, which writes)."""
        extra = {"history": self.history, "prior_config": self.model.config.to_dict(), "layout": self.layout.to_dict()}
        save_checkpoint_all_ranks(self.dist, self.device, self.run_dir, step, {"model": self.model}, {"opt": self.opt},
                                  extra)

    def fit(self) -> PriorResult:
        cfg = self.cfg
        started = time.time()
        first_bits, _ = self.evaluate()
        self.log(f"step {self.start_step}: val {first_bits:.3f} bits/code (before training)")
        self.model.train()
        step = self.start_step
        tokens_seen, window_start = 0, time.time()  # tokens_seen: a device tensor, read at logging steps
        while step < cfg.steps:
            lr = lr_at(step, cfg)
            for group in self.opt.param_groups:
                group["lr"] = lr
            batch = self.train_batch(step)
            with self.autocast():
                loss = self.net(batch.inputs, batch.targets).loss
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
            step += 1
            tokens_seen = tokens_seen + (batch.targets != -100).sum() * self.dist.world
            stop = False
            if cfg.max_minutes > 0 and step % 10 == 0:  # rank 0 decides, every rank leaves at this step
                stop = stop_together(time.time() - started > 60 * cfg.max_minutes, self.dist, self.device)
            if step % 10 == 0 or step == cfg.steps or stop:
                rate = int(tokens_seen) / max(time.time() - window_start, 1e-9)
                self.log(f"step {step}: loss {loss.item() / LN2:.3f} bits/token, lr {lr:.2e}, {rate:.0f} tokens/s")
                tokens_seen, window_start = 0, time.time()
            if step % cfg.eval_every == 0 or step == cfg.steps or stop:
                code_bits, token_bits = self.evaluate()
                self.history.append({"step": step, "train_bits_per_token": loss.item() / LN2,
                                     "val_bits_per_code": code_bits, "val_bits_per_token": token_bits})
                self.log(f"step {step}: val {code_bits:.3f} bits/code, {token_bits:.3f} bits/token "
                         f"(unigram entropy {self.unigram.entropy_bits:.3f} bits)")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop:
                self.checkpoint(step)
            if stop:
                self.log(f"stopping at step {step}: max_minutes={cfg.max_minutes} reached")
                break
        if not self.history or self.history[-1]["step"] != step:
            code_bits, token_bits = self.evaluate()
            self.history.append({"step": step, "val_bits_per_code": code_bits, "val_bits_per_token": token_bits})
        final = self.history[-1]
        result = PriorResult(
            step=step, val_bits_per_code=final["val_bits_per_code"], val_bits_per_token=final["val_bits_per_token"],
            unigram_entropy_bits=self.unigram.entropy_bits, uniform_bits=math.log2(self.grids.vocab_size),
            first_val_bits_per_code=first_bits, samples=[], seconds=time.time() - started,
        )
        if self.dist.main:
            # The trained prior and its metrics are written before sampling, which loads the tokenizer: a
            # tokenizer that cannot be loaded costs the samples only, never the training.
            save_prior(self.run_dir / "prior", self.model, self.layout,
                       {"tokens": str(cfg.tokens), "tokenizer": self.tokenizer_source(strict=False),
                        "sample_shape": list(self.sample_shape)})
            self._write_metrics(result)
            if cfg.num_samples > 0:
                try:
                    result.samples = self.sample()
                except Exception as err:  # noqa: BLE001 - any failure here must not lose the run
                    self.log(f"sampling failed, the prior and metrics.json are saved: {type(err).__name__}: {err}. "
                             f"Sample later with: python scripts/train_prior.py --sample-from {self.run_dir / 'prior'} "
                             f"--out {self.run_dir / 'samples'} --tokenizer MODEL")
                self._write_metrics(result)
            self.log(f"done: step {step}, val {result.val_bits_per_code:.3f} bits/code vs unigram entropy "
                     f"{result.unigram_entropy_bits:.3f} bits (uniform {result.uniform_bits:.3f}); "
                     f"{len(result.samples)} samples in {self.run_dir / 'samples'}")
        if self.dist.distributed:
            dist.barrier()
        return result

    def _write_metrics(self, result: PriorResult) -> None:
        metrics = {**dataclasses.asdict(result), "unigram": dataclasses.asdict(self.unigram),
                   "train_images": len(self.train_idx), "val_images": len(self.val_idx),
                   "parameters": self.model.num_parameters(), "history": self.history}
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    def tokenizer_source(self, strict: bool = True) -> str | None:
        """The tokenizer that decodes samples: --tokenizer, else the model the shards' metadata names
        (``name``: the shipped models by their name, which loads offline; older metadata: ``name_or_path``)."""
        if self.cfg.tokenizer:
            return self.cfg.tokenizer
        record = self.grids.metadata.get("model", {})
        source = record.get("name") or record.get("name_or_path")
        if not source or source == "in-memory":
            if not strict:
                return None
            raise ValueError(f"{self.cfg.tokens}/metadata.json names no model folder or repo id ({source!r}); "
                             "pass the tokenizer explicitly (--tokenizer)")
        return str(source)

    def sample(self) -> list[str]:
        """Draw ``num_samples`` grids of the commonest training shape and decode them to PNGs."""
        cfg = self.cfg
        generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        with self.autocast():
            grids = sample_grids(self.model, self.layout, cfg.num_samples, *self.sample_shape,
                                 temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, generator=generator)
        return write_samples(grids.cpu(), self.tokenizer_source(), self.run_dir / "samples", self.device,
                             made_with=self.grids.metadata.get("model"), ids_from=str(cfg.tokens))


def write_samples(grids: torch.Tensor, tokenizer: str, folder: str | Path,
                  device: str | torch.device = "cpu", made_with: dict | None = None,
                  ids_from: str = "the ids") -> list[str]:
    """(N, h, w) sampled codes -> ``folder/grids.safetensors`` and ``sample_XXX.png`` decoded by ``tokenizer``.

    ``made_with``: the model record of the shards the prior learnt (metadata.json's ``model``), ``ids_from`` their
    folder: decoding with other weights is warned about by name.
    """
    from tokenizer import ImageTokenizer
    from tokenizer.image_io import save_image
    from tokenizer.shipped import warn_if_other_weights

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"ids": grids.to(torch.int32).contiguous()}, str(folder / "grids.safetensors"))
    tok = ImageTokenizer.from_pretrained(tokenizer, device=device)
    warn_if_other_weights(made_with, tok.identity, ids_from)
    images = tok.decode(grids)  # (N, 3, H, W)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"sample_{i:03d}.png"
        save_image(image, path)
        paths.append(str(path))
    return paths


def run(cfg: PriorTrainConfig, resume: bool = False) -> PriorResult:
    result = PriorTrainer(cfg, resume=resume).fit()
    if dist.is_initialized():
        dist.destroy_process_group()
    return result


__all__ = ["PriorTrainConfig", "PriorTrainer", "PriorResult", "TokenGrids", "UnigramStats", "Batch",
           "make_batch", "unigram_stats", "lr_at", "save_prior", "load_prior", "write_samples", "run"]
