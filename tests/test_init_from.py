"""``python -m train --init-from MODEL``: a run really starts where the model is, and decoder-only keeps ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tokenizer import AutoencoderConfig, ImageTokenizer, ImageVAE
from tokenizer.pretrained import BUNDLED, WeightsError
from train.__main__ import main as train_main
from train.config import TrainConfig
from train.init_from import read_init_source
from train.loop import Trainer
from train.losses import reconstruction_loss


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("init_from_images")
    rng = np.random.default_rng(1)
    for i in range(4):
        low = rng.random((6, 8, 3))
        image = np.kron(low, np.ones((8, 8, 1)))  # (48, 64, 3), blocky
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def saved_tiny(tmp_path) -> Path:
    """A vq-tiny model, trained for a few steps so that it is not at its initialisation, saved as a folder."""
    model = ImageTokenizer.from_preset("vq-tiny")
    with torch.no_grad():
        for p in model.model.decoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.save_pretrained(tmp_path / "source")


def _argv(data: Path, out: Path, *extra: str, sets: tuple[str, ...] = ()) -> list[str]:
    argv = ["--data", str(data), "--out", str(out), "--smoke", *extra]
    for s in ("lr=3e-3", "warmup_steps=1", "log_every=1", "amp=none", "steps=4", "ckpt_every=100", *sets):
        argv += ["--set", s]
    return argv


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _first_batch_loss(model: torch.nn.Module, cfg: TrainConfig) -> float:
    """The loss ``train_step`` computes at step 0, for ``model`` on the run's first batch."""
    trainer_data = Trainer(cfg).dataset
    batch = torch.stack([trainer_data[(0, slot)] for slot in range(cfg.batch_size)])
    target = batch * 2 - 1
    model.train()
    out = model(target)
    return (reconstruction_loss(out.reconstruction, target, cfg.l1_weight, cfg.l2_weight) + out.quantizer.loss).item()


def test_first_step_loss_is_the_saved_models_and_the_export_moves(photo_dir, saved_tiny, tmp_path):
    run = tmp_path / "run"
    assert train_main(_argv(photo_dir, run, "--init-from", str(saved_tiny))) == 0
    cfg = TrainConfig.load(run / "train_config.json")
    assert cfg.preset == "" and cfg.init_from == str(saved_tiny)
    source = ImageTokenizer.from_pretrained(saved_tiny).model
    expected = _first_batch_loss(source, cfg)
    assert _log(run)[0]["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)

    scratch = tmp_path / "scratch"  # the same run without --init-from starts elsewhere
    assert train_main(_argv(photo_dir, scratch, "--preset", "vq-tiny")) == 0
    assert abs(_log(scratch)[0]["loss"] - expected) > 1e-3

    exported = load_file(str(run / "export" / "model.safetensors"))
    original = load_file(str(saved_tiny / "model.safetensors"))
    assert exported.keys() == original.keys()
    assert any(not torch.equal(exported[k], original[k]) for k in original if k.startswith("decoder."))


def test_decoder_only_keeps_the_ids_and_moves_the_decoder(photo_dir, saved_tiny, tmp_path):
    run = tmp_path / "run"
    assert train_main(_argv(photo_dir, run, "--init-from", str(saved_tiny), "--decoder-only")) == 0
    before = ImageTokenizer.from_pretrained(saved_tiny)
    after = ImageTokenizer.from_pretrained(run / "export")
    image = torch.rand(3, 40, 56)
    assert torch.equal(before.encode(image), after.encode(image))
    b, a = before.model.state_dict(), after.model.state_dict()
    for key in b:
        if key.startswith(("encoder.", "quant_conv.", "quantizer.")):
            assert torch.equal(b[key], a[key]), key  # frozen: not even the EMA codebook statistics move
    assert any(not torch.equal(b[k], a[k]) for k in b if k.startswith("decoder."))
    assert not torch.equal(before.decode(before.encode(image)), after.decode(after.encode(image)))


def test_decoder_only_from_a_training_checkpoint_keeps_the_ids_of_its_ema(photo_dir, saved_tiny, tmp_path):
    first = tmp_path / "first"  # whole-model steps: its checkpoint's raw weights and EMA differ
    assert train_main(_argv(photo_dir, first, "--init-from", str(saved_tiny), sets=("ema_decay=0.5",))) == 0
    ckpt = sorted((first / "checkpoints").glob("step_*"))[-1]
    raw, ema = load_file(str(ckpt / "model.safetensors")), load_file(str(ckpt / "ema.safetensors"))
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if k.startswith("encoder."))
    second = tmp_path / "second"
    assert train_main(_argv(photo_dir, second, "--init-from", str(first), "--decoder-only")) == 0
    before = ImageTokenizer.from_pretrained(first / "export")  # the first run's EMA
    after = ImageTokenizer.from_pretrained(second / "export")
    b, a = before.model.state_dict(), after.model.state_dict()
    for key in b:
        if key.startswith(("encoder.", "quant_conv.", "quantizer.")):
            assert torch.equal(b[key], a[key]), key
    image = torch.rand(3, 40, 56)
    assert torch.equal(before.encode(image), after.encode(image))


