"""The user API: ImageTokenizer / ImageVAE shapes, padding, save/load, and every error a user can cause.

Axis letters: B batch, H/W image size, h/w grid, C latent channels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers_images import gradient_rgb, write_image
from PIL import Image
from safetensors.torch import load_file, save_file

import tokenizer
from tokenizer import ConfigError, ImageTokenizer, ImageVAE, WeightsError, load_any
from tokenizer.config import FORMAT_VERSION

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_tokenizer_package_is_this_project():
    """PyPI has other packages imported as `tokenizer`: make sure this one is what resolves."""
    assert tokenizer.IMGTOK is True
    assert Path(tokenizer.__file__).resolve().is_relative_to(REPO_ROOT / "tokenizer")


def test_properties(tiny_tokenizer):
    assert tiny_tokenizer.vocab_size == 64
    assert tiny_tokenizer.downsample_factor == 2
    assert tiny_tokenizer.bits_per_token == 6.0
    assert tiny_tokenizer.bits_per_pixel(4, 4) == pytest.approx(4 * 6 / 16)
    assert ImageTokenizer.from_preset("vq-tiny", **{"quantizer.codebook_size": 32}).vocab_size == 32


# --- shapes --------------------------------------------------------------------------------------

def test_shape_rule_tokenizer(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    ids = tok.encode(torch.rand(3, 8, 12))
    assert ids.shape == (4, 6) and ids.dtype == torch.long
    assert ids.min() >= 0 and ids.max() < tok.vocab_size
    batch = tok.encode(torch.rand(3, 3, 8, 12))
    assert batch.shape == (3, 4, 6) and batch.dtype == torch.long
    listed = tok.encode([torch.rand(3, 8, 12), torch.rand(3, 6, 6)])
    assert isinstance(listed, list) and [tuple(i.shape) for i in listed] == [(4, 6), (3, 3)]

    img = tok.decode(ids)
    assert img.shape == (3, 8, 12) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    assert tok.decode(batch).shape == (3, 3, 8, 12)
    decoded = tok.decode(listed)
    assert isinstance(decoded, list) and [tuple(i.shape) for i in decoded] == [(3, 8, 12), (3, 6, 6)]
    assert [tuple(i.shape) for i in tok.decode(listed, size=[(7, 11), (5, 6)])] == [(3, 7, 11), (3, 5, 6)]


def test_every_input_form_gives_the_same_ids(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    array = gradient_rgb(10, 14)  # (H, W, 3) uint8
    chw_u8 = torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, H, W) uint8
    chw_float = chw_u8.float() / 255
    path = tmp_path / "img.png"
    Image.fromarray(array).save(path)
    expected = tok.encode(chw_float)
    assert expected.shape == (5, 7)
    for form in (str(path), path, Image.open(path), array, array.astype(np.uint16) * 257, chw_u8):
        assert torch.equal(tok.encode(form), expected), type(form)
    assert torch.equal(tok.encode(chw_u8[None].repeat(2, 1, 1, 1)), expected[None].repeat(2, 1, 1))
    assert torch.equal(tok.encode(chw_float[None]), expected[None])
    jpeg = write_image(tmp_path / "img.jpg", height=10, width=14)
    assert tok.encode(jpeg).shape == (5, 7)
    mixed = tok.encode([str(path), array, torch.rand(3, 4, 4), Image.open(jpeg)])
    assert [tuple(i.shape) for i in mixed] == [(5, 7), (5, 7), (2, 2), (5, 7)]
    assert torch.equal(mixed[0], expected) and torch.equal(mixed[1], expected)


def test_batching_does_not_change_ids(tiny_tokenizer):
    tok = tiny_tokenizer
    tok.max_batch = 2  # 5 same-size images -> 3 chunks
    images = [torch.rand(3, 6, 8) for _ in range(5)] + [torch.rand(3, 4, 4)]
    one_by_one = [tok.encode(img) for img in images]
    together = tok.encode(images)
    assert all(torch.equal(a, b) for a, b in zip(one_by_one, together))
    assert torch.equal(tok.encode(torch.stack(images[:5])), torch.stack(one_by_one[:5]))


def test_odd_sizes_are_edge_padded_and_cropped_back(tiny_tokenizer):
    tok = tiny_tokenizer
    image = torch.rand(3, 7, 9)
    ids = tok.encode(image)
    assert ids.shape == (4, 5)  # ceil(7/2) x ceil(9/2)
    padded = F.pad(image[None], (0, 1, 0, 1), mode="replicate")[0]  # (3, 8, 10), edges repeated
    assert torch.equal(tok.encode(padded), ids)
    rec = tok.reconstruct(image)
    assert rec.shape == (3, 7, 9)
    assert torch.equal(rec, tok.decode(ids, size=(7, 9)))
    assert torch.equal(tok.decode(ids)[:, :7, :9], rec)
    assert tok.reconstruct(torch.rand(2, 3, 7, 9)).shape == (2, 3, 7, 9)
    recs = tok.reconstruct([torch.rand(3, 7, 9), gradient_rgb(5, 3)])
    assert [tuple(r.shape) for r in recs] == [(3, 7, 9), (3, 5, 3)]


def test_grayscale_rgba_and_exif_through_the_api(tiny_tokenizer, tmp_path):
    from helpers_images import write_exif_rotated_jpeg

    tok = tiny_tokenizer
    for mode, suffix in (("L", "png"), ("RGBA", "png"), ("P+transparency", "png"), ("I;16", "png"), ("CMYK", "jpg")):
        path = write_image(tmp_path / f"{mode.replace(';', '').replace('+', '_')}.{suffix}", mode, height=9, width=13)
        assert tok.encode(path).shape == (5, 7), mode
        assert tok.reconstruct(path).shape == (3, 9, 13), mode
    rotated = write_exif_rotated_jpeg(tmp_path / "rot.jpg", height=9, width=14)
    assert tok.encode(rotated).shape == (7, 5)  # 14 x 9 as displayed, not 9 x 14 as stored


def test_decode_equals_decoding_quantized_latents(tiny_tokenizer):
    tok = tiny_tokenizer
    image = torch.rand(2, 3, 8, 8)
    ids = tok.encode(image)
    model = tok.model
    with torch.no_grad():
        q = model.quantizer(model.encode_latents(image * 2 - 1))
        expected = ((model.decode_latents(q.quantized) + 1) / 2).clamp(0, 1)
    assert torch.equal(q.indices, ids)
    torch.testing.assert_close(tok.decode(ids), expected, rtol=1e-5, atol=1e-5)


# --- save / load ---------------------------------------------------------------------------------

def test_save_load_gives_identical_ids(saved_tiny_tokenizer):
    folder, tok = saved_tiny_tokenizer
    assert {"config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    loaded = ImageTokenizer.from_pretrained(folder)
    images = torch.rand(3, 3, 10, 6)
    ids = tok.encode(images)
    assert torch.equal(loaded.encode(images), ids)
    assert torch.equal(loaded.decode(ids), tok.decode(ids))
    config = json.loads((folder / "config.json").read_text())
    assert config["imgtok_model_type"] == "vq" and config["format_version"] == FORMAT_VERSION
    assert isinstance(load_any(folder), ImageTokenizer)


def test_from_pretrained_device_and_dtype(saved_tiny_tokenizer):
    folder, tok = saved_tiny_tokenizer
    half = ImageTokenizer.from_pretrained(folder, device="cpu", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.device == torch.device("cpu")
    assert half.model.quantizer.codebook.dtype == torch.float32  # lookups stay fp32
    ids = half.encode(torch.rand(3, 8, 8))
    assert ids.dtype == torch.long and ids.shape == (4, 4)
    assert half.decode(ids).dtype == torch.float32


def test_save_in_bfloat16_keeps_codebook_fp32(tiny_tokenizer, tmp_path):
    folder = tiny_tokenizer.save_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    state = load_file(str(folder / "model.safetensors"))
    assert state["quantizer.codebook"].dtype == torch.float32
    assert state["decoder.conv_out.weight"].dtype == torch.bfloat16
    ImageTokenizer.from_pretrained(folder)  # still loads


def test_vae_save_load(tiny_vae, tmp_path):
    folder = tiny_vae.save_pretrained(tmp_path / "kl")
    loaded = ImageVAE.from_pretrained(folder)
    image = torch.rand(3, 6, 6)
    assert torch.equal(loaded.encode(image), tiny_vae.encode(image))
    assert isinstance(load_any(folder), ImageVAE)


# --- the VAE -------------------------------------------------------------------------------------

def test_shape_rule_vae(tiny_vae):
    vae = tiny_vae
    z = vae.encode(torch.rand(3, 7, 9))
    assert z.shape == (4, 4, 5) and z.dtype == torch.float32
    assert vae.encode(torch.rand(2, 3, 8, 8)).shape == (2, 4, 4, 4)
    listed = vae.encode([torch.rand(3, 8, 8), torch.rand(3, 4, 6)])
    assert [tuple(t.shape) for t in listed] == [(4, 4, 4), (4, 2, 3)]
    assert vae.decode(z).shape == (3, 8, 10)
    assert vae.decode(z, size=(7, 9)).shape == (3, 7, 9)
    assert vae.decode(torch.zeros(2, 4, 3, 3)).shape == (2, 3, 6, 6)
    assert [tuple(t.shape) for t in vae.decode(listed)] == [(3, 8, 8), (3, 4, 6)]
    assert vae.reconstruct(torch.rand(3, 7, 9)).shape == (3, 7, 9)


def test_vae_scaling_and_sampling():
    vae = ImageVAE.from_preset("kl-tiny", scaling_factor=0.5, shift_factor=0.1)
    image = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        mean = vae.model.posterior(image * 2 - 1).mean
        expected = ((vae.model.decode_latents(mean) + 1) / 2).clamp(0, 1)
    z = vae.encode(image)
    torch.testing.assert_close(z, (mean - 0.1) * 0.5)
    torch.testing.assert_close(vae.decode(z), expected, rtol=1e-5, atol=1e-5)  # decode undoes the scaling
    a = vae.encode(image, sample=True, generator=torch.Generator().manual_seed(3))
    b = vae.encode(image, sample=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, z)


@pytest.mark.parametrize(
    "latents,error,match",
    [
        (torch.zeros(4, 4, 4, dtype=torch.long), TypeError, "float"),
        (torch.zeros(3, 4, 4), ValueError, "C = 4"),
        (torch.zeros(4, 4), ValueError, r"\(C, h, w\)"),
    ],
    ids=["int", "channels", "ndim"],
)
def test_vae_decode_errors(tiny_vae, latents, error, match):
    with pytest.raises(error, match=match):
        tiny_vae.decode(latents)


# --- id errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "ids,error,match",
    [
        (torch.tensor([[0, 1], [2, -1]]), ValueError, r"id -1 is outside the vocabulary \[0, 64\)"),
        (torch.tensor([[0, 64], [2, 3]]), ValueError, r"id 64 is outside the vocabulary \[0, 64\)"),
        (torch.zeros(2, 2), TypeError, "dtype torch.float32; expected an integer dtype"),
        (np.zeros((2, 2), dtype=np.float64), TypeError, "integer dtype"),
        (torch.zeros(2, 2, dtype=torch.bool), TypeError, "integer dtype"),
        (torch.zeros(4, dtype=torch.long), ValueError, r"shape \(4,\); expected \(h, w\) or \(B, h, w\)"),
        (torch.zeros(1, 1, 2, 2, dtype=torch.long), ValueError, r"expected \(h, w\) or \(B, h, w\)"),
        (torch.zeros(0, 2, 2, dtype=torch.long), ValueError, "shape"),
        ([[1, 2], [3, 4]], TypeError, "expected a tensor or numpy array of integer ids, got int"),
    ],
    ids=["negative", "too-large", "float", "float-numpy", "bool", "1d", "4d", "empty", "nested-list"],
)
def test_bad_ids(tiny_tokenizer, ids, error, match):
    with pytest.raises(error, match=match):
        tiny_tokenizer.decode(ids)


def test_numpy_ids_are_accepted(tiny_tokenizer):
    ids = tiny_tokenizer.encode(torch.rand(3, 6, 6))
    for dtype in (np.uint16, np.int32, np.int64):
        assert torch.equal(tiny_tokenizer.decode(ids.numpy().astype(dtype)), tiny_tokenizer.decode(ids))


# --- model errors --------------------------------------------------------------------------------

def test_unknown_preset_and_wrong_family():
    with pytest.raises(ConfigError, match="unknown preset 'vq-f7'.*vq-f8"):
        ImageTokenizer.from_preset("vq-f7")
    with pytest.raises(ConfigError, match="'kl-tiny' is a 'kl' model"):
        ImageTokenizer.from_preset("kl-tiny")
    with pytest.raises(ConfigError, match="'vq-tiny' is a 'vq' model"):
        ImageVAE.from_preset("vq-tiny")


def _edit_config(folder: Path, **changes) -> Path:
    path = folder / "config.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path.write_text(json.dumps(data))
    return path


def _edit_weights(folder: Path, drop: str | None = None, add: str | None = None) -> Path:
    path = folder / "model.safetensors"
    state = load_file(str(path))
    if drop:
        del state[drop]
    if add:
        state[add] = torch.zeros(3)
    save_file(state, str(path))
    return path


def test_weights_missing_key(saved_tiny_tokenizer):
    folder, _ = saved_tiny_tokenizer
    _edit_weights(folder, drop="decoder.conv_out.bias")
    with pytest.raises(WeightsError, match=r"model\.safetensors.*1 missing key.*decoder\.conv_out\.bias"):
        ImageTokenizer.from_pretrained(folder)


def test_weights_unexpected_key(saved_tiny_tokenizer):
    folder, _ = saved_tiny_tokenizer
    _edit_weights(folder, add="decoder.extra.weight")
    with pytest.raises(WeightsError, match=r"model\.safetensors.*unexpected key.*decoder\.extra\.weight"):
        ImageTokenizer.from_pretrained(folder)


def test_weights_wrong_shape(saved_tiny_tokenizer):
    folder, _ = saved_tiny_tokenizer
    _edit_config(folder, quantizer={"kind": "vq", "codebook_size": 128})
    with pytest.raises(WeightsError, match=r"model\.safetensors.*shape mismatch.*quantizer\.codebook.*\(64, 4\)"):
        ImageTokenizer.from_pretrained(folder)


def test_corrupt_weights_file(saved_tiny_tokenizer):
    folder, _ = saved_tiny_tokenizer
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(WeightsError, match=r"model\.safetensors.*truncated"):
        ImageTokenizer.from_pretrained(folder)


def test_newer_format_version(saved_tiny_tokenizer):
    folder, _ = saved_tiny_tokenizer
    _edit_config(folder, format_version=FORMAT_VERSION + 1)
    with pytest.raises(ConfigError, match=rf"config\.json.*format_version {FORMAT_VERSION + 1}.*upgrade"):
        ImageTokenizer.from_pretrained(folder)


def test_missing_format_version(saved_tiny_tokenizer):
    folder, _ = saved_tiny_tokenizer
    _edit_config(folder, format_version=None)
    with pytest.raises(ConfigError, match=r"config\.json: 'format_version' is None; expected a positive integer"):
        ImageTokenizer.from_pretrained(folder)


def test_config_without_model_type(saved_tiny_tokenizer):
    folder, _ = saved_tiny_tokenizer
    _edit_config(folder, imgtok_model_type=None)
    with pytest.raises(ConfigError, match=r"config\.json.*no 'imgtok_model_type'.*not an imgtok config"):
        ImageTokenizer.from_pretrained(folder)


def test_config_with_unknown_field(saved_tiny_tokenizer):
    folder, _ = saved_tiny_tokenizer
    _edit_config(folder, hidden_size=7)
    with pytest.raises(ConfigError, match=r"config\.json.*unknown field.*hidden_size"):
        ImageTokenizer.from_pretrained(folder)


def test_wrong_family_folder(tiny_vae, tmp_path):
    folder = tiny_vae.save_pretrained(tmp_path / "kl")
    with pytest.raises(ConfigError, match=r"config\.json.*'kl' model, expected 'vq'"):
        ImageTokenizer.from_pretrained(folder)


def test_pickle_only_folder_is_refused(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    ImageTokenizer.from_preset("vq-tiny").config.save(folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(WeightsError, match=r"pickle.*--allow-pickle"):
        ImageTokenizer.from_pretrained(folder)


def test_missing_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        ImageTokenizer.from_pretrained(tmp_path)  # exists, but empty
    afile = tmp_path / "x.txt"
    afile.write_text("")
    with pytest.raises(FileNotFoundError, match="x.txt"):
        ImageTokenizer.from_pretrained(afile)
