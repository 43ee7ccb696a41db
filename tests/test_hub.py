"""The Hub path end to end: the real ``huggingface_hub`` client against an in-memory Hub on 127.0.0.1.

Every test gets its own server and a fresh ``HF_HOME``, so nothing is cached between tests. The client
reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` once, at import, into ``huggingface_hub.constants``:
the fixture patches those constants (and the module-level ``HfApi`` that captured the endpoint).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from hub_server import HubServer

from tokenizer import ConfigError, ImageTokenizer, ImageVAE, WeightsError
from tokenizer.hub import HubError
from tokenizer.model_card import ModelCardError, ModelCardInfo, load_metrics, parse_metrics, split_front_matter

ROOT = Path(__file__).resolve().parents[1]
METRICS = {"psnr": 24.5, "ssim": 0.71, "ms_ssim": 0.9, "stlpips": 0.21, "codebook_usage": 0.985,
           "perplexity": 3900.5, "bits_per_pixel": 1.5}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running in-memory Hub; the client pointed at it with a fresh HF_HOME and a dummy token."""
    from huggingface_hub import hf_api
    from huggingface_hub import constants
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    server = HubServer().start()
    home = tmp_path / "hf_home"
    for name, value in {"HF_ENDPOINT": server.url, "HF_HOME": str(home), "HF_HUB_DISABLE_XET": "1",
                        "HF_TOKEN": "hf_imgtok_test_token"}.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGING_FACE_HUB_TOKEN",
                 "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    patches = {
        "ENDPOINT": server.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": server.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": frozenset(constants.HF_URL_HOSTS | {"127.0.0.1"}),
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
    }
    for name, value in patches.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", server.url)  # the module-level client captured it at import
    disable_progress_bars()
    yield server
    enable_progress_bars()
    server.stop()


def fresh_cache(monkeypatch, tmp_path, name: str) -> Path:
    """Point the client at a new, empty HF_HOME (as a different machine would be)."""
    from huggingface_hub import constants

    home = tmp_path / name
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    return home / "hub"


def images() -> torch.Tensor:
    return torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(1))


def different_tokenizer(seed: int) -> ImageTokenizer:
    torch.manual_seed(seed)
    return ImageTokenizer.from_preset("vq-tiny")


def test_push_then_load_by_repo_id_gives_identical_ids(hub, tiny_tokenizer, tmp_path, monkeypatch):
    commit = tiny_tokenizer.push_to_hub("alice/vq-tiny", commit_message="first weights")
    assert len(commit.oid) == 40 and str(commit).endswith(f"/alice/vq-tiny/commit/{commit.oid}")
    assert set(hub.files("alice/vq-tiny")) >= {"config.json", "model.safetensors", "README.md"}
    cache = fresh_cache(monkeypatch, tmp_path, "other_machine")
    loaded = ImageTokenizer.from_pretrained("alice/vq-tiny")
    assert str(loaded.folder).startswith(str(cache))  # downloaded into the (new) HF_HOME cache
    # The weights came the way the Hub serves LFS files: a redirect to storage on another origin.
    assert any(method == "GET" and path.startswith("/cdn-lfs/") for method, path in hub.state.requests)
    ids = tiny_tokenizer.encode(images())
    assert ids.unique().numel() > 1  # varied ids, so equality below says something
    assert torch.equal(loaded.encode(images()), ids)
    for key, value in tiny_tokenizer.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_pinned_revision_returns_the_old_weights(hub, tmp_path, monkeypatch):
    first, second = different_tokenizer(1), different_tokenizer(2)
    old = first.push_to_hub("alice/vq-tiny")
    new = second.push_to_hub("alice/vq-tiny", commit_message="retrained")
    assert old.oid != new.oid
    assert second.push_to_hub("alice/vq-tiny").oid == new.oid  # nothing changed: no new commit
    assert not torch.equal(first.encode(images()), second.encode(images()))
    fresh_cache(monkeypatch, tmp_path, "cache2")
    pinned = ImageTokenizer.from_pretrained("alice/vq-tiny", revision=old.oid)
    latest = ImageTokenizer.from_pretrained("alice/vq-tiny")
    assert torch.equal(pinned.encode(images()), first.encode(images()))
    assert torch.equal(latest.encode(images()), second.encode(images()))
    assert old.oid in str(pinned.folder) and new.oid in str(latest.folder)


