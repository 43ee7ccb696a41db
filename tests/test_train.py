"""Training: smoke runs learn, kill-and-resume is exact, DDP ranks agree, GAN weighting behaves."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from safetensors.torch import load_file, save_file

from tokenizer import ImageTokenizer, ImageVAE
from tokenizer.config import ConfigError
from train.__main__ import main as train_main
from train.config import TrainConfig, smoke
from train.loop import Trainer, lr_at
from train.losses import (adaptive_gan_weight, codebook_entropy_loss, discriminator_loss, generator_loss,
                          patch_colour_loss)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """Smooth random images (learnable in a few steps), several sizes, plus one corrupt file."""
    folder = tmp_path_factory.mktemp("train_images")
    rng = np.random.default_rng(0)
    for i in range(6):
        h, w = (48, 64) if i % 2 else (64, 40)
        low = rng.random((h // 8, w // 8, 3))
        image = np.kron(low, np.ones((8, 8, 1)))  # blocky, so a tiny model can learn it quickly
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return folder


def _read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _args(data: Path, out: Path, preset: str, *sets: str) -> list[str]:
    argv = ["--preset", preset, "--data", str(data), "--out", str(out), "--smoke"]
    for s in ("lr=3e-3", "warmup_steps=1", "log_every=1", "amp=none", *sets):
        argv += ["--set", s]
    return argv


@pytest.mark.parametrize("preset", ["vq-f8", "kl-f8"])
def test_smoke_run_learns_and_exports(photo_dir, tmp_path, preset, capsys):
    run = tmp_path / "run"
    assert train_main(_args(photo_dir, run, preset, "steps=40", "ckpt_every=100")) == 0
    log = _read_log(run)
    assert len(log) == 40
    first = np.mean([r["rec"] for r in log[:5]])
    last = np.mean([r["rec"] for r in log[-5:]])
    assert last < 0.85 * first, (first, last)
    assert "skipping unreadable image" in capsys.readouterr().err  # the corrupt file is reported, not fatal
    cls = ImageTokenizer if preset.startswith("vq") else ImageVAE
    model = cls.from_pretrained(run / "export")
    out = model.encode(torch.rand(3, 32, 32))
    assert out.shape[-2:] == (16, 16)  # smoke models have f = 2
    assert json.loads((run / "train_config.json").read_text())["preset"] == preset
    assert list((run / "samples").glob("*.png"))


def test_set_overrides_model_and_training_fields():
    cfg = TrainConfig(preset="vq-f8")
    cfg.apply_overrides(["model.quantizer.codebook_size=1024", "lr=0.002", "betas=[0.5,0.9]", "amp=bf16"])
    assert cfg.model_config().quantizer.codebook_size == 1024
    assert cfg.lr == 0.002 and cfg.betas == (0.5, 0.9) and cfg.amp == "bf16"
    with pytest.raises(ValueError, match="unknown training config field"):
        cfg.apply_overrides(["no_such_field=1"])
    with pytest.raises(ValueError, match="unknown model config field"):
        TrainConfig(preset="vq-f8", model={"nope": 1}).model_config()
    with pytest.raises(ValueError, match="expected a int"):
        cfg.apply_overrides(["steps=many"])


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)


def test_kill_and_resume_matches_uninterrupted_run(photo_dir, tmp_path):
    sets = ("steps=8", "ckpt_every=100", "model.quantizer.dead_code_threshold=0.5", "model.quantizer.kmeans_init=true",
            "denoise_noise_std=0.05")
    full, split = tmp_path / "full", tmp_path / "split"
    assert train_main(_args(photo_dir, full, "vq-f8", *sets)) == 0
    assert train_main(_args(photo_dir, split, "vq-f8", *sets) + ["--stop-after", "3"]) == 0
    assert train_main(_args(photo_dir, split, "vq-f8", *sets) + ["--resume"]) == 0
    a = load_file(str(full / "export" / "model.safetensors"))
    b = load_file(str(split / "export" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [r["step"] for r in _read_log(split)]
    assert steps == list(range(1, 9))  # no step missing or repeated across the kill


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = Trainer(TrainConfig.from_dict(cfg_dict))
    trainer.fit()
    state = {k: v.detach().clone().contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(state, os.path.join(out, f"rank{rank}.safetensors"))
    torch.distributed.destroy_process_group()


def test_two_process_gloo_ranks_stay_identical(photo_dir, tmp_path):
    cfg = smoke(TrainConfig(preset="vq-f8", data=[str(photo_dir)], out=str(tmp_path / "ddp"), steps=4,
                            amp="none", ckpt_every=100, lr=3e-3, warmup_steps=1))
    cfg.model.update({"quantizer.use_ema": True, "quantizer.dead_code_threshold": 0.5})  # EMA sums and restarts must be synchronised
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg.to_dict(), str(tmp_path)), nprocs=2, join=True)
    r0 = load_file(str(tmp_path / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "rank1.safetensors"))
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    # and the ranks saw different data (seed per rank), so agreement is not trivial
    assert (tmp_path / "ddp" / "export" / "model.safetensors").is_file()


def test_adaptive_gan_weight_is_gradient_norm_ratio():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([0.6, 0.8])
    rec, gan = (w * a).sum(), (w * b).sum()  # gradients a (norm 5) and b (norm 1)
    assert adaptive_gan_weight(rec, gan, w, 1e4).item() == pytest.approx(5 / (1 + 1e-4), rel=1e-5)
    assert adaptive_gan_weight(rec, gan, w, 2.0).item() == pytest.approx(2.0)  # clamped


def test_gan_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.5 * (0.25 + 0.5))
    assert generator_loss(fake, "hinge").item() == pytest.approx(1.0)
    assert generator_loss(fake, "non_saturating").item() > 0
    with pytest.raises(ValueError):
        generator_loss(fake, "wasserstein")


def test_discriminator_off_before_start_step(photo_dir, tmp_path):
    cfg = smoke(TrainConfig(preset="vq-f8", data=[str(photo_dir)], out=str(tmp_path / "gan"), steps=5,
                            amp="none", gan_weight=0.5, gan_start=3, lecam_weight=0.1))
    trainer = Trainer(cfg)
    disc_before = [p.detach().clone() for p in trainer.disc.parameters()]
    batch = torch.rand(2, 3, 32, 32)
    for step in range(5):
        stats = trainer.train_step(step, batch)
        changed = any(not torch.equal(p, q) for p, q in zip(trainer.disc.parameters(), disc_before))
        if step < 3:
            assert "gan_g" not in stats and not changed
        else:
            assert "gan_g" in stats and "gan_d" in stats and stats["gan_weight"] >= 0 and changed


def test_entropy_regulariser_prefers_spread_codes():
    from tokenizer.config import VectorQuantizerConfig
    from tokenizer.quantizer import VectorQuantizer

    vq = VectorQuantizer(VectorQuantizerConfig(codebook_size=8, l2_normalize=True), 4)
    codes = vq.codes()
    spread = codes[torch.arange(8)].t().reshape(1, 4, 2, 4)  # every code used once
    collapsed = codes[torch.zeros(8, dtype=torch.long)].t().reshape(1, 4, 2, 4)  # one code for all
    assert codebook_entropy_loss(vq, spread, 0.01) < codebook_entropy_loss(vq, collapsed, 0.01)


def test_patch_colour_loss_sees_patch_means_only():
    """Hand-computed: L1 of the 2x2 patch means; texture that keeps each patch's mean costs nothing."""
    target = torch.zeros(1, 3, 4, 4)
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(2, 2)  # (4, 4), mean 0 over every 2x2 patch
    assert float(patch_colour_loss(target + checker, target, 2)) == 0.0
    shifted = target.clone()
    shifted[:, 0, :2, :2] += 0.4  # red of one patch of four, on 1 channel of 3: mean |diff| = 0.4 / 12
    assert float(patch_colour_loss(shifted, target, 2)) == pytest.approx(0.4 / 12)
    assert float(patch_colour_loss(torch.ones(1, 3, 5, 5), torch.zeros(1, 3, 5, 5), 2)) == 1.0  # edge row dropped


