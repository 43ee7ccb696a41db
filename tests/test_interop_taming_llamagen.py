"""taming-transformers VQGAN, LDM AutoencoderKL and LlamaGen VQ checkpoints convert to imgtok exactly.

Each test takes a random imgtok model, writes its tensors under the key names the other library's public
code gives its modules (taming ``taming/modules/diffusionmodules/model.py`` + ``taming/models/vqgan.py``,
LlamaGen ``tokenizer/tokenizer_image/vq_model.py``), in the file format that library saves, converts the
file back with ``imgtok convert`` and checks that config, tensors and outputs come back unchanged. Where
the ``taming-transformers`` package is importable, one more test runs its own modules against ours.
"""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch
from safetensors.torch import save_file

from tokenizer import (
    ConfigError,
    ImageTokenizer,
    ImageVAE,
    KLConfig,
    VectorQuantizerConfig,
    VQConfig,
    WeightsError,
    build_model,
    get_preset,
)
from tokenizer.cli import main as cli_main
from tokenizer.convert import convert
from tokenizer.pretrained import load_folder

RES = ("norm1", "conv1", "norm2", "conv2")
ATTN = ("norm", "q", "k", "v", "proj_out")

# taming VQGAN: 256-d-style codes without normalisation, legacy beta on the codebook term, attention at the
# lowest resolution (attn_resolutions=[16] at f16), post_quant_conv back to z_channels.
TAMING = VQConfig(base_channels=32, channel_mult=(1, 1, 2), layers_per_block=1, attn_levels=(2,), z_channels=16,
                  latent_channels=12, post_quant_to_z=True, norm_groups=32,
                  quantizer=VectorQuantizerConfig(codebook_size=48, l2_normalize=False, commitment_beta=1.0,
                                                  codebook_loss_weight=0.25))
# LlamaGen VQ: 8-d l2-normalised codes, attention after every block of the lowest level (encoder and decoder).
LLAMAGEN = VQConfig(base_channels=32, channel_mult=(1, 2, 2), layers_per_block=2, attn_levels=(2,), z_channels=16,
                    latent_channels=8, post_quant_to_z=True, norm_groups=32,
                    quantizer=VectorQuantizerConfig(codebook_size=64, l2_normalize=True, commitment_beta=0.25,
                                                    codebook_loss_weight=1.0))
# LDM AutoencoderKL (Stable Diffusion's first stage): no attention in the levels.
LDM_KL = KLConfig(base_channels=32, channel_mult=(1, 2), layers_per_block=1, z_channels=4, latent_channels=4,
                  norm_groups=32, scaling_factor=0.18215)


def _params(state: dict, ours: str, theirs: str) -> dict[str, tuple[str, str]]:
    """Every parameter of module ``ours`` under module name ``theirs``: their key -> our key."""
    return {theirs + k[len(ours):]: (k, theirs) for k in state if k.startswith(ours + ".")}


def _modules(config, style: str):
    """(our module, their module) pairs, written from the peers' documented layouts."""
    n, layers = len(config.channel_mult), config.layers_per_block
    llama = style == "llamagen"
    mid = {"block_1": "0", "attn_1": "1", "block_2": "2"} if llama else {m: m for m in ("block_1", "attn_1", "block_2")}
    pairs = []
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.{m}", f"{part}.{m}") for m in ("conv_in", "norm_out", "conv_out")]
        pairs += [(f"{part}.mid.{m}", f"{part}.mid.{mid[m]}") for m in ("block_1", "attn_1", "block_2")]
    for i in range(n):
        enc = f"encoder.conv_blocks.{i}" if llama else f"encoder.down.{i}"
        dec = f"decoder.conv_blocks.{n - 1 - i}" if llama else f"decoder.up.{i}"  # LlamaGen: lowest level first
        for j in range(layers):
            pairs.append((f"encoder.down.{i}.block.{j}", f"{enc}.{'res' if llama else 'block'}.{j}"))
            if i in config.attn_levels:
                pairs.append((f"encoder.down.{i}.attn.{j}", f"{enc}.attn.{j}"))
        for j in range(layers + 1):
            pairs.append((f"decoder.up.{i}.block.{j}", f"{dec}.{'res' if llama else 'block'}.{j}"))
            if i in config.attn_levels:
                pairs.append((f"decoder.up.{i}.attn.{j}", f"{dec}.attn.{j}"))
        if i < n - 1:
            pairs.append((f"encoder.down.{i}.downsample", f"{enc}.downsample"))
        if i > 0:
            pairs.append((f"decoder.up.{i}.upsample", f"{dec}.upsample"))
    pairs += [("quant_conv", "quant_conv"), ("post_quant_conv", "post_quant_conv")]
    return pairs