def test_a_push_during_a_download_does_not_mix_commits(hub, saved_tiny_tokenizer):
    folder, tok = saved_tiny_tokenizer
    first = hub.put_files("alice/busy", {n: (folder / n).read_bytes() for n in ("config.json", "model.safetensors")})
    newer = different_tokenizer(5).save_pretrained(folder.parent / "newer")
    pushed = []

    def push_after_config(method, path):  # a new commit lands right after the client fetched config.json
        if path.endswith("/config.json") and method == "GET" and not pushed:
            weights = (newer / "model.safetensors").read_bytes()
            pushed.append(hub.put_files("alice/busy", {"model.safetensors": weights}))

    hub.state.after_request = push_after_config
    loaded = ImageTokenizer.from_pretrained("alice/busy")
    assert pushed, "the concurrent push did not happen"
    assert first in str(loaded.folder)
    assert torch.equal(loaded.encode(images()), tok.encode(images()))  # config and weights of one commit


def test_push_to_a_branch_leaves_main_alone(hub):
    main, dev = different_tokenizer(1), different_tokenizer(2)
    main.push_to_hub("alice/vq-tiny")
    dev.push_to_hub("alice/vq-tiny", revision="dev")
    assert torch.equal(ImageTokenizer.from_pretrained("alice/vq-tiny", revision="dev").encode(images()),
                       dev.encode(images()))
    assert torch.equal(ImageTokenizer.from_pretrained("alice/vq-tiny").encode(images()), main.encode(images()))
    with pytest.raises(ValueError, match="commit sha"):
        main.push_to_hub("alice/vq-tiny", revision="0" * 40)


def test_offline_loads_from_the_cache_without_any_request(hub, tiny_tokenizer, monkeypatch):
    from huggingface_hub import constants

    tiny_tokenizer.push_to_hub("alice/vq-tiny")
    online = ImageTokenizer.from_pretrained("alice/vq-tiny")
    # HF_HUB_OFFLINE=1 as a user sets it: the client read it into this constant at import time.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    seen = len(hub.state.requests)
    offline = ImageTokenizer.from_pretrained("alice/vq-tiny")
    assert len(hub.state.requests) == seen  # not a single request reached the server
    assert torch.equal(offline.encode(images()), online.encode(images()))
    with pytest.raises(HubError, match="not in the local cache and downloads are off"):
        ImageTokenizer.from_pretrained("alice/never-downloaded")
    with pytest.raises(HubError, match="cannot push while HF_HUB_OFFLINE is set"):
        tiny_tokenizer.push_to_hub("alice/vq-tiny")
    assert len(hub.state.requests) == seen


def test_local_files_only_uses_the_cache(hub, tiny_tokenizer):
    with pytest.raises(HubError, match="local_files_only"):
        ImageTokenizer.from_pretrained("alice/vq-tiny", local_files_only=True)
    tiny_tokenizer.push_to_hub("alice/vq-tiny")
    ImageTokenizer.from_pretrained("alice/vq-tiny")
    seen = len(hub.state.requests)
    cached = ImageTokenizer.from_pretrained("alice/vq-tiny", local_files_only=True)
    assert len(hub.state.requests) == seen
    assert torch.equal(cached.encode(images()), tiny_tokenizer.encode(images()))


def test_missing_repo_and_revision_are_clear_errors(hub, tiny_tokenizer):
    with pytest.raises(HubError, match=r"alice/no-such-repo: no local folder of that name .*, and no Hub repo of that name"):
        ImageTokenizer.from_pretrained("alice/no-such-repo")
    tiny_tokenizer.push_to_hub("alice/vq-tiny")
    with pytest.raises(HubError, match="revision 'nope' not found"):
        ImageTokenizer.from_pretrained("alice/vq-tiny", revision="nope")
    with pytest.raises(HubError, match="not a valid Hub repo id"):
        ImageTokenizer.from_pretrained("no/such/local/folder")


