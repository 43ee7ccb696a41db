"""The README is a contract: every shell command and code block in it runs as written, or at least parses.

The test reads whatever README.md holds (new sections included) and treats each command by its program:

* Shell commands: every ```bash block, and inline `...` spans that start with a program below. Line
  continuations are joined, ``&&`` chains split, comments dropped and leading ``VAR=value`` assignments set
  aside (shlex, as a shell would). ``.venv/bin/`` prefixes are dropped.
  - ``imgtok ...``, ``python -m train ...``, ``python scripts/X.py ...`` and ``torchrun [opts] (-m train |
    scripts/X.py) ...`` are parsed by the program's own argument parser (torchrun's by
    ``torch.distributed.run``'s): an unknown flag, a missing value or a wrong type fails the test.
  - ``pip install -e ".[a,b]"``: every extra named exists in pyproject.toml; ``python -m pytest``, ``bash
    FILE`` and ``python -m venv``: the test folder, the file, nothing.
  Any other program fails the test: add a rule to PROGRAMS below rather than leave a command unchecked.
* Python blocks are compiled; those that need no network or absent files run (see ``runs_here``).

Which commands also *run* (in README order, in one sandbox working directory): ``imgtok`` commands other
than ``convert`` (foreign checkpoints), and ``python -m train ... --smoke``. The sandbox holds small stand-ins
for the README's example files (``photo.jpg``, ``photos/`` with ``cats/001.jpg``, ``tokenizer/assets/example.png``)
and the placeholders in PLACEHOLDERS (``MODEL`` -> ``bundled``) are the only text replaced. Long runs
(training without ``--smoke``, multi-process ``torchrun``, installs, the Hub) are parsed only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import re
import shlex
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# The only text substitutions: upper-case placeholders the README uses for "your own" values.
PLACEHOLDERS = {"MODEL": "bundled", "TOKENS": "tokens/", "RUN_DIR": "runs/vq-f8", "RUN_OR_MODEL_DIR": "runs/vq-f8"}
# A Python block that mentions any of these needs the network, a trained run or someone else's files.
NOT_HERE = ("push_to_hub", "you/", "path/to/", "runs/vq/export", "eval/metrics.json")


# --- reading the README ---------------------------------------------------------------------------
@dataclass
class Command:
    argv: list[str]
    text: str  # as written (continuations joined)
    line: int  # where it starts in README.md
    env: dict[str, str] = field(default_factory=dict)
    inline: bool = False

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def _blocks(text: str, language: str) -> list[tuple[int, str]]:
    """(first line number, body) of every fenced block of ``language``."""
    out = []
    for match in re.finditer(rf"^```{language}[ \t]*\n(.*?)^```", text, flags=re.M | re.S):
        out.append((text.count("\n", 0, match.start()) + 2, match.group(1)))
    return out


def _split(text: str, line: int, inline: bool = False) -> list[Command]:
    commands = []
    for part in re.split(r"\s&&\s", text):
        argv = shlex.split(part, comments=True)
        env = {}
        while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", argv[0]):
            key, value = argv.pop(0).split("=", 1)
            env[key] = value
        if argv:
            argv[0] = argv[0].removeprefix(".venv/bin/")
            commands.append(Command(argv, part.strip(), line, env, inline))
    return commands


def shell_commands(text: str | None = None) -> list[Command]:
    text = README.read_text() if text is None else text
    commands = []
    for start, body in _blocks(text, "(?:bash|sh|shell|console)"):
        pending, first = "", start
        for number, raw in enumerate(body.split("\n"), start):
            if not pending:
                first = number
            if raw.rstrip().endswith("\\"):  # a continued line
                pending += raw.rstrip()[:-1] + " "
                continue
            logical, pending = pending + raw, ""
            if logical.strip() and not logical.strip().startswith("#"):
                commands += _split(logical, first)
    programs = "|".join(re.escape(p) for p in INLINE_PROGRAMS)
    for match in re.finditer(rf"`((?:{programs})[^`\n]+)`", text):
        span = match.group(1)
        if "…" in span or "..." in span or (" --" not in span and not span.startswith("pip ")):  # elided ("imgtok convert … --allow-pickle") or
            continue  # a program named in prose ("`python -m train` trains ..."): not a command
        commands += _split(span, text.count("\n", 0, match.start()) + 1, inline=True)
    return commands


def python_blocks(text: str | None = None) -> list[tuple[int, str]]:
    return _blocks(README.read_text() if text is None else text, "python")


def runs_here(code: str) -> bool:
    return not any(marker in code for marker in NOT_HERE)


# --- the programs' own parsers --------------------------------------------------------------------
class _Parsed(Exception):
    def __init__(self, namespace):
        self.namespace = namespace


@contextlib.contextmanager
def _stop_after_parsing():
    """Make ArgumentParser.parse_args raise with its result: a script's main() is parsed, not run."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    argparse.ArgumentParser.parse_args = parse_and_stop
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def _parse_script(path: Path, args: list[str]) -> argparse.Namespace:
    import sys

    name = f"readme_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    with _stop_after_parsing():
        try:
            try:
                module.main(args)
            except TypeError:  # a main() without argv reads sys.argv
                from unittest import mock

                with mock.patch.object(sys, "argv", [str(path), *args]):
                    module.main()
        except _Parsed as parsed:
            return parsed.namespace
    raise AssertionError(f"{path}: main() never parsed its arguments")


