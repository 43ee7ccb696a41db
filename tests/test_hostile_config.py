"""Configs are user input: every field's type and range is checked when a config is read, with the file and
field named, and a model too large to exist is refused before a single module is built."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from tokenizer import PRESETS, AutoencoderConfig, ConfigError, VectorQuantizerConfig, get_preset
from tokenizer.config_fields import MAX_PARAMETERS
from tokenizer.models import build_model
from tokenizer.pretrained import WeightsError, load_folder, save_folder


QUANTIZER_FIELDS = {f.name for f in dataclasses.fields(VectorQuantizerConfig)}


def _write(tmp_path, preset: str, **changes):
    data = get_preset(preset).to_dict()
    for key, value in changes.items():  # the vector quantizer's fields sit under "quantizer"
        (data["quantizer"] if key in QUANTIZER_FIELDS else data)[key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "preset,field,value,expected",
    [
        ("vq-tiny", "codebook_size", 10**12, r"'quantizer.codebook_size' is 1000000000000 \(int\); expected an integer in 2\.\."),
        ("vq-tiny", "base_channels", 10**6, r"'base_channels' is 1000000 \(int\); expected an integer in 1\.\.16384"),
        ("vq-tiny", "layers_per_block", 10**7, r"'layers_per_block' .*expected an integer in 1\.\.64"),
        ("vq-tiny", "decoder_layers_per_block", 0, r"'decoder_layers_per_block' is 0 \(int\); expected an integer or null in 1\.\.64"),
        ("vq-tiny", "codebook_size", "4096", r"'quantizer.codebook_size' is '4096' \(str\); expected an integer"),
        ("vq-tiny", "base_channels", 64.5, r"'base_channels' is 64\.5 \(float\); expected an integer"),
        ("vq-tiny", "norm_groups", 0, r"'norm_groups' is 0 \(int\); expected an integer in 1\.\.1024"),
        ("vq-tiny", "channel_mult", "12", r"'channel_mult' is '12' \(str\); expected a list of integers in 1\.\.64"),
        ("vq-tiny", "channel_mult", [1, 2.5], r"'channel_mult' is \(1, 2\.5\)"),
        ("vq-tiny", "channel_mult", [[1], [2]], r"'channel_mult'.*expected a list of integers"),
        ("vq-tiny", "channel_mult", [], r"channel_mult \(\) gives f=0\.5; expected 1 to 6 levels"),
        ("vq-tiny", "channel_mult", [1] * 9, r"gives f=256"),
        ("vq-tiny", "dropout", float("nan"), r"'dropout' is nan \(float\); expected a number in 0\.\.0\.99"),
        ("vq-tiny", "dropout", 1.5, r"'dropout' is 1\.5"),
        ("vq-tiny", "l2_normalize", 1, r"'quantizer.l2_normalize' is 1 \(int\); expected true or false"),
        ("vq-tiny", "l2_normalize", "yes", r"'quantizer.l2_normalize' is 'yes'"),
        ("vq-tiny", "code_dim", -3, r"'quantizer.code_dim' is -3 \(int\); expected an integer or null in 1\.\.65536"),
        ("vq-tiny", "in_channels", None, r"'in_channels' is None"),
        ("vq-tiny", "ema_decay", 2.0, r"'quantizer.ema_decay' is 2\.0"),
        ("vq-tiny", "attn_levels", [-1], r"'attn_levels' is \(-1,\)"),
        ("vq-tiny", "z_channels", True, r"'z_channels' is True \(bool\); expected an integer"),
        ("vq-tiny", "kmeans_iters", 10**9, r"'quantizer.kmeans_iters'"),
        ("kl-tiny", "logvar_clamp", [1.0, 0.0], r"'logvar_clamp' is \[1\.0, 0\.0\]; expected \[low, high\]"),
        ("kl-tiny", "logvar_clamp", [1.0], r"'logvar_clamp' is \(1\.0,\).*expected a list of 2 numbers"),
        ("kl-tiny", "scaling_factor", float("inf"), r"'scaling_factor' is inf"),
        ("kl-tiny", "scaling_factor", 0.0, r"'scaling_factor' is 0"),
    ],
)
def test_bad_field_named_with_file_and_expectation(tmp_path, preset, field, value, expected):
    path = _write(tmp_path, preset, **{field: value})
    with pytest.raises(ConfigError, match=rf"config\.json: .*{expected}"):
        AutoencoderConfig.load(path)


def test_every_problem_is_listed_at_once(tmp_path):
    path = _write(tmp_path, "vq-tiny", codebook_size="64", norm_groups=0)
    with pytest.raises(ConfigError, match=r"'norm_groups'.*; field 'quantizer.codebook_size'"):
        AutoencoderConfig.load(path)


@pytest.mark.parametrize(
    "changes",
    [
        dict(base_channels=16384, channel_mult=[1, 64]),  # every field in range, the product is not
        dict(codebook_size=2**31 - 1, code_dim=65536),
        dict(layers_per_block=64, base_channels=4096, channel_mult=[1, 2, 4, 8, 16, 32]),
    ],
)
def test_absurd_size_refused_before_building(tmp_path, changes):
    path = _write(tmp_path, "vq-tiny", **changes)
    with pytest.raises(ConfigError, match=r"config\.json: the model would have about .* parameters .*limit"):
        AutoencoderConfig.load(path)


@pytest.mark.parametrize("name", sorted(PRESETS) + ["vq-tiny+deeper-decoder", "kl-tiny+deeper-decoder"])
def test_parameter_estimate_is_exact_for_presets(name):
    preset, _, variant = name.partition("+")
    config = get_preset(preset)
    if variant:  # a decoder deeper than the encoder's + 1 (what --grow builds)
        config = dataclasses.replace(config, decoder_layers_per_block=config.layers_per_block + 3)
    if config.parameter_estimate() > 5_000_000:  # keep the test light: count big presets on the meta device
        with torch.device("meta"):
            model = build_model(config)
    else:
        model = build_model(config)
    assert config.parameter_estimate() == sum(p.numel() for p in model.parameters())
    assert config.parameter_estimate() < MAX_PARAMETERS


def test_direct_construction_is_checked_at_build():
    config = get_preset("vq-tiny")
    config.quantizer.codebook_size = "64"
    with pytest.raises(ConfigError, match="'quantizer.codebook_size' is '64'"):
        build_model(config)


def test_int32_weights_for_float_parameters_are_a_mismatch(tmp_path):
    model = build_model(get_preset("vq-tiny"))
    folder = save_folder(model, tmp_path / "m")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["encoder.conv_in.weight"] = state["encoder.conv_in.weight"].round().to(torch.int32)
    state["quantizer.usage_steps"] = state["quantizer.usage_steps"].float()
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(WeightsError, match=r"2 dtype mismatch.*encoder\.conv_in\.weight: file int32 vs model float32"):
        load_folder(folder)


def test_half_precision_weights_still_load(tmp_path):
    model = build_model(get_preset("vq-tiny"))
    folder = save_folder(model, tmp_path / "m", dtype=torch.float16)
    loaded = load_folder(folder)
    assert loaded.encoder.conv_in.weight.dtype == torch.float32