def test_private_repo_needs_a_token(hub, tiny_tokenizer):
    tiny_tokenizer.push_to_hub("alice/secret", private=True)
    assert hub.state.repo("model", "alice/secret").private
    with pytest.raises(HubError, match="private, log in or pass token="):
        ImageTokenizer.from_pretrained("alice/secret", token=False)
    assert torch.equal(ImageTokenizer.from_pretrained("alice/secret").encode(images()), tiny_tokenizer.encode(images()))


def test_repo_without_weights_or_config(hub, saved_tiny_tokenizer):
    folder, _ = saved_tiny_tokenizer
    config = (folder / "config.json").read_bytes()
    hub.put_files("alice/config-only", {"config.json": config})
    with pytest.raises(HubError, match=r"alice/config-only: the repo has no model\.safetensors"):
        ImageTokenizer.from_pretrained("alice/config-only")
    hub.put_files("alice/weights-only", {"model.safetensors": (folder / "model.safetensors").read_bytes()})
    with pytest.raises(HubError, match=r"the repo has no config\.json; expected an imgtok model repo"):
        ImageTokenizer.from_pretrained("alice/weights-only")


def test_pickle_only_repo_is_refused_with_the_converter_named(hub, saved_tiny_tokenizer):
    folder, _ = saved_tiny_tokenizer
    # The bytes are never unpickled (that is the point), so any content stands in for a pickle.
    hub.put_files("alice/pickled", {"config.json": (folder / "config.json").read_bytes(),
                                    "pytorch_model.bin": b"\x80\x04not really a pickle"})
    with pytest.raises(WeightsError, match=r"only pickle weights \(pytorch_model\.bin\).*imgtok convert "
                                           r"alice/pickled OUT --allow-pickle"):
        ImageTokenizer.from_pretrained("alice/pickled")