def test_colour_weight_adds_the_term_to_the_loss(photo_dir, tmp_path):
    cfg = smoke(TrainConfig(preset="vq-f8", data=[str(photo_dir)], out=str(tmp_path / "colour"), steps=2,
                            amp="none", colour_weight=2.0, colour_patch=8))
    trainer = Trainer(cfg)
    batch = torch.rand(2, 3, 32, 32)
    stats = trainer.train_step(0, batch)
    assert "colour" in stats and float(stats["colour"]) > 0


@pytest.mark.parametrize("preset, settings", [
    ("vq-tiny", {"entropy_weight": 0.1, "gan_weight": 0.5, "gan_start": 0}),
    ("fsq-tiny", {}),
    ("lfq-tiny", {"entropy_weight": 0.1}),
    ("bsq-tiny", {"entropy_weight": 0.1}),
    ("rvq-tiny", {}),
])
def test_one_encoder_pass_and_one_entropy_pass_per_training_step(photo_dir, tmp_path, preset, settings, monkeypatch):
    # Every loss of a step (reconstruction, the quantizer's own, the trainer's entropy term, the GAN's
    # adaptive weight) comes from the single forward pass: a second encoder call (e.g. encode_latents for
    # the entropy term) or a second LFQ/BSQ entropy estimate would double their cost.
    cfg = smoke(TrainConfig(preset=preset, data=[str(photo_dir)], out=str(tmp_path / "run"), amp="none", **settings))
    trainer = Trainer(cfg)
    encoder_calls, entropy_calls = [], []
    trainer.model.encoder.register_forward_hook(lambda *_: encoder_calls.append(1))
    quantizer = trainer.model.quantizer
    if hasattr(quantizer, "entropy_loss"):
        original = quantizer.entropy_loss
        monkeypatch.setattr(quantizer, "entropy_loss", lambda x: entropy_calls.append(1) or original(x))
    stats = trainer.train_step(0, torch.rand(2, 3, 32, 32))
    assert len(encoder_calls) == 1
    assert len(entropy_calls) == (1 if hasattr(quantizer, "entropy_loss") else 0)
    assert torch.isfinite(stats["loss"]) and (("entropy" in stats) == (settings.get("entropy_weight", 0) > 0))


