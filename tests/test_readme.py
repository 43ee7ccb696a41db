"""The README's API example must run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def api_section_code() -> list[str]:
    """Python code blocks of the README's "## The API" section, up to its first sub-heading.

    Sub-sections (e.g. "### Hugging Face Hub") show calls that need a network or a trained run.
    """
    text = README.read_text()
    match = re.search(r"^## The API\s*$(.*?)(?=^##)", text, flags=re.M | re.S)
    assert match, "README.md has no '## The API' section"
    blocks = re.findall(r"^```python\n(.*?)^```", match.group(1), flags=re.M | re.S)
    assert blocks, "the API section has no ```python block"
    return blocks


def test_api_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example saves a folder in the working directory
    namespace: dict = {"__name__": "readme_example"}
    for block in api_section_code():
        exec(compile(block, str(README), "exec"), namespace)
    # The example's claims hold (it builds `ids`, `img`, `rec`, `z`, `x` from a 3 x 70 x 100 image).
    assert tuple(namespace["ids"].shape) == (35, 50)  # f = 2 for vq-tiny
    assert tuple(namespace["img"].shape) == (3, 70, 100)
    assert tuple(namespace["rec"].shape) == (3, 70, 100)
    assert tuple(namespace["x"].shape) == (3, 70, 100)
    assert (tmp_path / "my-tokenizer" / "config.json").is_file()
