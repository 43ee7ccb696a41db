"""Speed and memory of imgtok against its peers, measured in one process on the same inputs.

    python scripts/benchmark.py --quick --json bench.json [--threads 1] [--model FOLDER] [--photos DIR]
    python scripts/benchmark.py --quick --threads 1 --only families [--families fsq lfq rvq] --json families.json

Sections (each prints its figures and the ratio against the peer):

1. peak: this CPU's fp32/bf16 throughput on a 2048^2 matmul and a 3x3 conv (128 -> 128 channels, 64^2,
   batch 16), the yardstick for the GFLOP/s figures below (the machine's speed changes from minute to minute).
2. quantizer: ``tokenizer.quantizer.VectorQuantizer`` against ``vector_quantize_pytorch.VectorQuantize``
   with the same codebook (K = 16384, 8-dim, l2-normalised / use_cosine_sim, rotation trick off, EMA
   updates in both, N = 16384 vectors): train-mode forward + backward and eval lookup: time, peak memory,
   and the share of identical ids when both hold the identical codebook.
   families: FSQ (levels 8,8,8,8: fsq-f8's 12 bits), LFQ (12 bits with the entropy penalty, as
   lfq-f8-cpu; 18 bits as lfq-f16 for the lookup only: vector-quantize-pytorch's LFQ forms the (N, 2^18)
   soft-assignment matrix in training, 16 GiB at N = 16384) and residual VQ (4 depths of 4096 16-dim
   codes, EMA, as rvq-f16) against ``FSQ``, ``LFQ`` and ``ResidualVQ``: train forward + backward time,
   peak memory, eval lookup time, and the share of identical ids (the same maths: FSQ levels, LFQ signs,
   and RVQ with copied codebooks).
3. autoencoders: ``ImageTokenizer.encode``/``decode`` against diffusers' ``VQModel`` configured to the
   ``vq-f8`` widths, depths and codebook (and ``ImageVAE`` against ``AutoencoderKL`` at ``kl-f8``), random
   weights, 256^2 images: images/s, ratio, and achieved GFLOP/s as a fraction of the measured conv peak.
4. fast path: ``optimize_for_inference()`` (bf16 autocast + channels-last) against fp32 on real photos:
   speed-up and the share of identical ids.
5. large images: peak memory of encoding and decoding 1024^2 (and 2048^2 without --quick).

Sections 1-3 measure the CPU (the peers run there too); 4 and 5 run on ``--device`` (default: the GPU when
there is one, else the CPU), printed in the header and stored in the JSON's settings. On a GPU, peak
memory is ``torch.cuda.max_memory_allocated`` above the allocation before the call.

Peak memory on CPU is the rise of the process's resident-set high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs``) above the resident size before the call: the extra memory the call needed.
Times are medians over repetitions, the contestants interleaved so a change of machine load hits both;
the CPU time of the process is recorded too (with ``--threads 1`` it is the work done, whatever else
runs on the machine). On a machine shared with other jobs the wall-clock median of the slower contestant
is more often a preempted run (vector-quantize-pytorch's FSQ step: 2.7 ms of CPU, 10 ms of wall, ours 1.8
and 2.0 ms, in one such run): the families' ``*_cpu_time`` ratios are then the steadier figures. ``--quick`` means fewer repetitions and sizes, never smaller models.

Peers are optional: ``pip install "imgtok[bench]"`` (vector-quantize-pytorch, diffusers).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from tokenizer import ImageTokenizer, ImageVAE, get_preset
from tokenizer.devices import resolve_device
from tokenizer.fast import bf16_supported
from tokenizer.config import FSQConfig, LFQConfig, ResidualVQConfig, VectorQuantizerConfig
from tokenizer.fsq import FiniteScalarQuantizer
from tokenizer.lfq import LookupFreeQuantizer
from tokenizer.quantizer import VectorQuantizer
from tokenizer.rvq import ResidualVectorQuantizer

BENCH_EXTRA_HINT = 'pip install "imgtok[bench]"'
QUANT_K, QUANT_DIM, QUANT_N = 16384, 8, 16384
FAMILIES = ("fsq", "lfq", "rvq")


# --- measuring ------------------------------------------------------------------------------------
def _status_mib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _cpu_peak_start() -> float | None:
    """Start a CPU peak-memory measurement; returns the resident MiB to subtract (None: /proc cannot tell)."""
    _malloc_trim()  # hand freed heap back to the OS first, or a reused free list would hide the allocations
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    return _status_mib("VmRSS")


def _cpu_peak_end(before: float | None) -> float | None:
    peak = _status_mib("VmHWM")
    return None if before is None or peak is None else max(0.0, peak - before)


def peak_memory_mib(fn: Callable[[], Any], device: torch.device = torch.device("cpu")) -> float | None:
    """Extra resident memory (MiB) ``fn`` needed at its peak; None where /proc cannot tell (not Linux)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0.0, (torch.cuda.max_memory_allocated(device) - before) / 2**20)
    before = _cpu_peak_start()
    fn()
    return _cpu_peak_end(before)


