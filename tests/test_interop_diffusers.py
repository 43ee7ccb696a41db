"""diffusers AutoencoderKL / VQModel folders load into imgtok with diffusers' own outputs.

Each case builds a diffusers model with random weights, ``save_pretrained``s it, loads the folder with
``ImageVAE`` / ``ImageTokenizer.from_pretrained`` and compares against diffusers run on the same input:
the unscaled posterior mean, the ids (identical but for near-ties, at most 0.1%) and the reconstructions
(within 1e-4 in fp32).
"""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from tokenizer import ConfigError, ImageTokenizer, ImageVAE, WeightsError, load_any  # noqa: E402
from tokenizer.cli import main as cli_main  # noqa: E402
from tokenizer.convert import convert  # noqa: E402

try:  # the loopback Hub fixture lives with the Hub tests
    from test_hub import hub  # noqa: E402, F401
except ImportError:
    hub = None

ATOL = 1e-4
DOWN, ATTN_DOWN = "DownEncoderBlock2D", "AttnDownEncoderBlock2D"
UP, ATTN_UP = "UpDecoderBlock2D", "AttnUpDecoderBlock2D"

KL_CASES = {
    # SD-like: 4 latent channels, no attention in the levels, mid attention.
    "c4": dict(block_out_channels=(8, 16), down_block_types=(DOWN, DOWN), up_block_types=(UP, UP),
               layers_per_block=1, latent_channels=4, norm_num_groups=4),
    # 16 latent channels, FLUX-style: no quant convs, a shift factor; attention at the lowest level.
    "c16-noquant": dict(block_out_channels=(8, 8, 16), down_block_types=(DOWN, DOWN, ATTN_DOWN),
                        up_block_types=(ATTN_UP, UP, UP), layers_per_block=2, latent_channels=16,
                        norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False,
                        scaling_factor=0.3611, shift_factor=0.1159),
    # No mid attention, odd multipliers (1, 3).
    "c8-nomid": dict(block_out_channels=(4, 12), down_block_types=(ATTN_DOWN, DOWN),
                     up_block_types=(UP, ATTN_UP), layers_per_block=1, latent_channels=8, norm_num_groups=2,
                     mid_block_add_attention=False, scaling_factor=0.5),
}
VQ_CASES = {
    # 3-d codes behind post_quant_conv back to 6 channels (vq_embed_dim != latent_channels).
    "K32-e3": dict(block_out_channels=(8, 16, 16), down_block_types=(DOWN,) * 3, up_block_types=(UP,) * 3,
                   layers_per_block=1, latent_channels=6, vq_embed_dim=3, num_vq_embeddings=32, norm_num_groups=4),
    # Codes as wide as the encoder output, attention at the top level, a larger codebook.
    "K256-e4": dict(block_out_channels=(8, 16), down_block_types=(ATTN_DOWN, DOWN), up_block_types=(UP, ATTN_UP),
                    layers_per_block=2, latent_channels=4, num_vq_embeddings=256, norm_num_groups=4,
                    lookup_from_codebook=True),
}


def _images(batch: int = 2, height: int = 16, width: int = 24) -> torch.Tensor:
    return torch.rand(batch, 3, height, width)  # [0, 1]


def _spread_codebook(model) -> None:
    """Replace diffusers' tiny uniform(-1/K, 1/K) init by codes spread like the encoder's outputs, so
    that lookups exercise many codes instead of a handful of boundary codes."""
    with torch.no_grad():
        h = model.encode(_images(4) * 2 - 1).latents  # (B, E, h, w)
        flat = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])  # (N, E)
        weight = model.quantize.embedding.weight
        pick = torch.randint(0, flat.shape[0], (weight.shape[0],))
        weight.copy_(flat[pick] + 0.3 * flat.std() * torch.randn_like(weight))


@pytest.fixture(scope="module", params=sorted(KL_CASES))
def kl_folder(request, tmp_path_factory):
    torch.manual_seed(1)
    model = diffusers.AutoencoderKL(**KL_CASES[request.param]).eval()
    folder = tmp_path_factory.mktemp(f"kl-{request.param}")
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module", params=sorted(VQ_CASES))
def vq_folder(request, tmp_path_factory):
    torch.manual_seed(2)
    model = diffusers.VQModel(**VQ_CASES[request.param]).eval()
    _spread_codebook(model)
    folder = tmp_path_factory.mktemp(f"vq-{request.param}")
    model.save_pretrained(folder)
    return folder, model


