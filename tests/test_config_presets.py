"""Config dataclasses and the preset registry: JSON round trips, validation, what the README promises."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tokenizer import (PRESETS, AEConfig, AutoencoderConfig, ConfigError, KLConfig, VectorQuantizerConfig, VQConfig,
                       get_preset)
from tokenizer.config import FORMAT_VERSION

# The README's preset table: family, f, and codebook size (VQ) or latent channels (KL/AE).
README_TABLE = {
    "vq-f8": ("vq", 8, 16384),
    "vq-f16": ("vq", 16, 16384),
    "vq-f4": ("vq", 4, 8192),
    "vq-f8-cpu": ("vq", 8, 4096),
    "kl-f8": ("kl", 8, 4),
    "kl-f8-c16": ("kl", 8, 16),
    "kl-f8-cpu": ("kl", 8, 4),
    "vq-f8-cpu-s2c": ("vq", 8, 4096),
    "kl-f8-cpu-s2c": ("kl", 8, 4),
    "ae-f8": ("ae", 8, 4),
    "vq-tiny": ("vq", 2, None),
    "kl-tiny": ("kl", 2, None),
    "ae-tiny": ("ae", 2, None),
    "vq-tiny-s2c": ("vq", 4, 64),
}


def test_registry_holds_the_readme_presets():
    assert set(README_TABLE) <= set(PRESETS)


def test_readme_preset_table_names_every_registered_preset():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("### Presets"):].split("\n\n")[1]  # the table: the block after the heading
    named = set(re.findall(r"`([a-z0-9-]+)`", table))
    assert set(PRESETS) <= named, sorted(set(PRESETS) - named)


@pytest.mark.parametrize("name", sorted(README_TABLE))
def test_presets_match_readme_table(name):
    family, f, size = README_TABLE[name]
    config = get_preset(name)
    assert config.model_type == family and config.downsample_factor == f
    if size is not None:
        assert (config.vocab_size if family == "vq" else config.latent_channels) == size
    if name in ("vq-f8", "vq-f16", "vq-f4"):
        assert config.latent_channels == 8 and config.quantizer.l2_normalize
    if name in ("vq-f8-cpu", "vq-f8-cpu-s2c"):
        assert config.quantizer.code_dim == 8 and config.quantizer.l2_normalize


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_roundtrip(name, tmp_path):
    config = get_preset(name)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["imgtok_model_type"] == config.model_type and data["format_version"] == FORMAT_VERSION
    assert AutoencoderConfig.from_dict(data) == config  # the base class dispatches on the type key
    assert type(config).from_dict(data) == config
    config.save(tmp_path / "config.json")
    assert AutoencoderConfig.load(tmp_path / "config.json") == config


def test_get_preset_returns_fresh_configs():
    a = get_preset("vq-tiny")
    a.quantizer.codebook_size = 7
    assert get_preset("vq-tiny").quantizer.codebook_size == 64


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*kl-f8.*vq-f16"):
        get_preset("nope")


@pytest.mark.parametrize(
    "config,match",
    [
        (VQConfig(channel_mult=(1,) * 8), "f=128"),
        (VQConfig(attn_levels=(4,)), "attn_levels entry 4"),
        (VQConfig(quantizer=VectorQuantizerConfig(codebook_size=1)), r"'quantizer.codebook_size' is 1 .*in 2\.\."),
        (VQConfig(quantizer=VectorQuantizerConfig(code_dim=0)), "code_dim"),
        (KLConfig(use_quant_conv=False, z_channels=8, latent_channels=4), "z_channels == latent_channels"),
        (AEConfig(base_channels=0), "base_channels"),
    ],
    ids=["f", "attn", "codebook", "code-dim", "quant-conv", "width"],
)
def test_validate_rejects_bad_values(config, match):
    with pytest.raises(ConfigError, match=match):
        config.validate()


def test_replace_validates():
    with pytest.raises(ConfigError, match="codebook_size"):
        get_preset("vq-tiny").replace(**{"quantizer.codebook_size": 0})
    assert get_preset("vq-tiny").replace(**{"quantizer.codebook_size": 8}).vocab_size == 8


def test_from_dict_errors():
    data = get_preset("kl-tiny").to_dict()
    with pytest.raises(ConfigError, match="holds a 'kl' model, expected 'vq'"):
        VQConfig.from_dict(data, source="x.json")
    with pytest.raises(ConfigError, match="x.json: unknown imgtok_model_type 'gan'"):
        AutoencoderConfig.from_dict({**data, "imgtok_model_type": "gan"}, source="x.json")
    with pytest.raises(ConfigError, match="x.json: unknown field.*'codebook_size'"):
        AutoencoderConfig.from_dict({**data, "codebook_size": 5}, source="x.json")
    with pytest.raises(ConfigError, match="newer than this imgtok"):
        AutoencoderConfig.from_dict({**data, "format_version": FORMAT_VERSION + 1})
    no_type = dict(data)
    del no_type["imgtok_model_type"]
    with pytest.raises(ConfigError, match="not an imgtok config"):
        AutoencoderConfig.from_dict(no_type)


def test_load_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match=r"broken\.json: not valid JSON"):
        AutoencoderConfig.load(broken)
    array = tmp_path / "array.json"
    array.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"array\.json: expected a JSON object"):
        AutoencoderConfig.load(array)
    with pytest.raises(FileNotFoundError):
        AutoencoderConfig.load(tmp_path / "missing.json")


def test_format_1_configs_load_with_the_quantizer_fields_nested():
    # Format 1 (imgtok before the quantizer families) kept the vector quantizer's fields at the top level.
    data = {k: v for k, v in get_preset("vq-tiny").to_dict().items() if k != "quantizer"}
    data.update(format_version=1, codebook_size=48, l2_normalize=False, kmeans_init=True, dead_code_threshold=0.1)
    config = AutoencoderConfig.from_dict(data, source="old.json")
    assert config.quantizer == VectorQuantizerConfig(codebook_size=48, l2_normalize=False, kmeans_init=True,
                                                     dead_code_threshold=0.1)
    assert config.to_dict()["format_version"] == FORMAT_VERSION == 2
    assert config.to_dict()["quantizer"]["kind"] == "vq" and "codebook_size" not in config.to_dict()
    with pytest.raises(ConfigError, match="new.json: unknown field.*'codebook_size'"):
        AutoencoderConfig.from_dict({**config.to_dict(), "codebook_size": 5}, source="new.json")


@pytest.mark.parametrize("name", ["fsq-tiny", "lfq-tiny", "bsq-tiny", "rvq-tiny"])
def test_quantizer_configs_round_trip_and_refuse_bad_kinds(name):
    config = get_preset(name)
    data = json.loads(json.dumps(config.to_dict()))
    assert AutoencoderConfig.from_dict(data) == config
    bad = {**data, "quantizer": {**data["quantizer"], "kind": "pq"}}
    with pytest.raises(ConfigError, match="x.json: .*quantizer kind 'pq'; expected one of"):
        AutoencoderConfig.from_dict(bad, source="x.json")