def interleaved_times(contestants: dict[str, Callable[[], Any]], reps: int, warmup: int = 1,
                      min_seconds: float = 0.0, max_reps: int = 500, memory: bool = False) -> dict[str, dict]:
    """Median wall and CPU seconds of each contestant, run in turn ``reps`` times after ``warmup`` runs.

    ``min_seconds``: more rounds (up to ``max_reps``) until the rounds add up to about that long, judged from
    the warm-up: a median of 2 runs of a 3 ms call is whatever the machine's scheduler did in those 6 ms.
    ``memory``: the first timed run of each contestant (after the warm-up, so without first-call allocations)
    is also its CPU peak-memory measurement (as in ``peak_memory_mib``, started and read outside the clock;
    "peak_mib"), so that no extra run is needed: a vector-quantize-pytorch RVQ step takes 10 s of CPU.
    Each contestant's "result" is what its last timed run returned.
    """
    round_s = 0.0
    for name, fn in contestants.items():
        for _ in range(warmup):
            t0 = time.perf_counter()
            fn()
            round_s += (time.perf_counter() - t0) / warmup
    if min_seconds > 0 and round_s > 0:
        reps = max(reps, min(max_reps, math.ceil(min_seconds / round_s)))
    walls: dict[str, list[float]] = {name: [] for name in contestants}
    cpus: dict[str, list[float]] = {name: [] for name in contestants}
    results: dict[str, Any] = {}
    peaks: dict[str, float | None] = {}
    for rep in range(reps):
        for name, fn in contestants.items():
            before = _cpu_peak_start() if memory and rep == 0 else None
            c0, t0 = time.process_time(), time.perf_counter()
            results[name] = fn()
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()  # GPU work is asynchronous: time it to its end
            walls[name].append(time.perf_counter() - t0)
            cpus[name].append(time.process_time() - c0)
            if memory and rep == 0:
                peaks[name] = _cpu_peak_end(before)
    return {name: {"wall_s": statistics.median(walls[name]), "cpu_s": statistics.median(cpus[name]),
                   "wall_all_s": [round(w, 4) for w in walls[name]], "reps": reps, "peak_mib": peaks.get(name),
                   "result": results.get(name)} for name in contestants}