def test_corrupt_weights_are_a_clear_error(hub, tiny_tokenizer):
    tiny_tokenizer.push_to_hub("alice/vq-tiny")
    good = hub.files("alice/vq-tiny")["model.safetensors"]
    hub.put_files("alice/vq-tiny", {"model.safetensors": good[: len(good) // 2]})  # truncated upload
    with pytest.raises(WeightsError, match=r"Hub repo alice/vq-tiny: .*model\.safetensors: not a valid safetensors file: the header claims"):
        ImageTokenizer.from_pretrained("alice/vq-tiny")
    hub.put_files("alice/vq-tiny", {"model.safetensors": b"\x00" * 64})
    with pytest.raises(WeightsError, match=r"model\.safetensors: not a valid safetensors file: the 0-byte header is not valid JSON"):
        ImageTokenizer.from_pretrained("alice/vq-tiny")


def test_newer_format_version_through_the_hub(hub, saved_tiny_tokenizer):
    folder, _ = saved_tiny_tokenizer
    config = json.loads((folder / "config.json").read_text())
    config["format_version"] = 99
    hub.put_files("alice/future", {"config.json": json.dumps(config).encode(),
                                   "model.safetensors": (folder / "model.safetensors").read_bytes()})
    with pytest.raises(ConfigError, match=r"Hub repo alice/future: .*format_version 99 is newer .* upgrade imgtok"):
        ImageTokenizer.from_pretrained("alice/future")


def test_wrong_model_type_through_the_hub(hub, tiny_tokenizer):
    tiny_tokenizer.push_to_hub("alice/vq-tiny")
    with pytest.raises(ConfigError, match="holds a 'vq' model, expected 'kl'"):
        ImageVAE.from_pretrained("alice/vq-tiny")


def test_vae_push_and_load(hub, tiny_vae, tmp_path, monkeypatch):
    commit = tiny_vae.push_to_hub("alice/kl-tiny")
    fresh_cache(monkeypatch, tmp_path, "vae_cache")
    loaded = ImageVAE.from_pretrained("alice/kl-tiny", revision=commit.oid)
    assert torch.equal(loaded.encode(images()), tiny_vae.encode(images()))
    meta = yaml.safe_load(split_front_matter(hub.files("alice/kl-tiny")["README.md"].decode())[0])
    assert meta["library_name"] == "imgtok" and "vae" in meta["tags"] and "model-index" not in meta


def test_pushed_card_front_matter(hub, tiny_tokenizer):
    from huggingface_hub import ModelCard, hf_hub_download

    info = ModelCardInfo(datasets=["wikipedia49"], metrics=METRICS, eval_dataset="kodak24", tags=["demo"],
                         training="`python -m train --preset vq-tiny --smoke`")
    tiny_tokenizer.push_to_hub("alice/vq-tiny", model_card=info)
    text = Path(hf_hub_download("alice/vq-tiny", "README.md")).read_text()
    front, body = split_front_matter(text)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "imgtok"
    assert meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "image-to-image"
    assert meta["datasets"] == ["wikipedia49"]
    assert {"imgtok", "image-tokenizer", "vq-vae", "demo"} <= set(meta["tags"])
    (entry,) = meta["model-index"]
    assert entry["name"] == "vq-tiny"
    (result,) = entry["results"]
    assert result["task"]["type"] == "image-to-image" and result["dataset"]["name"] == "kodak24"
    by_name = {m["name"]: m["value"] for m in result["metrics"]}
    assert by_name["PSNR (dB)"] == 24.5 and by_name["Codebook usage"] == 0.985
    assert by_name["LPIPS (shift-tolerant)"] == 0.21 and len(by_name) == len(METRICS)
    # The body: architecture, vocabulary, f, bpp, usage with this repo id, the metrics table.
    assert "64 codes" in body and "| downsampling factor f | 2" in body and "| bits per pixel | 1.5" in body
    assert 'ImageTokenizer.from_pretrained("alice/vq-tiny")' in body
    assert "| this model | 1.5 | 24.5 | 0.71 | 0.9 | 0.21 |" in body
    assert "python -m train --preset vq-tiny --smoke" in body
    # huggingface_hub's own parser agrees (it rebuilds model-index into EvalResults).
    card = ModelCard(text)
    assert card.data.library_name == "imgtok" and len(card.data.eval_results) == len(METRICS)


def test_save_pretrained_writes_the_card_and_can_skip_it(tiny_tokenizer, tmp_path):
    folder = tiny_tokenizer.save_pretrained(tmp_path / "a")
    meta = yaml.safe_load(split_front_matter((folder / "README.md").read_text())[0])
    assert meta["library_name"] == "imgtok" and "model-index" not in meta and "datasets" not in meta
    bare = tiny_tokenizer.save_pretrained(tmp_path / "b", model_card=False)
    assert not (bare / "README.md").exists()
    again = tiny_tokenizer.save_pretrained(tmp_path / "a2")
    for name in ("config.json", "model.safetensors", "README.md"):  # same model, same bytes: no spurious commits
        assert (again / name).read_bytes() == (folder / name).read_bytes(), name
    custom = tiny_tokenizer.save_pretrained(tmp_path / "c", model_card="# my card\n")
    assert (custom / "README.md").read_text() == "# my card\n"
    assert torch.equal(ImageTokenizer.from_pretrained(folder).encode(images()), tiny_tokenizer.encode(images()))


def test_template_ships_as_package_data():
    from importlib import resources

    assert "${usage}" in resources.files("tokenizer").joinpath("templates", "model_card.md").read_text()


def evaluate_style_metrics() -> dict:
    """A metrics.json in the layout scripts/evaluate.py writes (means per method, codebook statistics)."""
    return {
        "data": "/somewhere/kodak24/", "perceptual_metric": "stlpips-alex",
        "means": {"tokenizer": {"psnr": 23.9, "ssim": 0.66, "ms_ssim": 0.88, "stlpips": 0.25, "bpp": 0.1875},
                  "jpeg": {"psnr": 25.4, "ssim": 0.7, "ms_ssim": 0.9, "stlpips": 0.31, "bpp": 0.1871, "quality": 5.2},
                  "webp": {"psnr": 28.0, "stlpips": 0.27, "bpp": 0.1869}},
        "codebook": {"usage": 0.99, "perplexity": 3900.0, "codebook_size": 4096, "tokens": 100},
        "images": [{"image": "kodim01.png", "tokenizer": {"psnr": 22.0}}],
    }


def test_metrics_files_in_the_shapes_evaluate_writes(tmp_path):
    ev = parse_metrics(evaluate_style_metrics())
    assert ev.metrics == {"psnr": 23.9, "ssim": 0.66, "ms_ssim": 0.88, "stlpips": 0.25, "bits_per_pixel": 0.1875,
                          "codebook_usage": 0.99, "perplexity": 3900.0}
    assert ev.dataset == "kodak24" and ev.perceptual_metric == "stlpips-alex"
    assert ev.baselines == {
        "jpeg": {"psnr": 25.4, "ssim": 0.7, "ms_ssim": 0.9, "stlpips": 0.31, "bits_per_pixel": 0.1871},
        "webp": {"psnr": 28.0, "stlpips": 0.27, "bits_per_pixel": 0.1869},
    }
    flat = parse_metrics(METRICS)
    assert (flat.metrics, flat.dataset, flat.baselines) == (METRICS, None, {})
    named = parse_metrics({"dataset": "kodak24", "means": {"tokenizer": {"psnr": 25.0, "seconds": 3.0}}})
    assert (named.metrics, named.dataset) == ({"psnr": 25.0}, "kodak24")
    # Only spellings something writes are read: others are not guessed at.
    for unknown in ({"loss": 0.1}, {"ms-ssim": 0.93}, {"mean": {"psnr": 25.0}}, {"psnr_db": 25.0}):
        with pytest.raises(ModelCardError, match="no known metric"):
            parse_metrics(unknown)
    bad = tmp_path / "metrics.json"
    bad.write_text("{not json")
    with pytest.raises(ModelCardError, match="metrics.json: not valid JSON"):
        load_metrics(bad)
    with pytest.raises(ModelCardError, match="no such metrics file"):
        load_metrics(tmp_path / "missing.json")


def test_card_shows_the_baselines_beside_the_model(tiny_tokenizer, tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(evaluate_style_metrics()))
    card = tiny_tokenizer.model_card(ModelCardInfo.from_metrics_file(path, repo_id="alice/vq"))
    front, body = split_front_matter(card)
    table = [line for line in body.splitlines() if line.startswith("| this model") or line.startswith("| jpeg")
             or line.startswith("| webp")]
    assert table == ["| this model | 0.1875 | 23.9 | 0.66 | 0.88 | 0.25 |",
                     "| jpeg | 0.1871 | 25.4 | 0.7 | 0.9 | 0.31 |",
                     "| webp | 0.1869 | 28 | - | - | 0.27 |"]
    assert "- Codebook usage: 0.99" in body and "`stlpips-alex`" in body
    metrics = yaml.safe_load(front)["model-index"][0]["results"][0]["metrics"]
    assert {m["type"]: m["value"] for m in metrics}["lpips"] == 0.25  # the model's own figures only
    assert [m.get("config") for m in metrics if m["type"] == "lpips"] == ["stlpips-alex"]


def test_push_script_pushes_a_run_export_with_its_metrics(hub, tiny_tokenizer, tmp_path, capsys):
    run = tmp_path / "run"
    tiny_tokenizer.save_pretrained(run / "export", model_card=False)
    (run / "train_config.json").write_text(json.dumps({"preset": "vq-tiny", "steps": 10}))
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"data": "/photos/kodak24", "means": {"tokenizer": {"psnr": 23.9}},
                                   "codebook": {"usage": 0.99}}))
    spec = importlib.util.spec_from_file_location("push_to_hub_script", ROOT / "scripts" / "push_to_hub.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    code = script.main([str(run), "alice/run", "--metrics", str(metrics), "--dataset", "wikipedia49",
                        "--commit-message", "trained run"])
    assert code == 0, capsys.readouterr().err
    files = hub.files("alice/run")
    # The export's weights are pushed byte for byte, beside the card and the metrics file.
    assert files["model.safetensors"] == (run / "export" / "model.safetensors").read_bytes()
    assert json.loads(files["metrics.json"])["means"]["tokenizer"]["psnr"] == 23.9
    meta = yaml.safe_load(split_front_matter(files["README.md"].decode())[0])
    values = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values == {"psnr": 23.9, "codebook_usage": 0.99} and meta["datasets"] == ["wikipedia49"]
    assert '"steps": 10' in files["README.md"].decode()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="neither a model folder"):
        script.main([str(tmp_path / "empty"), "alice/run"])