def _parse_python(cmd: Command, args: list[str]) -> argparse.Namespace | None:
    if args[:2] == ["-m", "train"]:
        from train.__main__ import parse_args
        from train.config import TrainConfig

        ns = parse_args(args[2:])
        TrainConfig().apply_overrides(ns.set)  # every --set names a real field with a value of its type
        return ns
    if args[:2] == ["-m", "pytest"]:
        for arg in args[2:]:
            if not arg.startswith("-"):
                assert (ROOT / arg).exists(), f"{cmd}: no {arg} in the repository"
        return None
    if args[:2] == ["-m", "venv"]:
        return None
    if args[:2] == ["-m", "pip"]:
        return _check_pip(cmd, args[2:])
    if args and args[0].endswith(".py"):
        script = ROOT / args[0]
        assert script.is_file(), f"{cmd}: no {args[0]} in the repository"
        return _parse_script(script, args[1:])
    raise AssertionError(f"{cmd}: no rule for `python {' '.join(args[:2])}` in tests/test_readme.py")


def _check_pip(cmd: Command, args: list[str]) -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert args and args[0] == "install", f"{cmd}: expected pip install"
    for arg in args[1:]:
        match = re.fullmatch(r"(?:\.|imgtok)\[([^\]]+)\]", arg)
        if match:
            for extra in match.group(1).split(","):
                assert extra.strip() in extras, f"{cmd}: pyproject.toml has no extra {extra!r}"


def _parse_torchrun(cmd: Command, args: list[str]) -> argparse.Namespace:
    from torch.distributed.run import get_args_parser

    ns = get_args_parser().parse_args(args)
    inner = (["-m"] if ns.module else []) + [ns.training_script, *ns.training_script_args]
    return _parse_python(cmd, inner)


def _parse_imgtok(cmd: Command, args: list[str]) -> argparse.Namespace:
    from tokenizer.cli import build_parser

    return build_parser().parse_args(args)


PROGRAMS = {
    "imgtok": _parse_imgtok,
    "python": _parse_python, "python3": _parse_python, "python3.11": _parse_python,
    "torchrun": _parse_torchrun,
    "pip": lambda cmd, args: _check_pip(cmd, args),
    "bash": lambda cmd, args: None if (ROOT / args[0]).is_file() else pytest.fail(f"{cmd}: no {args[0]}"),
}
INLINE_PROGRAMS = ("python -m ", "python scripts/", "imgtok ", "pip install ", "torchrun ", "bash ")