def count_flops(fn: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


class Report:
    def __init__(self):
        self.data: dict[str, Any] = {}

    def section(self, title: str) -> None:
        print(f"\n== {title}", flush=True)

    def put(self, key: str, value: Any, text: str | None = None) -> None:
        self.data[key] = value
        if text is not None:
            print(f"  {text}", flush=True)


def _missing(report: Report, section: str, err: ImportError) -> None:
    message = f"{section} skipped: peer library missing ({err.name or err}); install it with {BENCH_EXTRA_HINT}"
    print(f"  {message}", flush=True)
    report.data.setdefault("skipped", []).append(message)


# --- 1. peak --------------------------------------------------------------------------------------
def bench_peak(report: Report, reps: int) -> None:
    report.section("peak throughput of this CPU (same run)")
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a16, b16 = a.bfloat16(), b.bfloat16()
    x = torch.randn(16, 128, 64, 64)
    w = torch.randn(128, 128, 3, 3) * 0.03
    x_cl = x.contiguous(memory_format=torch.channels_last)
    w_cl = w.contiguous(memory_format=torch.channels_last)
    conv_flops = 2 * 16 * 128 * 128 * 9 * 64 * 64
    with torch.no_grad():
        times = interleaved_times({
            "matmul_fp32": lambda: a @ b,
            "matmul_bf16": lambda: a16 @ b16,
            "conv_fp32": lambda: F.conv2d(x_cl, w_cl, padding=1),
            "conv_bf16": lambda: F.conv2d(x_cl.bfloat16(), w_cl.bfloat16(), padding=1),
        }, reps)
    for name, flops in (("matmul_fp32", 2 * n**3), ("matmul_bf16", 2 * n**3), ("conv_fp32", conv_flops),
                        ("conv_bf16", conv_flops)):
        gflops = flops / times[name]["wall_s"] / 1e9
        report.put(f"peak_{name}_gflops", round(gflops, 1), f"{name}: {gflops:.1f} GFLOP/s")


# --- 2. quantizer ---------------------------------------------------------------------------------
def bench_quantizer(report: Report, reps: int) -> None:
    report.section(f"quantizer: K={QUANT_K}, {QUANT_DIM}-dim l2-normalised, N={QUANT_N}, EMA, rotation trick off")
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError as err:
        _missing(report, "quantizer benchmark", err)
        return
    torch.manual_seed(0)
    batch, side = QUANT_N // 1024, 32
    theirs = VectorQuantize(dim=QUANT_DIM, codebook_size=QUANT_K, use_cosine_sim=True, rotation_trick=False,
                            decay=0.99, commitment_weight=0.25)
    ours = VectorQuantizer(VectorQuantizerConfig(codebook_size=QUANT_K, l2_normalize=True, use_ema=True, ema_decay=0.99,
                                                 commitment_beta=0.25), QUANT_DIM)
    with torch.no_grad():
        ours.codebook.copy_(theirs._codebook.embed[0])  # the identical codebook, (K, E)
    x = torch.randn(batch, side * side, QUANT_DIM)  # theirs: (B, N, D)
    z = x.transpose(1, 2).reshape(batch, QUANT_DIM, side, side).contiguous()  # ours: (B, D, h, w), same vectors

    def train_theirs():
        xi = x.clone().requires_grad_()
        quantized, _, loss = theirs(xi)
        (quantized.square().mean() + loss.sum()).backward()

    def train_ours():
        zi = z.clone().requires_grad_()
        out = ours(zi)
        (out.quantized.square().mean() + out.loss).backward()

    def lookup_theirs():
        with torch.no_grad():
            return theirs(x)[1]

    def lookup_ours():
        return ours.lookup(z)

    theirs.train(), ours.train()
    train = interleaved_times({"ours": train_ours, "theirs": train_theirs}, reps)
    mem_theirs = peak_memory_mib(train_theirs)
    mem_ours = peak_memory_mib(train_ours)
    theirs.eval(), ours.eval()
    lookup = interleaved_times({"ours": lookup_ours, "theirs": lookup_theirs}, reps)
    lookup_mem_theirs = peak_memory_mib(lookup_theirs)
    lookup_mem_ours = peak_memory_mib(lookup_ours)
    with torch.no_grad():  # training moved both codebooks apart: make them identical again
        ours.codebook.copy_(theirs._codebook.embed[0])
    agree = (lookup_ours().reshape(-1) == lookup_theirs().reshape(-1)).double().mean().item()

    speedup = train["theirs"]["wall_s"] / train["ours"]["wall_s"]
    speedup_cpu = train["theirs"]["cpu_s"] / train["ours"]["cpu_s"]
    report.put("quantizer_train_time_ours_s", round(train["ours"]["wall_s"], 4))
    report.put("quantizer_train_time_vqpytorch_s", round(train["theirs"]["wall_s"], 4))
    report.put("quantizer_train_cpu_time_ours_s", round(train["ours"]["cpu_s"], 4))
    report.put("quantizer_train_cpu_time_vqpytorch_s", round(train["theirs"]["cpu_s"], 4))
    report.put("quantizer_speedup_vs_vqpytorch", round(speedup, 2),
               f"train fwd+bwd: ours {train['ours']['wall_s'] * 1e3:.0f} ms, vector-quantize-pytorch "
               f"{train['theirs']['wall_s'] * 1e3:.0f} ms -> {speedup:.2f}x (CPU time: {speedup_cpu:.2f}x)")
    report.put("quantizer_speedup_vs_vqpytorch_cpu_time", round(speedup_cpu, 2))
    report.put("quantizer_peak_memory_ours_mib", mem_ours)
    report.put("quantizer_peak_memory_vqpytorch_mib", mem_theirs)
    if mem_ours is not None and mem_theirs:
        ratio = mem_ours / mem_theirs
        report.put("quantizer_memory_ratio_vs_vqpytorch", float(f"{ratio:.3g}"),
                   f"train peak memory: ours {mem_ours:.1f} MiB, theirs {mem_theirs:.0f} MiB -> ratio {ratio:.2g}")
    lookup_speedup = lookup["theirs"]["wall_s"] / lookup["ours"]["wall_s"]
    report.put("quantizer_lookup_time_ours_s", round(lookup["ours"]["wall_s"], 4))
    report.put("quantizer_lookup_time_vqpytorch_s", round(lookup["theirs"]["wall_s"], 4))
    report.put("quantizer_lookup_speedup_vs_vqpytorch", round(lookup_speedup, 2),
               f"eval lookup: ours {lookup['ours']['wall_s'] * 1e3:.0f} ms, theirs "
               f"{lookup['theirs']['wall_s'] * 1e3:.0f} ms -> {lookup_speedup:.2f}x; peak memory ours "
               f"{lookup_mem_ours:.1f} MiB, theirs {lookup_mem_theirs:.0f} MiB")
    report.put("quantizer_lookup_peak_memory_ours_mib", lookup_mem_ours)
    report.put("quantizer_lookup_peak_memory_vqpytorch_mib", lookup_mem_theirs)
    report.put("quantizer_id_agreement_vs_vqpytorch", agree,
               f"identical ids with the identical codebook: {100 * agree:.4f}% of {QUANT_N}")


# --- 2b. quantizer families -----------------------------------------------------------------------
def _compare_family(report: Report, key: str, reps: int, ours, theirs, z: torch.Tensor, x: torch.Tensor,
                    ours_loss: Callable, theirs_loss: Callable, theirs_ids: Callable, train: bool = True,
                    sync: Callable[[], None] | None = None) -> None:
    """Time ours on z (B, D, h, w) against theirs on x (B, N, D), the same vectors; ids compared in eval mode."""
    def train_ours():
        zi = z.clone().requires_grad_()
        ours_loss(ours(zi), zi).backward()

    def train_theirs():
        xi = x.clone().requires_grad_()
        theirs_loss(theirs(xi), xi).backward()

    def lookup_ours():
        return ours.lookup(z)

    def lookup_theirs():
        with torch.no_grad():
            return theirs_ids(theirs(x))

    if train:
        ours.train(), theirs.train()
        # Memory from the first timed runs, and at least 2 s of rounds: a few runs of the slow contestants,
        # hundreds of the millisecond ones (FSQ), whose medians of 2 were noise on a shared machine.
        times = interleaved_times({"ours": train_ours, "theirs": train_theirs}, reps, min_seconds=2.0, memory=True)
        mem_theirs, mem_ours = times["theirs"]["peak_mib"], times["ours"]["peak_mib"]
        speedup = times["theirs"]["wall_s"] / times["ours"]["wall_s"]
        speedup_cpu = times["theirs"]["cpu_s"] / times["ours"]["cpu_s"]
        report.put(f"{key}_speedup_vs_vqpytorch", round(speedup, 2),
                   f"{key} train fwd+bwd: ours {times['ours']['wall_s'] * 1e3:.1f} ms, vector-quantize-pytorch "
                   f"{times['theirs']['wall_s'] * 1e3:.1f} ms -> {speedup:.2f}x "
                   f"(CPU time {speedup_cpu:.2f}x; median of {times['ours']['reps']})")
        report.put(f"{key}_speedup_vs_vqpytorch_cpu_time", round(speedup_cpu, 2))
        report.put(f"{key}_train_time_ours_s", round(times["ours"]["wall_s"], 4))
        report.put(f"{key}_train_time_vqpytorch_s", round(times["theirs"]["wall_s"], 4))
        report.put(f"{key}_peak_memory_ours_mib", mem_ours)
        report.put(f"{key}_peak_memory_vqpytorch_mib", mem_theirs)
        if mem_ours is not None and mem_theirs:
            report.put(f"{key}_memory_ratio_vs_vqpytorch", float(f"{mem_ours / mem_theirs:.3g}"),
                       f"{key} train peak memory: ours {mem_ours:.1f} MiB, theirs {mem_theirs:.1f} MiB -> "
                       f"ratio {mem_ours / mem_theirs:.2g}")
    ours.eval(), theirs.eval()
    if sync is not None:  # training moved learned codebooks apart: make them identical again
        sync()
    times = interleaved_times({"ours": lookup_ours, "theirs": lookup_theirs}, reps, min_seconds=2.0)
    speedup = times["theirs"]["wall_s"] / times["ours"]["wall_s"]
    agree = (times["ours"]["result"].reshape(-1) == theirs_ids_flat(times["theirs"]["result"])).double().mean().item()
    report.put(f"{key}_lookup_speedup_vs_vqpytorch", round(speedup, 2),
               f"{key} eval lookup: ours {times['ours']['wall_s'] * 1e3:.1f} ms, theirs "
               f"{times['theirs']['wall_s'] * 1e3:.1f} ms -> {speedup:.2f}x; identical ids {100 * agree:.2f}%")
    report.put(f"{key}_id_agreement_vs_vqpytorch", agree)


def theirs_ids_flat(ids: torch.Tensor) -> torch.Tensor:
    return ids.reshape(-1).long()


def bench_families(report: Report, reps: int, families: list[str]) -> None:
    report.section(f"quantizer families against vector-quantize-pytorch, N={QUANT_N} vectors")
    try:
        import vector_quantize_pytorch as vqp
    except ImportError as err:
        _missing(report, "quantizer family benchmark", err)
        return
    torch.manual_seed(0)
    batch, side = QUANT_N // 1024, 32

    def inputs(dim: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(batch, side * side, dim) * scale  # theirs: (B, N, D)
        return x.transpose(1, 2).reshape(batch, dim, side, side).contiguous(), x  # ours: (B, D, h, w)

    # FSQ, fsq-f8's levels; no auxiliary loss in either. Each family seeds its own inputs and codebooks, so
    # that its figures do not depend on which other families --families runs.
    if "fsq" in families:
        torch.manual_seed(0)
        z, x = inputs(4, 2.0)
        _compare_family(report, "fsq", reps, FiniteScalarQuantizer(FSQConfig(levels=(8, 8, 8, 8)), 4),
                        vqp.FSQ(levels=[8, 8, 8, 8]), z, x,
                        lambda o, zi: o.quantized.square().mean() + o.loss,
                        lambda o, xi: o[0].square().mean(), lambda o: o[1])

    if "lfq" in families:
        torch.manual_seed(0)
        # LFQ at 12 bits with the entropy penalty (weight 0.1, gamma 1, T = 0.01) and commitment 0.25 in both.
        z, x = inputs(12)
        ours = LookupFreeQuantizer(LFQConfig(entropy_group_bits=12), 12)
        theirs = vqp.LFQ(dim=12, codebook_size=2**12, entropy_loss_weight=0.1, commitment_loss_weight=0.25,
                         diversity_gamma=1.0)
        _compare_family(report, "lfq", reps, ours, theirs, z, x,
                        lambda o, zi: o.quantized.square().mean() + o.loss,
                        lambda o, xi: o[0].square().mean() + o[2], lambda o: o[1])
        # LFQ at 18 bits (lfq-f16): eval lookup only (their training forward needs (N, 2^18) fp32 = 16 GiB).
        z, x = inputs(18)
        _compare_family(report, "lfq18", reps, LookupFreeQuantizer(LFQConfig(), 18),
                        vqp.LFQ(dim=18, codebook_size=2**18), z, x, None, None, lambda o: o[1], train=False)
        print(f"  lfq18 training: ours uses 2 groups of 9 bits, (N, 512) per group; vector-quantize-pytorch forms "
              f"(N, 2^18) fp32 = {QUANT_N * 2**18 * 4 / 2**30:.0f} GiB: not run")

    if "rvq" in families:
        torch.manual_seed(0)
        # Residual VQ, rvq-f16's sizes: 4 depths of 4096 Euclidean 16-dim codes, EMA updates, commitment 0.25.
        z, x = inputs(16)
        codebook = VectorQuantizerConfig(codebook_size=4096, l2_normalize=False, use_ema=True, ema_decay=0.99,
                                         commitment_beta=0.25)
        ours = ResidualVectorQuantizer(ResidualVQConfig(num_depths=4, codebook=codebook), 16)
        theirs = vqp.ResidualVQ(dim=16, num_quantizers=4, codebook_size=4096, decay=0.99, commitment_weight=0.25)

        @torch.no_grad()
        def sync() -> None:
            for k, layer in enumerate(theirs.layers):  # the identical codebooks, (K, E) each
                ours.layer(k).codebook.copy_(layer._codebook.embed[0])

        sync()
        _compare_family(report, "rvq", reps, ours, theirs, z, x,
                        lambda o, zi: o.quantized.square().mean() + o.loss,
                        lambda o, xi: o[0].square().mean() + o[2].sum(), lambda o: o[1], sync=sync)


# --- 3. autoencoders against diffusers ------------------------------------------------------------
def diffusers_vq(config) -> torch.nn.Module:
    from diffusers import VQModel

    levels = len(config.channel_mult)
    return VQModel(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.base_channels * m for m in config.channel_mult),
        layers_per_block=config.layers_per_block, act_fn="silu", latent_channels=config.z_channels,
        num_vq_embeddings=config.vocab_size, norm_num_groups=config.norm_groups,
        vq_embed_dim=config.latent_channels, mid_block_add_attention=config.mid_attention,
    ).eval()


def diffusers_kl(config) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    levels = len(config.channel_mult)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.base_channels * m for m in config.channel_mult),
        layers_per_block=config.layers_per_block, act_fn="silu", latent_channels=config.latent_channels,
        norm_num_groups=config.norm_groups, mid_block_add_attention=config.mid_attention,
    ).eval()