def their_state(model, style: str) -> dict[str, torch.Tensor]:
    """``model``'s tensors under taming's or LlamaGen's key names."""
    ours = model.state_dict()
    mapping: dict[str, tuple[str, str]] = {}
    for our_module, their_module in _modules(model.config, style):
        mapping.update(_params(ours, our_module, their_module))
    out = {theirs: ours[our_key].clone() for theirs, (our_key, _) in mapping.items()}
    if "quantizer.codebook" in ours:
        out["quantize.embedding.weight"] = ours["quantizer.codebook"].clone()
    covered = {our_key for our_key, _ in mapping.values()} | {"quantizer.codebook"}
    left = [k for k in ours if k not in covered and not k.startswith("quantizer.")]
    assert not left, f"the test's layout misses {left[:3]}"
    return out


def _random(config):
    torch.manual_seed(4)
    model = build_model(config).eval()
    with torch.no_grad():  # GroupNorm affine parameters start at 1/0: make them count
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _assert_same(model, folder) -> None:
    loaded = load_folder(folder)
    assert loaded.config.to_dict() == model.config.to_dict()
    expected = model.state_dict()
    for key, value in loaded.state_dict().items():
        if key not in ("quantizer.usage", "quantizer.usage_steps"):
            assert torch.equal(value, expected[key]), key
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        if model.config.model_type == "vq":
            ids = model.encode_ids(x)
            assert torch.equal(loaded.encode_ids(x), ids)
            assert torch.equal(loaded.decode_ids(ids), model.decode_ids(ids))
            assert ids.unique().numel() > 1
        else:
            assert torch.equal(loaded.posterior(x).mean, model.posterior(x).mean)


def test_taming_lightning_checkpoint_round_trip(tmp_path, capsys):
    model = _random(TAMING)
    state = their_state(model, "taming")
    # A Lightning checkpoint also carries the training loss and Python objects (hyper-parameters).
    state["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 4, 1, 1)
    ckpt = {"epoch": 3, "global_step": 100, "state_dict": state,
            "hyper_parameters": argparse.Namespace(embed_dim=12, n_embed=48)}
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)

    assert cli_main(["convert", str(path), str(tmp_path / "no")]) == 1
    assert "--allow-pickle" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
    with pytest.warns(UserWarning, match=r"not rebuilt .*no code from the file ran\): argparse\.Namespace"):
        result = convert(path, tmp_path / "out", allow_pickle=True)
    assert result.source_format == "taming"
    assert sorted(result.dropped) == sorted(k for k in state if k.startswith("loss."))
    _assert_same(model, tmp_path / "out")


def test_llamagen_checkpoint_round_trip(tmp_path, capsys):
    model = _random(LLAMAGEN)
    state = their_state(model, "llamagen")
    state["quantize.codebook_used"] = torch.zeros(65536)  # LlamaGen's usage log (a buffer)
    path = tmp_path / "vq_ds4_c2i.pt"
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "steps": 10}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # plain tensors and dicts: nothing left unrebuilt, no warning
        assert cli_main(["convert", str(path), str(tmp_path / "out"), "--allow-pickle"]) == 0
    printed = capsys.readouterr().out
    assert "llamagen" in printed and "l2-normalised" in printed
    _assert_same(model, tmp_path / "out")
    tok = ImageTokenizer.from_pretrained(tmp_path / "out")
    assert tok.vocab_size == 64 and tok.config.latent_channels == 8

    # The same tensors as safetensors need no opt-in.
    save_file(state, str(tmp_path / "vq.safetensors"))
    convert(tmp_path / "vq.safetensors", tmp_path / "out2")
    _assert_same(model, tmp_path / "out2")


def test_ldm_autoencoder_kl_with_config_file(tmp_path):
    model = _random(LDM_KL)
    state = {f"first_stage_model.{k}": v for k, v in their_state(model, "taming").items()}
    state["first_stage_model.loss.logvar"] = torch.zeros(())
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(8, 4, 3, 3)  # rest of an SD checkpoint
    save_file(state, str(tmp_path / "sd.safetensors"))
    config_path = tmp_path / "sd-vae.json"
    LDM_KL.save(config_path)  # the shapes cannot tell scaling_factor: give the config
    result = convert(tmp_path / "sd.safetensors", tmp_path / "out", config=str(config_path))
    assert result.source_format == "ldm"
    _assert_same(model, tmp_path / "out")
    assert ImageVAE.from_pretrained(tmp_path / "out").config.scaling_factor == pytest.approx(0.18215)