def parse(cmd: Command):
    program = cmd.argv[0]
    assert program in PROGRAMS, f"{cmd}: no rule for the program {program!r}: add one to PROGRAMS in tests/test_readme.py"
    argv = [PLACEHOLDERS.get(a, a) for a in cmd.argv[1:]]
    try:
        return PROGRAMS[program](cmd, argv)
    except SystemExit as err:  # argparse's error exit: the README's flags do not fit the parser
        raise AssertionError(f"{cmd}: rejected by the program's argument parser (exit {err.code})") from None


# --- the tests ------------------------------------------------------------------------------------
def test_every_shell_command_parses_against_the_real_parsers(capsys):
    commands = shell_commands()
    assert len(commands) >= 10, "the README lost its commands?"
    for cmd in commands:
        parse(cmd)
    assert any(c.argv[:3] == ["python", "-m", "train"] for c in commands)


def test_every_python_block_compiles():
    blocks = python_blocks()
    assert blocks
    for line, code in blocks:
        compile(code, f"README.md:{line}", "exec")


def test_parser_of_this_test_sees_what_a_shell_sees():
    text = ('```bash\nCUDA_VISIBLE_DEVICES=0 imgtok encode a.png -o "my ids.npz"   # comment\n'
            'python -m train --preset vq-f8 \\\n    --data photos/ && imgtok info\n```\n'
            'Run `python -m train --smoke` or `imgtok convert … --allow-pickle`.\n')
    commands = shell_commands(text)
    assert [c.argv for c in commands] == [
        ["imgtok", "encode", "a.png", "-o", "my ids.npz"], ["python", "-m", "train", "--preset", "vq-f8", "--data",
                                                             "photos/"],
        ["imgtok", "info"], ["python", "-m", "train", "--smoke"]]
    assert commands[0].env == {"CUDA_VISIBLE_DEVICES": "0"}
    with pytest.raises(AssertionError, match="rejected by the program's argument parser"):
        parse(shell_commands("```bash\nimgtok encode a.png --no-such-flag\n```\n")[0])
    with pytest.raises(AssertionError, match="no rule for the program"):
        parse(shell_commands("```bash\nmake all\n```\n")[0])


def test_no_paths_outside_the_repository_and_local_links_exist():
    text = README.read_text()
    assert "../shared" not in text and "/work/" not in text  # a clone has neither
    for target in re.findall(r"\]\(([^)#\s]+)\)", text):
        if not re.match(r"[a-z]+://", target):
            assert (ROOT / target).exists(), f"README links to {target}, which the repository does not have"


def test_commands_that_need_an_extra_say_so_beside_them():
    """A command whose settings need an optional extra names it in its block (or the lines just before)."""
    text = README.read_text()
    for start, body in _blocks(text, "(?:bash|sh|shell|console)"):
        before = "\n".join(text.splitlines()[max(0, start - 4) : start - 1])
        for cmd in shell_commands(f"```bash\n{body}```\n"):
            sets = " ".join(cmd.argv)
            if re.search(r"perceptual_weight=(?!0\b)", sets):
                assert "[perceptual]" in body or "[perceptual]" in before or ",perceptual]" in body + before, (
                    f"{cmd}: needs the perceptual extra (pip install -e \".[perceptual]\"); say so beside it")