def bench_autoencoders(report: Report, reps: int, quick: bool) -> None:
    report.section("encoder/decoder against diffusers (random weights, 256^2)")
    try:
        import diffusers  # noqa: F401
    except ImportError as err:
        _missing(report, "autoencoder benchmark", err)
        return
    conv_peak = report.data.get("peak_conv_fp32_gflops")
    torch.manual_seed(0)
    tok = ImageTokenizer.from_preset("vq-f8")
    peer = diffusers_vq(tok.config)
    params = (sum(p.numel() for p in tok.model.parameters()), sum(p.numel() for p in peer.parameters()))
    report.put("vq_f8_parameters_ours_diffusers", list(params),
               f"vq-f8: {params[0] / 1e6:.1f}M parameters (ours), {params[1] / 1e6:.1f}M (diffusers VQModel)")
    grid = 256 // tok.downsample_factor

    def peer_encode(x):
        with torch.no_grad():
            h = peer.encode(x * 2 - 1).latents  # diffusers' encode stops at continuous latents
            return peer.quantize(h)[2][2].reshape(x.shape[0], grid, grid)  # the ids, as ours returns them

    def peer_decode(ids):
        with torch.no_grad():
            z = peer.quantize.get_codebook_entry(ids.reshape(-1), (ids.shape[0], grid, grid, tok.config.latent_channels))
            return peer.decode(z, force_not_quantize=True).sample

    batches = (16, 1)
    for batch in batches:
        x = torch.rand(batch, 3, 256, 256)
        ids = torch.randint(0, tok.vocab_size, (batch, grid, grid))
        # Batch 1 is cheap: at least 3 repetitions even with --quick (one run is too noisy on a shared CPU).
        reps_b = reps if batch > 1 else max(reps, 3)
        enc = interleaved_times({"ours": lambda: tok.encode(x), "diffusers": lambda: peer_encode(x)}, reps_b,
                                warmup=1 if batch == 1 else 0)
        flops = count_flops(lambda: tok.encode(x[:1])) * batch
        ratio = enc["ours"]["wall_s"] / enc["diffusers"]["wall_s"]
        speedup = 1 / ratio
        gflops = flops / enc["ours"]["wall_s"] / 1e9
        key = "encode_speedup_vs_diffusers" if batch == 16 else f"encode_speedup_vs_diffusers_batch{batch}"
        report.put(f"encode_time_ours_batch{batch}_s", round(enc["ours"]["wall_s"], 3))
        report.put(f"encode_time_diffusers_batch{batch}_s", round(enc["diffusers"]["wall_s"], 3))
        report.put(f"encode_cpu_time_ours_batch{batch}_s", round(enc["ours"]["cpu_s"], 3))
        report.put(f"encode_cpu_time_diffusers_batch{batch}_s", round(enc["diffusers"]["cpu_s"], 3))
        report.put(f"encode_gflops_ours_batch{batch}", round(gflops, 1))
        if conv_peak:
            report.put(f"encode_fraction_of_conv_peak_batch{batch}", round(gflops / conv_peak, 3))
        report.put(key, round(speedup, 3),
                   f"encode batch {batch}: ours {batch / enc['ours']['wall_s']:.2f} img/s, diffusers "
                   f"{batch / enc['diffusers']['wall_s']:.2f} img/s -> {speedup:.2f}x (CPU time "
                   f"{enc['diffusers']['cpu_s'] / enc['ours']['cpu_s']:.2f}x); ours {gflops:.0f} GFLOP/s"
                   + (f" = {gflops / conv_peak:.2f} of the conv peak" if conv_peak else ""))
        if quick and batch == 16:
            continue  # decode at batch 16 costs twice the encode: --quick measures decode at batch 1 only
        dec = interleaved_times({"ours": lambda: tok.decode(ids), "diffusers": lambda: peer_decode(ids)}, reps_b,
                                warmup=1 if batch == 1 else 0)
        dflops = count_flops(lambda: tok.decode(ids[:1])) * batch
        dspeed = dec["diffusers"]["wall_s"] / dec["ours"]["wall_s"]
        report.put(f"decode_time_ours_batch{batch}_s", round(dec["ours"]["wall_s"], 3))
        report.put(f"decode_time_diffusers_batch{batch}_s", round(dec["diffusers"]["wall_s"], 3))
        report.put(f"decode_cpu_time_ours_batch{batch}_s", round(dec["ours"]["cpu_s"], 3))
        report.put(f"decode_cpu_time_diffusers_batch{batch}_s", round(dec["diffusers"]["cpu_s"], 3))
        report.put(f"decode_speedup_vs_diffusers_batch{batch}", round(dspeed, 3),
                   f"decode batch {batch}: ours {batch / dec['ours']['wall_s']:.2f} img/s, diffusers "
                   f"{batch / dec['diffusers']['wall_s']:.2f} img/s -> {dspeed:.2f}x (CPU time "
                   f"{dec['diffusers']['cpu_s'] / dec['ours']['cpu_s']:.2f}x); ours "
                   f"{dflops / dec['ours']['wall_s'] / 1e9:.0f} GFLOP/s")
    del tok, peer

    vae = ImageVAE.from_preset("kl-f8")
    peer_kl = diffusers_kl(vae.config)
    x = torch.rand(1, 3, 256, 256)

    def peer_kl_encode():
        with torch.no_grad():
            return peer_kl.encode(x * 2 - 1).latent_dist.mode()

    enc = interleaved_times({"ours": lambda: vae.encode(x), "diffusers": peer_kl_encode}, max(reps, 3))
    speedup = enc["diffusers"]["wall_s"] / enc["ours"]["wall_s"]
    report.put("vae_encode_time_ours_batch1_s", round(enc["ours"]["wall_s"], 3))
    report.put("vae_encode_time_diffusers_batch1_s", round(enc["diffusers"]["wall_s"], 3))
    report.put("vae_encode_speedup_vs_diffusers_batch1", round(speedup, 3),
               f"kl-f8 encode batch 1: ours {1 / enc['ours']['wall_s']:.2f} img/s, diffusers AutoencoderKL "
               f"{1 / enc['diffusers']['wall_s']:.2f} img/s -> {speedup:.2f}x")