def test_imgtok_layout_file_with_preset(tmp_path):
    model = _random(get_preset("vq-tiny"))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError, match="--config"):
        convert(tmp_path / "w.safetensors", tmp_path / "out")
    convert(tmp_path / "w.safetensors", tmp_path / "out", config="vq-tiny")
    _assert_same(model, tmp_path / "out")


def test_bad_layouts_name_the_key(tmp_path):
    model = _random(LLAMAGEN)
    state = their_state(model, "llamagen")
    extra = dict(state, **{"quantize.embedding_proj.weight": torch.zeros(8, 8)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(WeightsError, match="quantize.embedding_proj.weight"):
        convert(tmp_path / "extra.safetensors", tmp_path / "o1")

    save_file(state, str(tmp_path / "ok.safetensors"))
    with pytest.raises(WeightsError, match=r"encoder\.conv_in\.weight: file \(32, 3, 3, 3\) vs model \(8, 3, 3, 3\)"):
        convert(tmp_path / "ok.safetensors", tmp_path / "o2", config="vq-tiny")

    # taming's GumbelQuantize keeps other keys: refused by name, not half-loaded.
    gumbel = their_state(_random(TAMING), "taming")
    gumbel["quantize.embed.weight"] = gumbel.pop("quantize.embedding.weight")
    gumbel["quantize.proj.weight"] = torch.zeros(48, 12, 1, 1)
    save_file(gumbel, str(tmp_path / "gumbel.safetensors"))
    with pytest.raises(WeightsError, match="quantize.embed.weight"):
        convert(tmp_path / "gumbel.safetensors", tmp_path / "o3")

    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(WeightsError, match="junk.safetensors"):
        convert(tmp_path / "junk.safetensors", tmp_path / "o4")
    (tmp_path / "junk.pt").write_bytes(b"\x80\x04 truncated")
    with pytest.raises(WeightsError, match="junk.pt.*corrupt or truncated"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the safe unpickler refuses it first, as it would a Lightning file
        convert(tmp_path / "junk.pt", tmp_path / "o5", allow_pickle=True)


def test_matches_the_real_taming_modules(tmp_path):
    """Against taming-transformers' own Encoder/Decoder/VectorQuantizer, where that package is installed
    (PyPI ``taming-transformers``; its Lightning dependencies are not needed for these modules)."""
    model_py = pytest.importorskip("taming.modules.diffusionmodules.model")
    quantize_py = pytest.importorskip("taming.modules.vqvae.quantize")
    from torch import nn

    dd = dict(double_z=False, z_channels=64, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
              num_res_blocks=1, attn_resolutions=[16], dropout=0.0)

    class TamingVQ(nn.Module):  # taming.models.vqgan.VQModel's attribute names, without Lightning
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = model_py.Encoder(**dd), model_py.Decoder(**dd)
            self.quantize = quantize_py.VectorQuantizer(64, 16, beta=0.25)
            self.quant_conv, self.post_quant_conv = nn.Conv2d(64, 16, 1), nn.Conv2d(16, 64, 1)

    theirs = TamingVQ().eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
        h = theirs.quant_conv(theirs.encoder(x))  # (B, 16, 16, 16)
        flat = h.permute(0, 2, 3, 1).reshape(-1, 16)  # (N, 16): seed the codes from real latents
        theirs.quantize.embedding.weight.copy_(flat[torch.randperm(flat.shape[0])[:64]])
        z_q, _, (_, _, their_ids) = theirs.quantize(h)
        reference = theirs.decoder(theirs.post_quant_conv(z_q))
    state = dict(theirs.state_dict(), **{"loss.discriminator.main.0.weight": torch.randn(8, 3, 4, 4)})
    torch.save({"state_dict": state, "global_step": 1}, tmp_path / "last.ckpt")
    convert(tmp_path / "last.ckpt", tmp_path / "out", allow_pickle=True)
    ours = load_folder(tmp_path / "out")
    assert ours.config.attn_levels == (1,) and ours.config.post_quant_to_z
    with torch.no_grad():
        ids = ours.encode_ids(x)
        assert torch.equal(ids.flatten(), their_ids.flatten())
        torch.testing.assert_close(ours.decode_ids(ids), reference, atol=1e-4, rtol=0)
