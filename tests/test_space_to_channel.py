"""The space-to-channel stem (``patch_size``): f, odd image sizes, old configs, tiling and training with it.

Axis letters: B batch, H/W image size, h/w grid.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tokenizer import ImageTokenizer, ImageVAE, build_model, get_preset
from tokenizer.blocks import ChannelToSpace, Downsample, SpaceToChannel, Upsample
from tokenizer.model_card import bits_per_pixel
from tokenizer.pretrained import load_folder, save_folder
from tokenizer.tiling import PixelSource, TiledDecoder, TiledEncoder
from train.__main__ import main as train_main

from test_tiling import photo_like  # noqa: E402  (one photo-like test image for the tiling tests)


@pytest.mark.parametrize("name,f,patch", [("vq-f8-cpu-s2c", 8, 2), ("kl-f8-cpu-s2c", 8, 2), ("vq-tiny-s2c", 4, 2),
                                          ("vq-f8-cpu", 8, 1), ("kl-f8-cpu", 8, 1)])
def test_f_counts_the_stem(name, f, patch):
    config = get_preset(name)
    assert config.patch_size == patch and config.downsample_factor == f == patch * 2 ** (len(config.channel_mult) - 1)


def test_s2c_presets_keep_the_cpu_presets_bottleneck():
    for s2c, plain in (("vq-f8-cpu-s2c", "vq-f8-cpu"), ("kl-f8-cpu-s2c", "kl-f8-cpu")):
        a, b = get_preset(s2c), get_preset(plain)
        assert a.downsample_factor == b.downsample_factor == 8 and a.latent_channels == b.latent_channels
        assert getattr(a, "quantizer", None) == getattr(b, "quantizer", None)
    assert bits_per_pixel(get_preset("vq-f8-cpu-s2c")) == bits_per_pixel(get_preset("vq-f8-cpu")) == 12 / 64


def test_ids_grid_is_image_over_f_for_the_s2c_preset():
    tok = ImageTokenizer.from_preset("vq-f8-cpu-s2c")
    ids = tok.encode(photo_like(48, 64))
    assert ids.shape == (6, 8) and tok.downsample_factor == 8
    first = tok.model.encoder.layers()[0]
    assert isinstance(first, SpaceToChannel) and tok.model.encoder.conv_in.in_channels == 12  # 3 * 2 * 2
    assert isinstance(tok.model.decoder.layers()[-1], ChannelToSpace) and tok.model.decoder.conv_out.out_channels == 12
    assert tok.decode(ids).shape == (3, 48, 64)


@pytest.mark.parametrize("size", [(13, 22), (1, 1), (9, 4), (31, 17)])
def test_odd_sizes_round_trip_through_the_api(size):
    tok = ImageTokenizer.from_preset("vq-tiny-s2c")  # f = 4: 2 from the stem, 2 from one Downsample
    img = photo_like(*size)
    ids = tok.encode(img)
    assert ids.shape == (math.ceil(size[0] / 4), math.ceil(size[1] / 4))
    out = tok.decode(ids, size=size)
    assert out.shape == (3, *size) and out.dtype == torch.float32
    batch = tok.encode(torch.stack([img, img]))
    assert batch.shape == (2, *ids.shape) and torch.equal(batch[0], ids)
    assert tok.reconstruct(img).shape == (3, *size)


def test_odd_sizes_round_trip_through_the_vae_api():
    vae = ImageVAE.from_preset("kl-f8-cpu-s2c")
    latents = vae.encode(photo_like(21, 35))
    assert latents.shape == (4, 3, 5)
    assert vae.decode(latents, size=(21, 35)).shape == (3, 21, 35)


@pytest.mark.parametrize("name", ["vq-tiny", "kl-tiny"])
def test_config_saved_without_the_field_loads_to_identical_outputs(name, tmp_path):
    # Configs written before patch_size existed have no such key: they are the LDM layout (patch_size 1).
    model = build_model(get_preset(name)).eval()
    folder = tmp_path / name
    save_folder(model, folder)
    data = json.loads((folder / "config.json").read_text())
    assert data.pop("patch_size") == 1 and data.pop("resample_shortcut") is False
    (folder / "config.json").write_text(json.dumps(data, indent=2) + "\n")
    loaded = load_folder(folder).eval()
    assert loaded.config == model.config and loaded.config.patch_size == 1
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert not any(isinstance(m, (SpaceToChannel, ChannelToSpace)) for m in loaded.modules())
    x = torch.rand(1, 3, 20, 12) * 2 - 1
    with torch.no_grad():
        if name == "vq-tiny":
            ids = model.encode_ids(x)
            assert torch.equal(ids, loaded.encode_ids(x))
            assert torch.equal(model.decode_ids(ids), loaded.decode_ids(ids))
        else:
            mean = model.posterior(x).mean
            assert torch.equal(mean, loaded.posterior(x).mean)
            assert torch.equal(model.decode_latents(mean), loaded.decode_latents(mean))


def test_weights_of_another_patch_size_are_refused(tmp_path):
    folder = tmp_path / "tiny"
    save_folder(build_model(get_preset("vq-tiny")), folder)
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, "patch_size": 2}))
    with pytest.raises(Exception, match="conv_in"):
        load_folder(folder)


@pytest.mark.parametrize("value,match", [(3, "expected 1, 2, 4 or 8"), (0, r"'patch_size' is 0"),
                                         (16, r"'patch_size' is 16"), (2.0, r"'patch_size' is 2\.0")])
def test_bad_patch_sizes_are_refused(value, match):
    from tokenizer import ConfigError

    with pytest.raises(ConfigError, match=match):
        get_preset("vq-tiny").replace(patch_size=value)


def test_tiled_ids_match_untiled_with_the_stem():
    tok = ImageTokenizer.from_preset("vq-tiny-s2c")
    img = photo_like(96, 136)
    ref = tok.encode(img, tile_size=0)
    ids = tok.encode(img, tile_size=32)  # 3 x 5 tiles of 8 x 8 tokens
    assert ids.shape == ref.shape == (24, 34)
    assert (ids == ref).float().mean() >= 0.995


@pytest.mark.parametrize("overrides", [{}, {"resample_shortcut": True}], ids=["stem", "stem+shortcut"])
def test_tiled_stem_features_equal_untiled_with_a_whole_image_halo(overrides):
    # A halo covering the image leaves only the GroupNorm statistics passes to differ from the plain forward,
    # so this checks the tiles' alignment to the stem's patches exactly.
    tok = ImageTokenizer.from_preset("vq-tiny-s2c", **overrides)
    img = photo_like(32, 48)[None]
    with torch.no_grad():
        ref = tok.model.encoder(tok._to_model_input(img.float() / 255))
        out = TiledEncoder(tok.model.encoder, 16, halo=64)(PixelSource(img, 4, tok.device, tok.dtype))
        z = torch.randn(1, tok.model.decoder.conv_in.in_channels, 6, 8)
        whole = tok.model.decoder(z)
        tiled = TiledDecoder(tok.model.decoder, 4, tile_size=16, halo=64)(z)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert tiled.shape == whole.shape == (1, 3, 24, 32)
    torch.testing.assert_close(tiled, whole, rtol=1e-4, atol=1e-4)


def test_resample_shortcuts_are_dc_aes_space_channel_shortcuts():
    # DC-AE (Chen et al. 2024, sec. 3.1): down = pixel-unshuffle then average each group of 4 channels;
    # up = repeat each channel 4 times then pixel-shuffle. With the convs zeroed only the shortcuts remain.
    down, up = Downsample(6, shortcut=True), Upsample(6, shortcut=True)
    for m in (down, up):
        torch.nn.init.zeros_(m.conv.weight)
        torch.nn.init.zeros_(m.conv.bias)
    x = torch.randn(2, 6, 8, 10)
    dc_down = F.pixel_unshuffle(x, 2).view(2, 6, 4, 4, 5).mean(2)  # (B, 4C, h, w) -> (B, C, 4, h, w) -> mean
    dc_up = F.pixel_shuffle(x.repeat_interleave(4, dim=1), 2)  # (B, 4C, H, W) -> (B, C, 2H, 2W)
    torch.testing.assert_close(down(x), dc_down)
    torch.testing.assert_close(up(x), dc_up)


def test_resample_shortcut_changes_outputs_not_weights():
    plain = build_model(get_preset("vq-tiny-s2c")).eval()
    config = get_preset("vq-tiny-s2c").replace(resample_shortcut=True)
    short = build_model(config).eval()
    assert short.state_dict().keys() == plain.state_dict().keys()
    short.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert not torch.equal(short.encode_latents(x), plain.encode_latents(x))
    assert config.parameter_estimate() == sum(p.numel() for p in short.parameters())


def test_smoke_training_with_the_s2c_preset(tmp_path):
    data = tmp_path / "photos"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        low = rng.random((6, 8, 3))
        Image.fromarray((np.kron(low, np.ones((8, 8, 1))) * 255).astype(np.uint8)).save(data / f"{i}.png")
    run = tmp_path / "run"
    argv = ["--preset", "vq-f8-cpu-s2c", "--data", str(data), "--out", str(run), "--smoke",
            "--set", "steps=4", "--set", "amp=none", "--set", "ckpt_every=100"]
    assert train_main(argv) == 0
    tok = ImageTokenizer.from_pretrained(run / "export")
    assert tok.config.patch_size == 2  # the smoke run shrinks the levels, not the stem: f = 2 * 2
    assert tok.encode(photo_like(16, 24)).shape == (4, 6)