def test_mismatched_shapes_are_refused_naming_the_tensors(photo_dir, saved_tiny, tmp_path, capsys):
    rc = train_main(_argv(photo_dir, tmp_path / "run", "--init-from", str(saved_tiny),
                          sets=("model.quantizer.codebook_size=32",)))
    assert rc == 2
    err = capsys.readouterr().err
    assert "shape mismatch" in err and "quantizer." in err and str(saved_tiny) in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_run_folder_continues_with_its_ema_and_discriminator(photo_dir, saved_tiny, tmp_path):
    first = tmp_path / "first"
    gan = ("gan_weight=0.1", "gan_start=0")
    assert train_main(_argv(photo_dir, first, "--init-from", str(saved_tiny), sets=gan)) == 0
    ckpt = sorted((first / "checkpoints").glob("step_*"))[-1]
    cfg = TrainConfig.load(first / "train_config.json")
    cfg.init_from, cfg.out = str(first), str(tmp_path / "second")
    trainer = Trainer(cfg)
    for name in ("model", "ema", "disc"):
        saved = load_file(str(ckpt / f"{name}.safetensors"))
        state = trainer.modules[name].state_dict()
        assert all(torch.equal(state[k], saved[k]) for k in saved), name
    assert not trainer.opt.state  # weights only: the optimizer starts fresh


def test_bundled_names_and_vae_sources(photo_dir, tmp_path):
    for name, family in (("bundled", "vq"), ("imgtok-vq-f8", "vq"), ("bundled-kl", "kl")):
        source = read_init_source(name)
        assert source.config.model_type == family
        # The bundled configs are format 1; read through the migration they give the same config.
        assert source.config == AutoencoderConfig.load(BUNDLED[family] / "config.json")
    vae = ImageVAE.from_preset("kl-tiny").save_pretrained(tmp_path / "vae")
    cfg = TrainConfig(preset="", init_from=str(vae), out=str(tmp_path / "run"), data=[str(photo_dir)])
    trainer = Trainer(cfg)
    saved = load_file(str(vae / "model.safetensors"))
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in saved.items())


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises((FileNotFoundError, WeightsError, OSError)):
        read_init_source(str(tmp_path / "no-such-model.safetensors"))


def test_grow_starts_a_deeper_decoder_exactly_where_the_source_was(photo_dir, saved_tiny, tmp_path):
    deeper = ("model.decoder_layers_per_block=3",)  # vq-tiny's decoder has 2 blocks per level
    run = tmp_path / "run"
    assert train_main(_argv(photo_dir, run, "--init-from", str(saved_tiny), "--grow", "--decoder-only",
                            sets=deeper)) == 0
    cfg = TrainConfig.load(run / "train_config.json")
    source = ImageTokenizer.from_pretrained(saved_tiny).model
    assert _log(run)[0]["loss"] == pytest.approx(_first_batch_loss(source, cfg), rel=1e-5, abs=1e-6)

    grown = ImageTokenizer.from_pretrained(run / "export")
    assert grown.config.decoder_layers_per_block == 3
    assert all(len(level.block) == 3 for level in grown.model.decoder.up)
    new = grown.model.decoder.up[0].block[2]
    assert new.conv2.weight.abs().sum() > 0  # started at zero, and trained
    image = torch.rand(3, 40, 56)
    before = ImageTokenizer.from_pretrained(saved_tiny)
    assert torch.equal(before.encode(image), grown.encode(image))  # decoder-only: the ids stay valid


def test_grown_state_is_the_identity_and_refuses_what_cannot_grow(saved_tiny):
    from tokenizer.checkpoints import check_state_dict
    from tokenizer.models import build_model
    from train.init_from import grown_state

    source = ImageTokenizer.from_pretrained(saved_tiny)
    state = source.model.state_dict()
    config = AutoencoderConfig.from_dict({**source.config.to_dict(), "decoder_layers_per_block": 4,
                                          "layers_per_block": 2})
    torch.manual_seed(0)
    model = build_model(config).eval()
    completed, grown = grown_state(model, state)
    # Two new blocks per decoder level, one per encoder level: all keep their width.
    assert len(grown) == 2 * len(model.decoder.up) + len(model.encoder.down)
    model.load_state_dict(completed, strict=True)
    image = torch.rand(1, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(image).reconstruction, source.model.eval()(image).reconstruction)

    wider = build_model(AutoencoderConfig.from_dict({**source.config.to_dict(), "base_channels": 16}))
    with pytest.raises(WeightsError, match="shape mismatch"):
        check_state_dict(wider, grown_state(wider, state)[0], "wider")


def test_a_deeper_config_without_grow_is_refused_naming_the_blocks(photo_dir, saved_tiny, tmp_path, capsys):
    rc = train_main(_argv(photo_dir, tmp_path / "run", "--init-from", str(saved_tiny),
                          sets=("model.decoder_layers_per_block=3",)))
    assert rc == 2
    err = capsys.readouterr().err
    assert "missing key(s)" in err and "decoder.up.0.block.2." in err
    assert not (tmp_path / "run").exists()