def _sandbox(root: Path) -> None:
    rng = np.random.default_rng(0)

    def photo(path: Path, h: int, w: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        low = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        Image.fromarray(np.kron(low, np.ones((8, 8, 1), np.uint8))[:h, :w]).save(path)

    photo(root / "photo.jpg", 45, 61)
    for name in ("cats/001.jpg", "a.png", "b.png"):
        photo(root / "photos" / name, 64, 72)
    (root / "tokenizer" / "assets").mkdir(parents=True)
    shutil.copy(ROOT / "tokenizer" / "assets" / "example.png", root / "tokenizer" / "assets" / "example.png")


def _runnable(cmd: Command) -> bool:
    if cmd.inline or cmd.env:
        return False
    if cmd.argv[0] == "imgtok":
        return len(cmd.argv) > 1 and cmd.argv[1] != "convert"
    return cmd.argv[:3] == ["python", "-m", "train"] and "--smoke" in cmd.argv


def test_the_readme_runs_as_written(tmp_path, monkeypatch, capsys):
    """The commands and Python blocks that can run here, in README order, in one sandbox folder."""
    from tokenizer.cli import main as imgtok_main
    from train.__main__ import main as train_main

    _sandbox(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here may need the network
    text = README.read_text()
    steps = [(c.line, "shell", c) for c in shell_commands(text) if _runnable(c)]
    steps += [(line, "python", code) for line, code in python_blocks(text) if runs_here(code)]
    ran = []
    for line, kind, item in sorted(steps, key=lambda s: s[0]):
        started = time.time()
        if kind == "python":
            exec(compile(item, f"README.md:{line}", "exec"), {"__name__": "readme_example"})
            ran.append(f"python block at line {line}")
            print(f"[readme] line {line}: {time.time() - started:.1f}s", file=sys.stderr)
            continue
        argv = [PLACEHOLDERS.get(a, a) for a in item.argv[1:]]
        if item.argv[0] == "imgtok":
            code = imgtok_main(argv)
        else:
            code = train_main(argv[2:] + ["--set", "steps=2"])  # --smoke's run, two steps of it
        assert code == 0, f"{item}: exit {code}\n{capsys.readouterr().err}"
        ran.append(item.text)
        print(f"[readme] line {line}: {time.time() - started:.1f}s", file=sys.stderr)
    assert any("imgtok reconstruct" in r for r in ran) and any("python block" in r for r in ran)
    out = capsys.readouterr().out
    # What the quick start says the first command prints.
    assert re.search(r"tokenizer/assets/example.png: 288 x 384 \(H x W\), grid 36 x 48 tokens \(vocab 4096\), "
                     r"0.1875 bits per pixel, PSNR [0-9.]+ dB", out)


def test_api_example_claims(tmp_path, monkeypatch):
    """The API section's example makes the shapes its comments promise."""
    monkeypatch.chdir(tmp_path)
    match = re.search(r"^## The API\s*$(.*?)(?=^##)", README.read_text(), flags=re.M | re.S)
    assert match, "README.md has no '## The API' section"
    namespace: dict = {"__name__": "readme_example"}
    for _, block in _blocks(match.group(1), "python")[:1]:
        exec(compile(block, str(README), "exec"), namespace)
    assert tuple(namespace["ids"].shape) == (35, 50)  # f = 2 for vq-tiny
    assert tuple(namespace["img"].shape) == (3, 70, 100)
    assert tuple(namespace["rec"].shape) == (3, 70, 100)
    assert tuple(namespace["x"].shape) == (3, 70, 100)
    assert (tmp_path / "my-tokenizer" / "config.json").is_file()


def test_train_prior_smoke_writes_only_inside_its_out(tmp_path, monkeypatch):
    """The README's ``train_prior.py --smoke --out DIR``: nothing lands outside DIR (before: a temporary folder)."""
    import tempfile

    work, scratch = tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir(), scratch.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    spec = importlib.util.spec_from_file_location("readme_train_prior", ROOT / "scripts" / "train_prior.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--smoke", "--out", "runs/prior-smoke", "--steps", "2", "--eval-every", "2",
                        "--checkpoint-every", "2", "--num-samples", "1"]) == 0
    assert [p.name for p in work.iterdir()] == ["runs"] and [p.name for p in (work / "runs").iterdir()] == ["prior-smoke"]
    assert not [p for p in scratch.iterdir() if not p.name.startswith("torchinductor")]  # torch's own cache only
    with pytest.raises(SystemExit):  # no --out: refused, instead of a folder somewhere in /tmp
        module.parse_args(["--smoke"])