def test_push_script_card_only_writes_the_card_and_uploads_nothing(hub, tiny_tokenizer, tmp_path, capsys):
    run = tmp_path / "run"
    tiny_tokenizer.save_pretrained(run / "export", model_card=False)
    (run / "train_config.json").write_text(json.dumps({
        "preset": "vq-tiny", "steps": 10, "data": ["/home/alice/data/photos/train"], "out": "/home/alice/runs/vq3",
        "init_from": "bundled"}))
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"data": "/photos/kodak24", "means": {
        "tokenizer": {"psnr": 23.9, "delta_e00": 6.5}, "jpeg": {"psnr": 25.4, "delta_e00": 4.25, "bpp": 0.18}}}))
    notes = tmp_path / "notes.md"
    notes.write_text("Command: `python -m train --preset vq-tiny`; 3 minutes on 2 CPU cores.")
    spec = importlib.util.spec_from_file_location("push_to_hub_script", ROOT / "scripts" / "push_to_hub.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    card = tmp_path / "cards" / "vq.md"
    code = script.main([str(run), "alice/card", "--metrics", str(metrics), "--notes", str(notes),
                        "--card-only", str(card)])
    assert code == 0, capsys.readouterr().err
    front, body = split_front_matter(card.read_text())
    assert yaml.safe_load(front)["model-index"][0]["results"][0]["metrics"][0]["value"] == 23.9
    assert "3 minutes on 2 CPU cores" in body and '"steps": 10' in body
    assert body.index("3 minutes") < body.index('"steps": 10')  # the notes first, then the config
    # The colour error is a column of the evaluation table, the model's and the baselines'.
    assert "ΔE00 (CIEDE2000)" in body and "| this model | - | 23.9 | 6.5 |" in body and "| jpeg | 0.18 | 25.4 | 4.25 |" in body
    # The run's machine paths are cut to what describes the run.
    assert "/home/alice" not in card.read_text() and '"photos/train"' in body and '"runs/vq3"' in body
    with pytest.raises(KeyError):  # nothing uploaded: the repo was never created
        hub.files("alice/card")


def test_push_without_credentials_says_how_to_log_in(hub, tiny_tokenizer, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")  # and the fixture's HF_HOME holds no saved token
    with pytest.raises(HubError, match=r"alice/vq-tiny: push failed, the Hub answered 401 \(log in"):
        tiny_tokenizer.push_to_hub("alice/vq-tiny")


def test_subfolder_and_cache_dir(hub, saved_tiny_tokenizer, tmp_path):
    folder, tok = saved_tiny_tokenizer
    hub.put_files("alice/multi", {f"tokenizer/{name}": (folder / name).read_bytes()
                                  for name in ("config.json", "model.safetensors")})
    loaded = ImageTokenizer.from_pretrained("alice/multi", subfolder="tokenizer", cache_dir=tmp_path / "own_cache")
    assert loaded.folder.name == "tokenizer" and (tmp_path / "own_cache") in loaded.folder.parents
    assert torch.equal(loaded.encode(images()), tok.encode(images()))


def test_readme_hub_example_runs(hub, tiny_tokenizer, tmp_path, monkeypatch):
    """The README's "Hugging Face Hub" snippet, run as written (from a folder holding its two inputs)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Hugging Face Hub"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("```\n", section.index("```python"))]
    monkeypatch.chdir(tmp_path)
    tiny_tokenizer.save_pretrained("runs/vq/export")
    Path("eval").mkdir()
    Path("eval/metrics.json").write_text(json.dumps(evaluate_style_metrics()))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert torch.equal(namespace["old"].encode(images()), tiny_tokenizer.encode(images()))
    meta = yaml.safe_load(split_front_matter(hub.files("you/imgtok-vq-f8")["README.md"].decode())[0])
    assert meta["model-index"][0]["results"][0]["dataset"]["name"] == "kodak24"
