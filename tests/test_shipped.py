"""One naming for the shipped models everywhere (issue 17, point 2): names, aliases, versions, metadata.

``imgtok-vq-f8`` / ``imgtok-kl-f8`` (aliases ``bundled`` / ``bundled-kl``) load offline through the API, the
CLI, ``--init-from`` and the scripts; what is written with a model records its name, version and weights
sha256; decoding ids with other weights warns by name; a prior that has trained keeps its result when
sampling fails.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from tokenizer import ImageTokenizer, ImageVAE
from tokenizer.api import load_any
from tokenizer.batch_tokenize import TokenizeConfig, tokenize_dataset
from tokenizer.cli import main as cli_main
from tokenizer.checkpoints import ids_sha256
from tokenizer.shipped import SHIPPED, ModelIdentity, identify, sha256_of, shipped_model, warn_if_other_weights

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_prior.py"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a shipped name must never reach for the Hub


def test_the_weights_in_the_package_are_the_registered_version():
    for model in SHIPPED:
        versions = [v for v, _ in model.history]
        shas = [s for _, s in model.history]
        assert len(set(versions)) == len(versions) and len(set(shas)) == len(shas), model.name
        assert sha256_of(model.folder / "model.safetensors") == model.sha256, (
            f"{model.name}: new weights shipped without a new version: run tokenizer.shipped.record_version on "
            "its folder (scripts/ship_model.py does)")
        assert model.entries[-1]["ids_sha256"] == ids_sha256(model.folder / "model.safetensors"), model.name


def _changed(path: Path, prefix: str) -> None:
    """Rewrite the safetensors file at ``path`` with the first tensor whose name starts with ``prefix`` changed."""
    state = load_file(str(path))
    key = next(k for k in sorted(state) if k.startswith(prefix))
    state[key] = state[key] + 1  # same dtype and shape
    save_file(state, str(path), metadata={"format": "pt"})


def test_ids_sha256_covers_what_decides_the_ids_and_nothing_else(tmp_path):
    folder = ImageTokenizer.from_preset("vq-f8-cpu").save_pretrained(tmp_path / "m", model_card=False)
    weights = folder / "model.safetensors"
    before = ids_sha256(weights)
    for prefix in ("decoder.", "post_quant_conv.", "quantizer.usage"):  # decoder side, training statistics
        _changed(weights, prefix)
        assert ids_sha256(weights) == before, prefix
    for prefix in ("encoder.", "quant_conv.", "quantizer.codebook"):
        _changed(weights, prefix)
        assert ids_sha256(weights) != before, prefix
        before = ids_sha256(weights)


def test_a_decoder_only_version_decodes_the_ids_of_the_one_before_without_a_warning(tmp_path, monkeypatch):
    import shutil

    import tokenizer.shipped as shipped_module
    from tokenizer.shipped import record_version

    ship = shipped_model("bundled")
    shutil.copytree(ship.folder, tmp_path / ship.name)
    monkeypatch.setattr(shipped_module, "WEIGHTS_DIR", tmp_path)
    weights = tmp_path / ship.name / "model.safetensors"
    old = ModelIdentity(ship.name, ship.version, sha256_of(weights))

    _changed(weights, "decoder.")  # a new decoder: the ids stay valid
    new_version = record_version(tmp_path / ship.name, "decoder only")
    new = identify(ship.name, weights)
    assert new.version == new_version != old.version
    assert warn_if_other_weights(old.to_dict(), new, "tokens/") is None

    _changed(weights, "encoder.")  # a new encoder: the same ids mean other images
    record_version(tmp_path / ship.name, "full")
    with pytest.warns(UserWarning, match=rf"made with imgtok-vq-f8 v{old.version}, decoded with imgtok-vq-f8 v"):
        warn_if_other_weights(old.to_dict(), identify(ship.name, weights), "tokens/")


def test_shipping_new_weights_records_a_new_version(tmp_path):
    import shutil

    from tokenizer.shipped import record_version

    folder = tmp_path / "imgtok-vq-f8"
    shutil.copytree(shipped_model("bundled").folder, folder)
    before = shipped_model("bundled").version
    assert record_version(folder) is None  # the same weights: no new version
    ImageTokenizer.from_preset("vq-f8-cpu").save_pretrained(folder, model_card=False)
    assert record_version(folder, "test") == str(int(before) + 1)
    versions = json.loads((folder / "versions.json").read_text())["versions"]
    assert versions[-1]["sha256"] == sha256_of(folder / "model.safetensors") and versions[-1]["note"] == "test"


@pytest.mark.parametrize("name", [None, "bundled", "imgtok-vq-f8"])
def test_names_and_aliases_load_the_same_weights(name):
    tok = ImageTokenizer.from_pretrained(name)
    expected = shipped_model("imgtok-vq-f8")
    assert tok.source == "imgtok-vq-f8"
    assert tok.identity == ModelIdentity("imgtok-vq-f8", expected.version, expected.sha256)
    assert tok.identity.label == f"imgtok-vq-f8 v{expected.version}"


def test_kl_names_and_the_wrong_family():
    for name in ("bundled-kl", "imgtok-kl-f8"):
        vae = ImageVAE.from_pretrained(name)
        assert vae.identity.name == "imgtok-kl-f8" and load_any(name).source == "imgtok-kl-f8"
    with pytest.raises(ValueError, match="holds a 'kl' model, expected 'vq'") as info:
        ImageTokenizer.from_pretrained("bundled-kl")
    assert "Hub repo" not in str(info.value)


def test_cli_reconstruct_and_info_take_the_names(tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(np.full((20, 24, 3), 128, np.uint8)).save(image)
    assert cli_main(["reconstruct", str(image), "-o", str(tmp_path / "r.png"), "--model", "bundled"]) == 0
    assert cli_main(["info", "--model", "bundled-kl"]) == 0
    out = capsys.readouterr().out
    info = json.loads(out[out.index("{"):])
    assert info["name"] == "imgtok-kl-f8" and info["version"] == shipped_model("bundled-kl").version
    assert info["sha256"] == shipped_model("bundled-kl").sha256


def test_init_from_takes_the_names():
    from train.init_from import read_init_source

    assert read_init_source("bundled").config.model_type == "vq"
    assert read_init_source("imgtok-kl-f8").config.model_type == "kl"


def test_a_copy_of_shipped_weights_is_named_by_its_version(tmp_path):
    folder = ImageTokenizer.from_pretrained().save_pretrained(tmp_path / "copy", model_card=False)
    identity = identify(str(folder), folder / "model.safetensors")
    assert identity.name == "imgtok-vq-f8" and identity.version == shipped_model("bundled").version
    other = identify(str(tmp_path / "x"), None)
    assert other.name == str(tmp_path / "x") and other.sha256 is None


def _tokens(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "tokens"
    tokenize_dataset(TokenizeConfig(input=str(images), output=str(out), size=16, batch_size=8, workers=0,
                                    shard_size=8, progress=False, rank=0, world_size=1))
    return out


def _train_prior(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("train_prior_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_shards_record_the_model_and_the_prior_decodes_with_it_offline(tmp_path, capsys):
    tokens = _tokens(tmp_path)
    record = json.loads((tokens / "metadata.json").read_text())["model"]
    ship = shipped_model("imgtok-vq-f8")
    assert (record["name"], record["version"], record["sha256"]) == (ship.name, ship.version, ship.sha256)
    common = ["--tokens", str(tokens), "--prior", "prior-tiny", "--steps", "2", "--batch-size", "2",
              "--eval-every", "2", "--checkpoint-every", "2", "--num-samples", "1", "--val-fraction", "0.34"]

    # Before: metadata said "bundled", the prior trained, then tried https://.../bundled for 60 s and died.
    assert _train_prior(common + ["--out", str(tmp_path / "prior")]) == 0
    assert (tmp_path / "prior" / "samples" / "sample_000.png").is_file()

    # A tokenizer that cannot be loaded costs the samples, never the trained prior and its metrics.
    run = tmp_path / "prior2"
    assert _train_prior(common + ["--out", str(run), "--tokenizer", str(tmp_path / "no-such-model")]) == 0
    assert (run / "metrics.json").is_file() and (run / "prior" / "config.json").is_file()
    assert "sampling failed, the prior and metrics.json are saved" in capsys.readouterr().out


def test_decoding_ids_made_with_other_weights_warns_by_name():
    current = ImageTokenizer.from_pretrained("bundled").identity
    old_version, old_sha = shipped_model("bundled").history[0]
    with pytest.warns(UserWarning, match=rf"made with imgtok-vq-f8 v{old_version}, decoded with imgtok-vq-f8 "
                                         rf"v{current.version}"):
        warn_if_other_weights({"name_or_path": "bundled", "sha256": old_sha}, current, "tokens/")
    assert warn_if_other_weights({"name": "imgtok-vq-f8", "sha256": current.sha256}, current, "tokens/") is None


def _push_script():
    spec = importlib.util.spec_from_file_location("push_to_hub_script", SCRIPT.parent / "push_to_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_push_to_hub_checks_the_metrics_were_measured_on_these_weights(tiny_tokenizer, tmp_path, capsys):
    folder = tiny_tokenizer.save_pretrained(tmp_path / "model", model_card=False)
    metrics = tmp_path / "metrics.json"
    other = {"name": "imgtok-vq-f8", "sha256": shipped_model("bundled").sha256}
    metrics.write_text(json.dumps({"model": other, "dataset": "kodak24", "means": {"psnr": 23.9}}))
    card = tmp_path / "card.md"
    script = _push_script()
    # Before: the metrics of imgtok-vq-f8 went into this model's card without a word.
    assert script.main([str(folder), "alice/x", "--metrics", str(metrics), "--card-only", str(card)]) == 1
    err = capsys.readouterr().err
    assert "measured on other weights (imgtok-vq-f8" in err and not card.exists()
    mine = {"name": str(folder), "sha256": sha256_of(folder / "model.safetensors")}
    metrics.write_text(json.dumps({"model": mine, "dataset": "kodak24", "means": {"psnr": 23.9}}))
    assert script.main([str(folder), "alice/x", "--metrics", str(metrics), "--card-only", str(card)]) == 0
    assert card.is_file()