@torch.no_grad()
def test_autoencoder_kl_matches_diffusers(kl_folder):
    folder, theirs = kl_folder
    vae = ImageVAE.from_pretrained(folder)
    cfg = theirs.config
    assert vae.latent_channels == cfg.latent_channels
    assert vae.config.scaling_factor == pytest.approx(cfg.scaling_factor)
    assert vae.config.shift_factor == pytest.approx(cfg.shift_factor or 0.0)

    images = _images()
    x = images * 2 - 1
    posterior = theirs.encode(x).latent_dist
    ours = vae.model.posterior(x)
    torch.testing.assert_close(ours.mean, posterior.mean, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.logvar, posterior.logvar, atol=ATOL, rtol=0)
    reference = theirs.decode(posterior.mean).sample
    torch.testing.assert_close(vae.model.decode_latents(posterior.mean), reference, atol=ATOL, rtol=0)

    # The public API: scaled latents out, the same images back.
    scaled = vae.encode(images)
    expected = (posterior.mean - (cfg.shift_factor or 0.0)) * cfg.scaling_factor
    torch.testing.assert_close(scaled, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(vae.decode(scaled), ((reference + 1) / 2).clamp(0, 1), atol=ATOL, rtol=0)


def _near_tie(codebook: torch.Tensor, vector: torch.Tensor, a: int, b: int) -> bool:
    da, db = (codebook[a] - vector).norm(), (codebook[b] - vector).norm()
    return bool((da - db).abs() <= 1e-5 * max(da.item(), db.item(), 1e-12))


@torch.no_grad()
def test_vq_model_matches_diffusers(vq_folder):
    folder, theirs = vq_folder
    tok = ImageTokenizer.from_pretrained(folder)
    assert tok.vocab_size == theirs.config.num_vq_embeddings
    assert tok.config.quantizer.l2_normalize is False

    images = _images(batch=3)
    x = images * 2 - 1
    h = theirs.encode(x).latents  # (B, E, h, w)
    _, _, (_, _, their_ids) = theirs.quantize(h)
    their_ids = their_ids.view(h.shape[0], h.shape[2], h.shape[3])  # (B, h, w)
    ids = tok.encode(images)
    assert ids.shape == their_ids.shape
    differ = (ids != their_ids).nonzero().tolist()
    assert len(differ) <= 0.001 * ids.numel()
    flat = h.permute(0, 2, 3, 1)  # (B, h, w, E)
    codebook = theirs.quantize.embedding.weight
    assert all(_near_tie(codebook, flat[b, i, j], ids[b, i, j], their_ids[b, i, j]) for b, i, j in differ)
    assert their_ids.unique().numel() > 3  # the comparison covered more than a couple of codes

    reference = theirs.decode(h).sample  # diffusers quantizes inside decode
    torch.testing.assert_close(tok.model.decode_ids(their_ids), reference, atol=ATOL, rtol=0)
    torch.testing.assert_close(tok.decode(their_ids), ((reference + 1) / 2).clamp(0, 1), atol=ATOL, rtol=0)
    if theirs.config.lookup_from_codebook:  # diffusers decoding ids directly, as our decode does
        shape = (*their_ids.shape, h.shape[1])
        direct = theirs.decode(their_ids.flatten(), force_not_quantize=True, shape=shape).sample
        torch.testing.assert_close(tok.model.decode_ids(their_ids), direct, atol=ATOL, rtol=0)


def test_pipeline_folder_and_load_any(kl_folder, tmp_path):
    folder, theirs = kl_folder
    pipeline = tmp_path / "pipeline"
    theirs.save_pretrained(pipeline / "vae")
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    vae = ImageVAE.from_pretrained(pipeline)
    also = load_any(pipeline)
    assert isinstance(also, ImageVAE)
    x = _images(1)
    torch.testing.assert_close(vae.encode(x), ImageVAE.from_pretrained(folder).encode(x))


def test_wrong_family_is_refused(kl_folder, vq_folder):
    with pytest.raises(ConfigError, match="AutoencoderKL.*expected 'vq'"):
        ImageTokenizer.from_pretrained(kl_folder[0])
    with pytest.raises(ConfigError, match="VQModel.*expected 'kl'"):
        ImageVAE.from_pretrained(vq_folder[0])


def test_convert_writes_an_imgtok_folder(vq_folder, tmp_path, capsys):
    folder, _ = vq_folder
    out = tmp_path / "converted"
    assert cli_main(["convert", str(folder), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "diffusers" in printed and str(out) in printed
    config = json.loads((out / "config.json").read_text())
    assert config["imgtok_model_type"] == "vq" and config["quantizer"]["l2_normalize"] is False
    original, converted = ImageTokenizer.from_pretrained(folder), ImageTokenizer.from_pretrained(out)
    images = _images(1)
    assert torch.equal(original.encode(images), converted.encode(images))
    for key, value in original.model.state_dict().items():
        assert torch.equal(converted.model.state_dict()[key], value), key


def test_pickle_only_folder_is_refused_then_converted(tmp_path):
    torch.manual_seed(3)
    theirs = diffusers.AutoencoderKL(**KL_CASES["c4"]).eval()
    theirs.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(WeightsError, match="--allow-pickle"):
        ImageVAE.from_pretrained(tmp_path / "bin")
    with pytest.raises(WeightsError, match="--allow-pickle"):
        convert(tmp_path / "bin", tmp_path / "out")
    convert(tmp_path / "bin", tmp_path / "out", allow_pickle=True)
    x = _images(1)
    with torch.no_grad():
        expected = theirs.encode(x * 2 - 1).latent_dist.mean * theirs.config.scaling_factor
    torch.testing.assert_close(ImageVAE.from_pretrained(tmp_path / "out").encode(x), expected, atol=ATOL, rtol=0)


def test_unsupported_config_names_the_field(kl_folder, tmp_path):
    folder, theirs = kl_folder
    bad = tmp_path / "spatial"
    theirs.save_pretrained(bad)
    data = json.loads((bad / "config.json").read_text())
    data["down_block_types"] = ["CrossAttnDownBlock2D"] + data["down_block_types"][1:]
    (bad / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="down_block_types.*CrossAttnDownBlock2D"):
        ImageVAE.from_pretrained(bad)


def test_foreign_key_is_named(kl_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, theirs = kl_folder
    bad = tmp_path / "extra-key"
    theirs.save_pretrained(bad)
    path = bad / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    state["encoder.down_blocks.0.resnets.0.time_emb_proj.weight"] = torch.zeros(8, 4)
    save_file(state, str(path))
    with pytest.raises(WeightsError, match="encoder.down_blocks.0.resnets.0.time_emb_proj.weight"):
        ImageVAE.from_pretrained(bad)
    # A shape that does not fit the config is named with both shapes.
    state.pop("encoder.down_blocks.0.resnets.0.time_emb_proj.weight")
    state["encoder.conv_in.weight"] = state["encoder.conv_in.weight"][:, :2].contiguous()
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"encoder.conv_in.weight: file \(\d+, 2, 3, 3\)"):
        ImageVAE.from_pretrained(bad)


@pytest.mark.skipif(hub is None, reason="the loopback Hub fixture (tests/test_hub.py) is not available")
def test_hub_repos_of_diffusers_models_and_pipelines(hub, tmp_path):
    """The Hub path: a diffusers AutoencoderKL repo and a pipeline repo (its vae/) by repo id, through the
    real huggingface_hub client against the project's loopback Hub."""
    from huggingface_hub import HfApi

    theirs = diffusers.AutoencoderKL(**KL_CASES["c4"]).eval()
    folder = tmp_path / "vae-folder"
    theirs.save_pretrained(folder)
    api = HfApi()
    api.create_repo("alice/tiny-vae")
    api.upload_folder(folder_path=str(folder), repo_id="alice/tiny-vae")
    pipeline = tmp_path / "pipeline"
    theirs.save_pretrained(pipeline / "vae")
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (pipeline / "unet").mkdir()
    (pipeline / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not downloaded")
    api.create_repo("alice/tiny-pipeline")
    api.upload_folder(folder_path=str(pipeline), repo_id="alice/tiny-pipeline")

    x = _images(1)
    expected = ImageVAE.from_pretrained(folder).encode(x)
    by_repo = ImageVAE.from_pretrained("alice/tiny-vae")
    torch.testing.assert_close(by_repo.encode(x), expected)
    by_pipeline = ImageVAE.from_pretrained("alice/tiny-pipeline")
    torch.testing.assert_close(by_pipeline.encode(x), expected)
    assert by_pipeline.folder.name == "vae"
    assert not (by_pipeline.folder.parent / "unet").exists()  # only the autoencoder's files were fetched
    with pytest.raises(ConfigError, match="expected 'vq'"):
        ImageTokenizer.from_pretrained("alice/tiny-pipeline")