@pytest.mark.parametrize("perceptual_batch, seen", [(0, 3), (2, 2), (3, 3), (5, 3)])
def test_perceptual_batch_limits_the_samples_the_perceptual_loss_sees(photo_dir, tmp_path, perceptual_batch, seen):
    cfg = smoke(TrainConfig(preset="vq-tiny", data=[str(photo_dir)], out=str(tmp_path / "run"), amp="none",
                            perceptual_batch=perceptual_batch))
    trainer = Trainer(cfg)
    calls = []

    def fake_perceptual(recon, target):  # records what the loss saw; a distance the step can backpropagate
        calls.append((recon.detach().clone(), target.clone()))
        return (recon - target).abs().mean()

    trainer.perceptual = fake_perceptual
    batch = torch.rand(3, 3, 32, 32)
    stats = trainer.train_step(0, batch)
    (recon, target), = calls
    assert recon.shape == target.shape == (seen, 3, 32, 32)
    assert torch.equal(target, (batch[:seen] * 2 - 1))  # the batch's first samples, each with its own target
    assert float(stats["perceptual"]) == pytest.approx(float((recon - target).abs().mean()))


@pytest.mark.parametrize("amp, perceptual_amp, expected", [("bf16", True, torch.bfloat16), ("bf16", False, None),
                                                          ("none", True, None)])
def test_perceptual_amp_runs_the_perceptual_backbone_under_the_steps_autocast(photo_dir, tmp_path, fake_perceptual, amp,
                                                                              perceptual_amp, expected):
    cfg = smoke(TrainConfig(preset="vq-tiny", data=[str(photo_dir)], out=str(tmp_path / "run"), amp=amp,
                            perceptual_weight=0.1, perceptual_net="vgg", perceptual_amp=perceptual_amp))
    trainer = Trainer(cfg)
    assert fake_perceptual == [expected]
    stats = trainer.train_step(0, torch.rand(2, 3, 32, 32))
    assert torch.isfinite(stats["perceptual"]) and float(stats["perceptual"]) > 0


def test_negative_perceptual_batch_is_refused(photo_dir, tmp_path):
    cfg = smoke(TrainConfig(preset="vq-tiny", data=[str(photo_dir)], out=str(tmp_path / "run"), perceptual_batch=-1))
    with pytest.raises(ConfigError, match="perceptual_batch=-1"):
        Trainer(cfg)