# --- 4. fast path ---------------------------------------------------------------------------------
def load_photos(folder: Path, count: int) -> list[torch.Tensor]:
    from tokenizer.image_io import read_image
    from tokenizer.inputs import list_images

    return [read_image(p) for p in list_images(folder, "--photos", limit=count)]


def load_tokenizer(spec: str | None, device: torch.device) -> tuple[ImageTokenizer, str]:
    if spec:
        return ImageTokenizer.from_pretrained(spec, device=device), spec
    try:
        return ImageTokenizer.from_pretrained(None, device=device), "bundled"
    except (FileNotFoundError, OSError, ValueError):
        print("  no bundled tokenizer: using random vq-f8-cpu weights (ids of an untrained model)")
        return ImageTokenizer.from_preset("vq-f8-cpu").to(device), "vq-f8-cpu (random weights)"


def bench_fast_path(report: Report, reps: int, quick: bool, model: str | None, photos: Path,
                    device: torch.device) -> None:
    report.section(f"fast inference path (bf16 autocast + channels-last) against fp32, real photos, on {device}")
    tok, name = load_tokenizer(model, device)
    images = load_photos(photos, 4 if quick else 24)
    landscape = [img if img.shape[1] <= img.shape[2] else img.transpose(1, 2) for img in images]  # (3, H, W), H <= W
    batch = torch.stack([img for img in landscape if img.shape == landscape[0].shape])  # (B, 3, H, W)
    report.put("fast_path_model", name)
    report.put("fast_path_images", f"{batch.shape[0]} photos from {photos} at {batch.shape[3]}x{batch.shape[2]}")
    report.put("bf16_supported", bf16_supported(device), f"{name}; {batch.shape[0]} photos {batch.shape[3]}x{batch.shape[2]}; "
               f"native bf16 on {device}: {bf16_supported(device)}")
    fast = ImageTokenizer.from_config(tok.config).to(device)
    fast.load_state_dict(tok.state_dict())
    fast.optimize_for_inference()
    times = interleaved_times({"fp32": lambda: tok.encode(batch), "fast": lambda: fast.encode(batch)}, reps)
    ids32, ids_fast = tok.encode(batch), fast.encode(batch)
    agree = (ids32 == ids_fast).double().mean().item()
    speedup = times["fp32"]["wall_s"] / times["fast"]["wall_s"]
    report.put("fast_encode_time_fp32_s", round(times["fp32"]["wall_s"], 3))
    report.put("fast_encode_time_fast_s", round(times["fast"]["wall_s"], 3))
    report.put("fast_path_encode_speedup", round(speedup, 3),
               f"encode: fp32 {times['fp32']['wall_s']:.2f} s, fast {times['fast']['wall_s']:.2f} s -> {speedup:.2f}x "
               f"(CPU time {times['fp32']['cpu_s'] / times['fast']['cpu_s']:.2f}x)")
    report.put("fast_path_encode_speedup_cpu_time", round(times["fp32"]["cpu_s"] / times["fast"]["cpu_s"], 3))
    report.put("fast_path_id_agreement", agree, f"identical ids fast vs fp32: {100 * agree:.2f}% of {ids32.numel()}")
    dec = interleaved_times({"fp32": lambda: tok.decode(ids32), "fast": lambda: fast.decode(ids32)}, reps)
    rec32, rec_fast = tok.decode(ids32), fast.decode(ids32)
    from tokenizer.metrics import psnr

    dspeed = dec["fp32"]["wall_s"] / dec["fast"]["wall_s"]
    match = float(psnr(rec32, rec_fast).mean())
    report.put("fast_path_decode_speedup", round(dspeed, 3),
               f"decode: fp32 {dec['fp32']['wall_s']:.2f} s, fast {dec['fast']['wall_s']:.2f} s -> {dspeed:.2f}x; "
               f"PSNR of fast vs fp32 decode of the same ids {match:.1f} dB")
    report.put("fast_path_decode_psnr_vs_fp32_db", round(match, 2))


