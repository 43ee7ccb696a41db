"""The one load path: resolve -> read_checkpoint -> build, shared by from_pretrained, load_any and convert;
the plain AE family beside the VAE; imports that form a tree."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from tokenizer import ConfigError, ImageAE, ImageTokenizer, ImageVAE, WeightsError, load_any
from tokenizer.cli import main as cli_main
from tokenizer.convert import convert
from tokenizer.pretrained import load_checkpoint, read_checkpoint

PACKAGE = Path(__file__).resolve().parents[1] / "tokenizer"


def _images() -> torch.Tensor:
    return torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))


def test_plain_autoencoder_saves_loads_and_runs_from_the_cli(tmp_path, capsys):
    ae = ImageAE.from_preset("ae-tiny")
    z = ae.encode(_images())
    assert z.shape == (2, ae.latent_channels, 8, 12) and z.dtype == torch.float32
    assert ae.encode(_images()[0]).shape == z.shape[1:]  # one image -> (C, h, w)
    torch.testing.assert_close(ae.decode(z), ae.model.decode_latents(z).add(1).div(2).clamp(0, 1))
    assert ae.reconstruct(_images()).shape == (2, 3, 16, 24)
    folder = ae.save_pretrained(tmp_path / "ae")
    for loaded in (ImageAE.from_pretrained(folder), load_any(folder)):
        assert isinstance(loaded, ImageAE)
        assert torch.equal(loaded.encode(_images()), z)
    with pytest.raises(ConfigError, match="holds a 'ae' model, expected 'vq'"):
        ImageTokenizer.from_pretrained(folder)
    with pytest.raises(ValueError, match="C = "):
        ae.decode(torch.zeros(1, ae.latent_channels + 1, 2, 2))
    from tokenizer.image_io import save_image

    save_image(_images()[0], tmp_path / "photo.png")
    assert cli_main(["reconstruct", str(tmp_path / "photo.png"), "-o", str(tmp_path / "r.png"),
                     "--model", str(folder)]) == 0
    assert "latent" in capsys.readouterr().out
    assert cli_main(["info", str(folder)]) == 0
    assert json.loads(capsys.readouterr().out)["model_type"] == "ae"


def test_from_pretrained_and_convert_read_the_same_checkpoint(saved_tiny_tokenizer, tmp_path):
    folder, tok = saved_tiny_tokenizer
    checkpoint = load_checkpoint(folder)
    assert checkpoint.source_format == "imgtok" and not checkpoint.foreign
    assert checkpoint.state_dict.keys() == tok.model.state_dict().keys()
    result = convert(folder, tmp_path / "copy")
    assert result.source_format == "imgtok"
    assert torch.equal(ImageTokenizer.from_pretrained(tmp_path / "copy").encode(_images()), tok.encode(_images()))
    with pytest.raises(ConfigError, match="carries its own config.json"):
        convert(folder, tmp_path / "again", config="vq-tiny")


def test_a_bare_weights_file_loads_by_its_key_names(saved_tiny_tokenizer, tmp_path):
    folder, tok = saved_tiny_tokenizer
    weights = tmp_path / "bare.safetensors"
    weights.write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="imgtok key names but no config"):
        read_checkpoint(weights)
    checkpoint = read_checkpoint(weights, config=tok.config)
    assert checkpoint.source_format == "imgtok" and checkpoint.foreign  # no config.json: fresh buffers allowed


def test_pickle_names_come_from_one_table(saved_tiny_tokenizer, tmp_path):
    folder, _ = saved_tiny_tokenizer
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_bytes((folder / "config.json").read_bytes())
    (pickled / "last.ckpt").write_bytes(b"never unpickled")
    with pytest.raises(WeightsError, match=r"only pickle weights \(last\.ckpt\).*--allow-pickle"):
        ImageTokenizer.from_pretrained(pickled)


def test_a_path_that_does_not_exist_never_reaches_the_hub(tmp_path):
    for name in (str(tmp_path / "missing"), "./missing-model", "weights.safetensors"):
        with pytest.raises(FileNotFoundError, match="no such file or folder"):
            ImageVAE.from_pretrained(name)


def _imports(path: Path) -> set[str]:
    """The tokenizer modules ``path`` imports, anywhere in the file (lazy imports count too)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            found.update(n for n in [target, *names] if n.startswith("tokenizer"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tokenizer"))
    return found


def test_the_library_imports_form_a_tree():
    """No cycle among tokenizer's modules, counting lazy (function-level) imports as edges too."""
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py")}
    # A module's parent packages are imported before it by Python itself: not edges of its own.
    graph = {name: {t for t in _imports(path) if t in modules and t != name and not name.startswith(t + ".")}
             for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert "tokenizer.api" not in graph["tokenizer.pretrained"] and "tokenizer.pretrained" not in graph["tokenizer.hub"]
