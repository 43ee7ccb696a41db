"""Pickled checkpoints under ``imgtok convert --allow-pickle``: tensors rebuilt, every other object an inert
placeholder, no code from the file run. The checkpoints are synthetic Lightning-style files the tests build:
callbacks and hyper-parameters from modules that do not exist at load time, numpy scalars, malicious objects."""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch
from test_interop_taming_llamagen import TAMING, _assert_same, _random, their_state

from tokenizer.cli import main as cli_main
from tokenizer.convert import convert
from tokenizer.interop.safe_unpickle import Placeholder, load_pickle, placeholders_in
from tokenizer.pretrained import WeightsError


class _RunsOnLoad:
    """Unpickling this with a normal unpickler calls os.system (via __reduce__)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ExecOnLoad:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


_ADDED: set[str] = set()


def _fake_module(name: str, **classes):
    """Register a module (e.g. pytorch_lightning's) so torch.save can pickle its classes by name."""
    parts = name.split(".")
    for i in range(1, len(parts)):  # pickle imports the parents first
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            sys.modules[parent] = types.ModuleType(parent)
            _ADDED.add(parent)
    _ADDED.add(name)
    module = types.ModuleType(name)
    for cls_name, body in classes.items():
        cls = type(cls_name, (), dict(body))
        cls.__module__ = name
        setattr(module, cls_name, cls)
    sys.modules[name] = module
    return module


def _forget(name: str) -> None:
    """Remove a fake module and its parents, so loading cannot import them."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in _ADDED:
            sys.modules.pop(".".join(parts[:i]), None)
            _ADDED.discard(".".join(parts[:i]))


@pytest.fixture
def lightning_checkpoint(tmp_path):
    """A taming VQGAN Lightning checkpoint with the bookkeeping real ones carry, plus three payloads."""
    model = _random(TAMING)
    state = their_state(model, "taming")
    state["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)
    marker = tmp_path / "PWNED"
    cb = _fake_module("pytorch_lightning.callbacks.model_checkpoint", ModelCheckpoint={})
    oc = _fake_module("omegaconf.dictconfig", DictConfig={
        # A __setstate__ a normal unpickler would call: it must not run.
        "__setstate__": lambda self, s: open(marker, "w").write("setstate ran"),
        "__getstate__": lambda self: {"content": {"embed_dim": 12}},
    })
    checkpoint = cb.ModelCheckpoint()
    checkpoint.best_model_score = torch.tensor(0.25)
    checkpoint.monitor = "val/rec_loss"
    ckpt = {
        "epoch": 3, "global_step": np.int64(1200), "pytorch-lightning_version": "1.0.8",
        "state_dict": state,
        "callbacks": {type(checkpoint): {"best_model_score": np.float64(0.125), "dirpath": "logs/"}},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": np.float32(4.5e-6)}]}],
        "hyper_parameters": oc.DictConfig(),
        "hparams_ns": argparse.Namespace(n_embed=48),
        "loops": {"payload": _RunsOnLoad(marker), "other": [_ExecOnLoad(marker)]},
        "callback_object": checkpoint,
    }
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    _forget("pytorch_lightning.callbacks.model_checkpoint")
    _forget("omegaconf.dictconfig")
    return path, model, marker


def test_lightning_checkpoint_loads_without_running_anything(lightning_checkpoint):
    path, _, marker = lightning_checkpoint
    obj = load_pickle(path)
    assert not marker.exists()
    assert obj["state_dict"]["encoder.conv_in.weight"].shape == (32, 3, 3, 3)
    assert obj["global_step"] == 1200 and isinstance(obj["global_step"], int)  # numpy scalar -> int
    assert obj["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(4.5e-6)
    (cb_class, cb_state), = obj["callbacks"].items()
    assert issubclass(cb_class, Placeholder) and cb_class.name == "ModelCheckpoint"
    assert cb_state["best_model_score"] == 0.125
    assert isinstance(obj["loops"]["payload"], Placeholder)
    assert (obj["loops"]["payload"].module, obj["loops"]["payload"].name) in {("posix", "system"), ("os", "system")}
    assert obj["hyper_parameters"].state == {"content": {"embed_dim": 12}}  # recorded, not applied
    assert placeholders_in(obj) == sorted([
        "argparse.Namespace", "builtins.exec", f"{os.system.__module__}.system",
        "omegaconf.dictconfig.DictConfig", "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    ])


def test_even_with_the_module_importable_its_setstate_does_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    mod = _fake_module("evil_setstate_mod", Thing={
        "__getstate__": lambda self: {"x": 1},
        "__setstate__": lambda self, s: open(marker, "w").write("ran"),
    })
    try:
        torch.save({"w": torch.ones(2), "thing": mod.Thing()}, tmp_path / "a.pt")
        obj = load_pickle(tmp_path / "a.pt")  # the module is still in sys.modules here
    finally:
        _forget("evil_setstate_mod")
    assert not marker.exists() and isinstance(obj["thing"], Placeholder)


def test_convert_cli_with_allow_pickle_converts_and_lists_what_it_left(lightning_checkpoint, tmp_path, capsys):
    path, model, marker = lightning_checkpoint
    assert cli_main(["convert", str(path), str(tmp_path / "out"), "--allow-pickle"]) == 0
    out = capsys.readouterr().out
    assert not marker.exists()
    assert "warning:" in out and "no code from the file ran" in out and "omegaconf.dictconfig.DictConfig" in out
    assert "taming" in out
    _assert_same(model, tmp_path / "out")


def test_convert_without_flag_refuses_before_reading(lightning_checkpoint, tmp_path, capsys):
    path, _, marker = lightning_checkpoint
    assert cli_main(["convert", str(path), str(tmp_path / "out")]) == 1
    assert "--allow-pickle" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_warning_printed_even_when_conversion_then_fails(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    torch.save({"state_dict": {"foo.weight": torch.ones(2)}, "x": _RunsOnLoad(marker)}, tmp_path / "bad.ckpt")
    assert cli_main(["convert", str(tmp_path / "bad.ckpt"), str(tmp_path / "out"), "--allow-pickle"]) == 1
    captured = capsys.readouterr()
    assert "not rebuilt" in captured.out and "unrecognised layout" in captured.err and not marker.exists()


def test_legacy_torch_format_goes_through_the_same_unpickler(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"w": torch.arange(6.0).reshape(2, 3), "evil": _RunsOnLoad(marker)}, tmp_path / "old.pt",
               _use_new_zipfile_serialization=False)
    obj = load_pickle(tmp_path / "old.pt")
    assert torch.equal(obj["w"], torch.arange(6.0).reshape(2, 3)) and not marker.exists()


def test_parameters_and_views_are_rebuilt(tmp_path):
    base = torch.arange(12.0)
    torch.save({"p": torch.nn.Parameter(torch.ones(2, 2)), "view": base[2:8].reshape(2, 3), "base": base,
                "half": torch.ones(3, dtype=torch.float16), "ids": torch.arange(4)}, tmp_path / "t.pt")
    obj = load_pickle(tmp_path / "t.pt")
    assert type(obj["p"]) is torch.Tensor and obj["p"].sum() == 4
    assert torch.equal(obj["view"], base[2:8].reshape(2, 3))
    assert obj["half"].dtype == torch.float16 and obj["ids"].dtype == torch.int64


def test_plain_pickle_protocols(tmp_path):
    import io
    import zipfile

    # A file that is a raw pickle (not torch.save's zip): torch reads it as the legacy format and fails
    # cleanly; convert names the file.
    marker = tmp_path / "PWNED"
    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"x": _RunsOnLoad(marker)}, protocol=2))
    with pytest.raises(WeightsError, match=r"raw\.pt: not a readable torch checkpoint"):
        convert(tmp_path / "raw.pt", tmp_path / "o", allow_pickle=True)
    assert not marker.exists()
    # A zip whose data.pkl is hand-written to call os.system directly (no class of ours involved).
    torch.save({"w": torch.ones(1)}, tmp_path / "z.pt")
    with zipfile.ZipFile(tmp_path / "z.pt") as zin:
        names = zin.namelist()
        files = {n: zin.read(n) for n in names}
    pkl = next(n for n in names if n.endswith("data.pkl"))
    files[pkl] = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zout:
        for n in names:
            zout.writestr(n, files[n])
    (tmp_path / "z.pt").write_bytes(buf.getvalue())
    obj = load_pickle(tmp_path / "z.pt")
    assert isinstance(obj, Placeholder) and obj.name == "system" and not marker.exists()
    with pytest.raises(WeightsError, match=r"z\.pt: expected a dict of tensors"):
        convert(tmp_path / "z.pt", tmp_path / "o2", allow_pickle=True)


@pytest.mark.parametrize("cut", [0, 10, 200])
def test_truncated_checkpoint_is_a_clear_error(tmp_path, cut):
    torch.save({"state_dict": {"a": torch.ones(100)}}, tmp_path / "t.ckpt")
    data = (tmp_path / "t.ckpt").read_bytes()
    (tmp_path / "t.ckpt").write_bytes(data[:cut])
    with pytest.raises(WeightsError, match=r"t\.ckpt: not a readable torch checkpoint .*corrupt or truncated"):
        convert(tmp_path / "t.ckpt", tmp_path / "o", allow_pickle=True)


def test_tensor_pointing_past_its_storage_is_refused(tmp_path):
    import io
    import zipfile

    torch.save({"w": torch.ones(4)}, tmp_path / "s.pt")
    with zipfile.ZipFile(tmp_path / "s.pt") as zin:
        files = {n: zin.read(n) for n in zin.namelist()}
    pkl = next(n for n in files if n.endswith("data.pkl"))
    # Tamper with the size tuple: (4,) -> (4000,) reads 16 KB from a 16-byte storage.
    data = files[pkl]
    assert b"K\x04\x85" in data
    files[pkl] = data.replace(b"K\x04\x85", b"M\xa0\x0f\x85", 1)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zout:
        for n, v in files.items():
            zout.writestr(n, v)
    (tmp_path / "s.pt").write_bytes(buf.getvalue())
    with pytest.raises(WeightsError, match=r"s\.pt: not a readable torch checkpoint"):
        convert(tmp_path / "s.pt", tmp_path / "o", allow_pickle=True)
