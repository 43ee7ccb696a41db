"""Multi-process training is correct: ranks stop together, keep identical models, resume exactly, and the
step makes no host-device syncs outside logging steps.

Gloo ranks over loopback, spawned (not forked), each with a process-group timeout of one minute, so a
rank left waiting fails the test with an error instead of hanging it. Tiny smoke models, a few steps.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from safetensors.torch import load_file, save_file

from train.config import TrainConfig, smoke


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp_images")
    rng = np.random.default_rng(0)
    for i in range(6):
        h, w = (48, 64) if i % 2 else (64, 40)
        image = np.kron(rng.random((h // 8, w // 8, 3)), np.ones((8, 8, 1)))
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(photo_dir: Path, out: Path, preset: str, **fields) -> dict:
    cfg = smoke(TrainConfig(preset=preset, data=[str(photo_dir)], out=str(out), amp="none", lr=3e-3,
                            warmup_steps=1, dist_timeout_minutes=1.0))
    cfg.ckpt_every = cfg.sample_every = 100  # checkpoints and samples only where a test asks
    for key, value in fields.items():
        setattr(cfg, key, value)
    return cfg.to_dict()


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def _worker(rank: int, world: int, port: int, jobs: list[dict], out: str) -> None:
    """Run each job's trainer in turn in one process group; save what the test compares."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from train.loop import Trainer

    for job in jobs:
        if job.get("frozen_clock_rank") == rank:  # this rank's own clock never says "out of time"
            time.monotonic = lambda: 0.0
        config = TrainConfig.from_dict(job["config"])
        config.out = job.get("out_by_rank", {}).get(rank, config.out)  # a node-local disk
        trainer = Trainer(config, resume=job.get("resume", False))
        trainer.fit(stop_after=job.get("stop_after", 0))
        tensors = {f"model.{k}": v for k, v in _state(trainer.model).items()}
        tensors.update({f"ema.{k}": v for k, v in _state(trainer.ema).items()})
        if trainer.disc is not None:
            tensors.update({f"disc.{k}": v for k, v in _state(trainer.disc).items()})
        if trainer.lecam is not None:
            tensors.update({f"lecam.{k}": v for k, v in _state(trainer.lecam).items()})
        tensors["rng"] = torch.get_rng_state()
        save_file(tensors, os.path.join(out, f"{job['name']}_rank{rank}.safetensors"))
        done = json.loads((Path(job["config"]["out"]) / "log.jsonl").read_text().splitlines()[-1])["step"]
        Path(out, f"{job['name']}_rank{rank}.json").write_text(json.dumps({"step": done}))
    torch.distributed.destroy_process_group()


def _spawn(world: int, jobs: list[dict], out: Path) -> None:
    mp.spawn(_worker, args=(world, _free_port(), jobs, str(out)), nprocs=world, join=True)


def _load(out: Path, name: str, rank: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / f"{name}_rank{rank}.safetensors"))


def test_max_minutes_stop_is_rank_zeros_decision(photo_dir, tmp_path):
    # Rank 0 is out of time at its first check (step 2); rank 1's clock is frozen and would never stop on
    # its own: deciding per rank, rank 0 waits in the final checkpoint while rank 1 is in the next step.
    run = tmp_path / "run"
    cfg = _config(photo_dir, run, "vq-f8", steps=50, log_every=2, max_minutes=1e-6)
    _spawn(2, [{"name": "stop", "config": cfg, "frozen_clock_rank": 1}], tmp_path)
    steps = [json.loads((tmp_path / f"stop_rank{r}.json").read_text())["step"] for r in range(2)]
    assert steps == [2, 2]
    checkpoint = run / "checkpoints" / "step_0000002"
    assert (checkpoint / "model.safetensors").is_file()
    assert sorted(p.name for p in (checkpoint / "rng").iterdir()) == ["rank_00000.safetensors", "rank_00001.safetensors"]
    assert (run / "export" / "model.safetensors").is_file()


def test_three_ranks_keep_identical_generator_and_discriminator(photo_dir, tmp_path):
    cfg = _config(photo_dir, tmp_path / "gan", "vq-f8", steps=4, gan_weight=0.5, gan_start=0, lecam_weight=0.1,
                  entropy_weight=0.05)
    _spawn(3, [{"name": "gan", "config": cfg}], tmp_path)
    ranks = [_load(tmp_path, "gan", r) for r in range(3)]
    assert any(k.startswith("disc.") for k in ranks[0]) and "lecam.real_ema" in ranks[0]
    for key in ranks[0]:
        if key == "rng":  # a seed per rank: their streams differ
            assert not torch.equal(ranks[0][key], ranks[1][key])
            continue
        for other in ranks[1:]:
            assert torch.equal(ranks[0][key], other[key]), key