# --- 5. large images ------------------------------------------------------------------------------
def bench_large(report: Report, quick: bool, model: str | None, device: torch.device) -> None:
    report.section(f"peak memory of large images on {device}")
    tok, name = load_tokenizer(model, device)
    vae = ImageVAE.from_preset("kl-f8-cpu").to(device)
    sizes = (1024,) if quick else (1024, 2048)
    for size in sizes:
        x = torch.rand(3, size, size)
        for label, model_ in ((f"tokenizer ({name})", tok), ("vae (kl-f8-cpu)", vae)):
            short = "tokenizer" if model_ is tok else "vae"
            t0 = time.perf_counter()
            enc_mem = peak_memory_mib(lambda: model_.encode(x), device)
            enc_time = time.perf_counter() - t0
            code = model_.encode(x)
            dec_mem = peak_memory_mib(lambda: model_.decode(code), device)
            report.put(f"{short}_encode_peak_mib_{size}", enc_mem)
            report.put(f"{short}_decode_peak_mib_{size}", dec_mem,
                       f"{label} {size}^2: encode peak +{enc_mem:.0f} MiB ({enc_time:.1f} s), decode peak +{dec_mem:.0f} MiB")


# --- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions and sizes (same models)")
    p.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--model", default=None, help="tokenizer for the fast-path and memory sections (default: bundled)")
    p.add_argument("--photos", type=Path, default=Path("/work/shared/data/kodak24"),
                   help="real photos for the fast-path id agreement")
    p.add_argument("--device", default=None,
                   help="device of the fast-path and large-image sections (default: cuda when available, else cpu)")
    p.add_argument("--families", nargs="*", choices=FAMILIES, default=list(FAMILIES),
                   help="quantizer families of the families section (default: all)")
    p.add_argument("--only", nargs="*", choices=["peak", "quantizer", "families", "autoencoders", "fast", "large"],
                   help="run only these sections")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = 2 if args.quick else 5
    device = resolve_device(args.device)
    report = Report()
    report.put("settings", {"quick": args.quick, "threads": torch.get_num_threads(), "torch": torch.__version__,
                            "device": str(device),
                            "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
                            "repetitions": reps})
    print(f"imgtok benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, quick={args.quick}, "
          f"device {device} (sections fast and large; the others measure the CPU)")
    sections = args.only or ["peak", "quantizer", "families", "autoencoders", "fast", "large"]
    started = time.time()
    if "peak" in sections:
        bench_peak(report, reps)
    if "quantizer" in sections:
        bench_quantizer(report, reps)
    if "families" in sections:
        bench_families(report, reps, args.families)
    if "autoencoders" in sections:
        bench_autoencoders(report, 1 if args.quick else 3, args.quick)
    if "fast" in sections:
        if args.photos.is_dir():
            bench_fast_path(report, reps, args.quick, args.model, args.photos, device)
        else:
            print(f"  fast path skipped: --photos {args.photos} is not a directory")
    if "large" in sections:
        bench_large(report, args.quick, args.model, device)
    report.put("seconds", round(time.time() - started, 1), f"\ntotal {time.time() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report.data, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
