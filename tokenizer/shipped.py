"""The models that ship inside the package, and the one way every part of imgtok names a model's weights.

The shipped models go by their folder names under ``tokenizer/weights/`` (``imgtok-vq-f8``, ``imgtok-kl-f8``),
with ``bundled`` and ``bundled-kl`` as aliases, in the API (``from_pretrained("imgtok-vq-f8")``), the CLI
(``--model bundled``), the scripts and the metadata of everything written with a model (token shards,
``imgtok encode`` files, ``scripts/evaluate.py`` metrics). Each has a version that changes whenever new weights
ship: each folder's ``versions.json`` keeps every shipped version's weights sha256 (a test checks that the weights
in the package are the last one; ``scripts/ship_model.py`` appends), so ids made with older weights are named
(``imgtok-vq-f8 v1``) when decoded with newer ones.

Any other model is named by the path or Hub repo id it was loaded from, with the sha256 of its weights.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoints import ids_sha256, sha256_of

WEIGHTS_DIR = Path(__file__).parent / "weights"


VERSIONS_NAME = "versions.json"  # beside config.json: every version shipped, oldest first


@dataclass(frozen=True)
class ShippedModel:
    """A model folder under ``tokenizer/weights/``.

    Args:
        name: its folder name, the name it goes by everywhere.
        model_type: "vq" or "kl".
        aliases: other names accepted for it (never written into metadata).
    The version history lives in the folder's ``versions.json`` (version, weights sha256, note), oldest first;
    shipping new weights appends to it (``record_version``), and the last entry describes the weights in the
    package (a test checks it).
    """

    name: str
    model_type: str
    aliases: tuple[str, ...]

    @property
    def folder(self) -> Path:
        return WEIGHTS_DIR / self.name

    @property
    def entries(self) -> list[dict[str, Any]]:
        """The ``versions.json`` entries (version, sha256, note, optional sha256_fp32), oldest first."""
        path = self.folder / VERSIONS_NAME
        return json.loads(path.read_text())["versions"] if path.is_file() else []

    @property
    def history(self) -> tuple[tuple[str, str], ...]:
        """(version, sha256) of every shipped version, oldest first."""
        return tuple((str(v["version"]), str(v["sha256"])) for v in self.entries)

    @property
    def version(self) -> str | None:
        return self.history[-1][0] if self.history else None

    @property
    def sha256(self) -> str | None:
        return self.history[-1][1] if self.history else None


SHIPPED: tuple[ShippedModel, ...] = (
    ShippedModel("imgtok-vq-f8", "vq", ("bundled",)),
    ShippedModel("imgtok-kl-f8", "kl", ("bundled-kl",)),
)
DEFAULT_NAMES = {"vq": "imgtok-vq-f8", "kl": "imgtok-kl-f8"}  # what from_pretrained() loads with no name


def shipped_model(name: str | Path | None) -> ShippedModel | None:
    """The shipped model a name or alias means (``"bundled"``, ``"imgtok-kl-f8"``, ...), else None."""
    if name is None:
        return None
    for model in SHIPPED:
        if str(name) == model.name or str(name) in model.aliases:
            return model
    return None


def default_model(model_type: str) -> ShippedModel | None:
    """The shipped default for a model family (None for families without one)."""
    return shipped_model(DEFAULT_NAMES.get(model_type))


def resolve_shipped(name_or_path: str | Path | None, model_type: str = "vq") -> ShippedModel | None:
    """The shipped model ``name_or_path`` loads, if any: None means the family's default; an existing local
    path of the same spelling wins over a name (a folder someone saved as ``imgtok-vq-f8`` is theirs)."""
    if name_or_path is None:
        return default_model(model_type)
    if Path(name_or_path).exists():
        return None
    return shipped_model(name_or_path)


def record_version(folder: str | Path, note: str = "", sha256_fp32: str | None = None) -> str | None:
    """After new weights were written into a shipped model's ``folder``: append a version (the previous
    number + 1) with their sha256 to its ``versions.json``. Returns the new version (None: weights unchanged).
    ``sha256_fp32``: for weights stored in a narrower dtype, the digest of the same weights saved in fp32.
    Each entry also keeps ``ids_sha256`` (``checkpoints.ids_sha256``): versions that share it give the same
    ids, so ids made with one decode with the other without a warning."""
    folder = Path(folder)
    path = folder / VERSIONS_NAME
    data = json.loads(path.read_text()) if path.is_file() else {"name": folder.name, "versions": []}
    sha = sha256_of(folder / "model.safetensors")
    if data["versions"] and data["versions"][-1]["sha256"] == sha:
        return None
    version = str(int(data["versions"][-1]["version"]) + 1) if data["versions"] else "1"
    entry = {"version": version, "sha256": sha, "note": note, "ids_sha256": ids_sha256(folder / "model.safetensors")}
    if sha256_fp32 and sha256_fp32 != sha:
        entry["sha256_fp32"] = sha256_fp32
    data["versions"].append(entry)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return version


def shipped_names() -> list[str]:
    """Every name and alias, e.g. for a help text."""
    return [n for model in SHIPPED for n in (model.name, *model.aliases)]


def find_by_sha256(sha256: str) -> tuple[ShippedModel, str] | None:
    """(shipped model, version) whose weights have this sha256, if any version of any shipped model does.

    A version stored in fp16 also records ``sha256_fp32``, the digest of the same weights saved in fp32 (what
    ``save_pretrained`` writes after loading them as fp32), so that a copy a user saves is still named.
    """
    found = _shipped_entry(sha256)
    return (found[0], str(found[1]["version"])) if found is not None else None


def _shipped_entry(sha256: str) -> tuple[ShippedModel, dict[str, Any]] | None:
    for model in SHIPPED:
        for entry in model.entries:
            if sha256 in (entry["sha256"], entry.get("sha256_fp32")):
                return model, entry
    return None


def same_ids(sha256_a: str, sha256_b: str) -> bool:
    """Whether two shipped versions (named by their weights' sha256) give the same ids: a version shipped from
    a decoder-only fine-tune keeps the ids of the one it came from (``ids_sha256`` in ``versions.json``)."""
    a, b = _shipped_entry(sha256_a), _shipped_entry(sha256_b)
    if a is None or b is None or a[0] is not b[0]:
        return False
    return a[1].get("ids_sha256") is not None and a[1].get("ids_sha256") == b[1].get("ids_sha256")


@dataclass(frozen=True)
class ModelIdentity:
    """Which weights a model has: what metadata records and what a mismatch warning names.

    Args:
        name: the shipped model's name, else the path or Hub repo id as given ("in-memory" for none).
        version: the shipped version, or the Hub revision asked for (None for a local folder).
        sha256: sha256 of the weights file (None when unknown).
    """

    name: str
    version: str | None = None
    sha256: str | None = None

    @property
    def label(self) -> str:
        """``imgtok-vq-f8 v2``, or ``runs/x/export (weights sha256 0123abcd…)``."""
        if shipped_model(self.name) is not None and self.version:
            return f"{self.name} v{self.version}"
        text = self.name + (f"@{self.version}" if self.version else "")
        return text + (f" (weights sha256 {self.sha256[:12]}…)" if self.sha256 else "")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelIdentity":
        """From metadata; older metadata named the model ``name_or_path`` ("bundled" for the default)."""
        name = str(data.get("name") or data.get("name_or_path") or "unknown")
        sha = data.get("sha256")
        known = find_by_sha256(sha) if sha else None
        if known is not None:  # name shipped weights by their version, whatever they were called
            return cls(known[0].name, known[1], sha)
        ship = shipped_model(name)
        return cls(ship.name if ship else name, data.get("version") or data.get("revision"), sha)


def identify(name_or_path: str | Path | None, weights_file: str | Path | None, model_type: str = "vq",
             revision: str | None = None) -> ModelIdentity:
    """The identity of weights loaded as ``name_or_path`` (None: the shipped default) from ``weights_file``.

    Weights equal to a shipped version are named as that version, whatever path they were read from.
    """
    sha = sha256_of(weights_file) if weights_file is not None and Path(weights_file).is_file() else None
    known = find_by_sha256(sha) if sha else None
    if known is not None:
        return ModelIdentity(known[0].name, known[1], sha)
    ship = shipped_model(name_or_path) if name_or_path is not None else default_model(model_type)
    if ship is not None:  # shipped weights that are not in the history: a test keeps this from happening
        return ModelIdentity(ship.name, None, sha)
    return ModelIdentity(str(name_or_path) if name_or_path is not None else "in-memory", revision, sha)


def mismatch(recorded: ModelIdentity, current: ModelIdentity) -> str | None:
    """A sentence naming both when ``current`` weights differ from the ``recorded`` ones, else None. Shipped
    versions that differ only after the ids (a new decoder for the same ids) decode each other's ids as meant."""
    if recorded.sha256 and current.sha256:
        if recorded.sha256 == current.sha256 or same_ids(recorded.sha256, current.sha256):
            return None
    elif (recorded.name, recorded.version) == (current.name, current.version):
        return None
    return f"made with {recorded.label}, decoded with {current.label}: other weights, the images will not match"


def warn_if_other_weights(recorded: dict[str, Any] | ModelIdentity | None, current: ModelIdentity,
                          what: str) -> str | None:
    """Warn (``UserWarning``, message returned) when ``what`` (a file or folder of ids) was made with other weights."""
    if recorded is None:
        return None
    if isinstance(recorded, dict):
        recorded = ModelIdentity.from_dict(recorded)
    text = mismatch(recorded, current)
    if text is not None:
        text = f"{what}: {text}"
        warnings.warn(text, stacklevel=2)
    return text


__all__ = ["ShippedModel", "SHIPPED", "ModelIdentity", "shipped_model", "default_model", "resolve_shipped", "shipped_names",
           "find_by_sha256", "same_ids", "record_version", "identify", "mismatch", "warn_if_other_weights", "sha256_of"]