def test_kill_and_resume_equals_uninterrupted_with_per_rank_noise(photo_dir, tmp_path):
    # kl-f8 draws posterior samples from each rank's global generator: after a resume, each rank must
    # continue its own stream (restoring rank 0's everywhere gives every rank the same noise).
    full = _config(photo_dir, tmp_path / "full", "kl-f8", steps=6, log_every=1, denoise_noise_std=0.05)
    split = _config(photo_dir, tmp_path / "split", "kl-f8", steps=6, log_every=1, denoise_noise_std=0.05)
    _spawn(2, [{"name": "full", "config": full},
               {"name": "first", "config": split, "stop_after": 3},
               {"name": "resumed", "config": split, "resume": True}], tmp_path)
    checkpoint = tmp_path / "split" / "checkpoints" / "step_0000003" / "rng"
    saved = [load_file(str(checkpoint / f"rank_0000{r}.safetensors"))["torch"] for r in range(2)]
    assert not torch.equal(saved[0], saved[1])  # per-rank streams saved, not rank 0's for all
    for rank in range(2):
        a, b = _load(tmp_path, "full", rank), _load(tmp_path, "resumed", rank)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (rank, key)
    assert not torch.equal(_load(tmp_path, "resumed", 0)["rng"], _load(tmp_path, "resumed", 1)["rng"])
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_resume_fails_on_every_rank_when_one_cannot_read_the_checkpoint(photo_dir, tmp_path):
    # Node-local --out: rank 1's run folder lacks the checkpoint that rank 0 found. Every rank must raise
    # (none left waiting in a collective), and the message says what to do.
    cfg = _config(photo_dir, tmp_path / "run", "kl-f8", steps=2)
    with pytest.raises(Exception, match="cannot read checkpoint"):
        _spawn(2, [{"name": "first", "config": cfg},
                   {"name": "again", "config": {**cfg, "steps": 4}, "resume": True,
                    "out_by_rank": {1: str(tmp_path / "node1")}}], tmp_path)
    assert (tmp_path / "first_rank1.json").is_file()  # the first run ended normally; the resume failed


def test_torchrun_with_one_process_runs_ddp_with_no_host_syncs_outside_logging(photo_dir, tmp_path, monkeypatch):
    """``torchrun --nproc_per_node 1`` takes the DDP path, and a training step reads nothing back from the
    device between logging steps: calls that would sync (item, bool, float, int, tolist, nonzero) made
    from the trainer's, the losses' or the model's code are counted per step."""
    import tokenizer
    import train
    from torch.nn.parallel import DistributedDataParallel
    from train.loop import Trainer

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    cfg = TrainConfig.from_dict(_config(photo_dir, tmp_path / "run", "vq-f8", steps=8, log_every=4, gan_weight=0.5,
                                        gan_start=0, lecam_weight=0.1, entropy_weight=0.05,
                                        model={**smoke(TrainConfig(preset="vq-f8")).model, "quantizer.dead_code_threshold": 0.0}))
    ours = (str(Path(tokenizer.__file__).parent), str(Path(train.__file__).parent))
    host_side = str(Path(train.__file__).parent / "data.py")  # CPU crops from CPU generators: no device
    syncs = []

    def counting(name, original):
        def wrapper(*args, **kwargs):
            caller = __import__("sys")._getframe(1).f_code.co_filename
            if caller.startswith(ours) and caller != host_side:
                syncs.append(f"{name} at {caller}:{__import__('sys')._getframe(1).f_lineno}")
            return original(*args, **kwargs)
        return wrapper

    for name in ("item", "__bool__", "__float__", "__int__", "tolist", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch, "nonzero", counting("torch.nonzero", torch.nonzero))
    try:
        trainer = Trainer(cfg)
        assert isinstance(trainer.net, DistributedDataParallel)
        per_step: list[list[str]] = []
        step_fn = trainer.train_step

        def recording(step, batch):
            per_step.append(syncs[:])  # what the previous step (and its bookkeeping) synced
            syncs.clear()
            return step_fn(step, batch)

        trainer.train_step = recording
        trainer.fit()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    per_step = per_step[1:] + [syncs[:]]  # per_step[i]: step i's own syncs
    quiet = [s for i, s in enumerate(per_step) if i > 0 and (i + 1) % 4 != 0]  # not step 0 (k-means), not logging
    assert len(quiet) == 5
    assert all(len(s) == 0 for s in quiet), quiet


def test_each_rank_reads_its_share_and_the_image_cache_is_bounded(tmp_path):
    from train.data import RandomCrops

    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        path = tmp_path / f"photo{i}.png"
        Image.fromarray((rng.random((600, 800, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    shards = [RandomCrops(paths, 32, rank=r, world=3, max_short_side=256, cache_mb=1) for r in range(3)]
    assert sorted(p for s in shards for p in s.paths) == sorted(paths)  # disjoint shares covering every file
    assert all(len(s.paths) == 2 for s in shards)
    crops = RandomCrops(paths, 32, max_short_side=256, cache_mb=1)
    for step in range(12):
        assert crops[step, 0].shape == (3, 32, 32)
    cached = list(crops._images.values())
    assert cached and all(min(image.shape[1:]) == 256 for image in cached)  # kept at max_short_side, not 600
    assert sum(image.numel() for image in cached) <= 2**20 < 6 * 3 * 256 * 341  # 1 MiB: not all six fit
