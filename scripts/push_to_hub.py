"""Push a trained model to the Hugging Face Hub with its measured metrics in the model card.

    python scripts/push_to_hub.py RUN_OR_MODEL_DIR REPO_ID [--metrics metrics.json] [--private]
        [--revision BRANCH] [--commit-message MSG] [--dataset ID ...] [--eval-dataset NAME]
        [--notes NOTES.md ...] [--card-only CARD.md]

``--card-only`` renders the same card to a file and uploads nothing (how model_cards/ is made).

RUN_OR_MODEL_DIR is a model folder (config.json + model.safetensors) or a training run folder, whose
``export/`` is pushed. The weights are uploaded as they are; README.md is rendered from the config, the
metrics (``scripts/evaluate.py``'s metrics.json; the run's own metrics.json is used if present) and
the run's ``train_config.json``. Authentication as in huggingface_hub: ``hf auth login`` or ``HF_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokenizer.api import load_any
from tokenizer.checkpoints import CONFIG_NAME, WEIGHTS_NAME, sha256_of
from tokenizer.hub import HubError
from tokenizer.model_card import Evaluation, ModelCardError, ModelCardInfo, load_metrics
from tokenizer.pretrained import push_model_folder


def find_model_folder(path: Path) -> tuple[Path, Path | None]:
    """(model folder, run folder or None) for a model folder or a run folder holding ``export/``."""
    if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
        run = path.parent if path.name == "export" and (path.parent / "train_config.json").is_file() else None
        return path, run
    if (path / "export" / WEIGHTS_NAME).is_file():
        return path / "export", path
    raise SystemExit(
        f"push_to_hub: {path}: neither a model folder (config.json + model.safetensors) nor a run with export/"
    )


def portable_paths(config: dict) -> dict:
    """The training config with every absolute path cut to its last two parts (``/home/me/data/photos/train``
    -> ``photos/train``): a card describes the run, not the machine it ran on."""

    def cut(value):
        if isinstance(value, str) and Path(value).is_absolute():
            return str(Path(*Path(value).parts[-2:]))
        if isinstance(value, list):
            return [cut(v) for v in value]
        return value

    return {key: cut(value) for key, value in config.items()}


def training_notes(run: Path | None, notes: Path | list[Path] | None = None) -> str | None:
    """Free-text notes (command, data, wall time; one or more files, in order), then the run's training config
    (machine paths cut)."""
    files = [notes] if isinstance(notes, Path) else list(notes or [])
    parts = [f.read_text(encoding="utf-8").strip() for f in files]
    if run is not None and (run / "train_config.json").is_file():
        config = portable_paths(json.loads((run / "train_config.json").read_text()))
        parts.append("The run's `train_config.json`:\n\n" f"```json\n{json.dumps(config, indent=2)}\n```")
    return "\n\n".join(parts) or None


def check_metrics_weights(metrics_path: Path, folder: Path) -> None:
    """Refuse metrics measured on other weights: evaluate.py records the weights' sha256 in metrics.json."""
    try:
        record = json.loads(metrics_path.read_text()).get("model", {})
    except (OSError, ValueError, AttributeError):
        return  # load_metrics reports unreadable files
    measured = record.get("sha256") if isinstance(record, dict) else None
    if not measured:
        print(f"warning: {metrics_path} records no weights sha256 (written by an older evaluate.py): "
              f"cannot check that it was measured on {folder}", file=sys.stderr)
        return
    actual = sha256_of(folder / WEIGHTS_NAME)
    if measured != actual:
        raise ModelCardError(
            f"{metrics_path} was measured on other weights ({record.get('name') or record.get('source')}, sha256 "
            f"{measured[:12]}…) than {folder / WEIGHTS_NAME} (sha256 {actual[:12]}…); run "
            f"`python scripts/evaluate.py {folder} --data ... --out ...` and pass that metrics.json"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", type=Path, help="model folder, or training run folder (its export/ is pushed)")
    p.add_argument("repo_id", help="Hub repo, namespace/name")
    p.add_argument("--metrics", type=Path, help="metrics.json from scripts/evaluate.py")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", help="branch to push to (default main)")
    p.add_argument("--commit-message", default=None)
    p.add_argument("--dataset", action="append", default=[], help="training dataset id (repeatable)")
    p.add_argument("--eval-dataset", help="name of the set the metrics were measured on (default: from metrics.json)")
    p.add_argument("--model-name", help="card title (default: the repo's name)")
    p.add_argument("--notes", type=Path, action="append", default=[],
                   help="Markdown file added to the card's Training section (repeatable: joined in order)")
    p.add_argument("--card-only", type=Path, metavar="CARD.md", help="write the card here and upload nothing")
    args = p.parse_args(argv)

    folder, run = find_model_folder(args.path)
    metrics_path = args.metrics
    if metrics_path is None:
        found = [d / "metrics.json" for d in (folder, run) if d is not None and (d / "metrics.json").is_file()]
        metrics_path = found[0] if found else None
    try:
        if metrics_path is not None:
            check_metrics_weights(metrics_path, folder)
        evaluation = load_metrics(metrics_path) if metrics_path is not None else Evaluation({})
        if metrics_path is not None:
            print(f"metrics from {metrics_path}: " + ", ".join(f"{k}={v:.4g}" for k, v in evaluation.metrics.items())
                  + (f"; baselines {', '.join(evaluation.baselines)}" if evaluation.baselines else ""))
        info = ModelCardInfo(
            repo_id=args.repo_id, model_name=args.model_name, datasets=args.dataset, metrics=evaluation.metrics,
            eval_dataset=args.eval_dataset or evaluation.dataset, baselines=evaluation.baselines,
            perceptual_metric=evaluation.perceptual_metric, training=training_notes(run, args.notes),
        )
        if args.card_only is not None:
            card = load_any(folder).model_card(info)
            args.card_only.parent.mkdir(parents=True, exist_ok=True)
            args.card_only.write_text(card, encoding="utf-8")
            print(f"wrote the model card of {folder} to {args.card_only}")
            return 0
        extra = {"metrics.json": metrics_path} if metrics_path is not None else None
        commit = push_model_folder(
            folder, args.repo_id, info, private=args.private, commit_message=args.commit_message,
            revision=args.revision, extra_files=extra,
        )
    except (HubError, ModelCardError, FileNotFoundError, ValueError) as err:
        print(f"push_to_hub: error: {err}", file=sys.stderr)
        return 1
    print(f"pushed {folder} to {args.repo_id} (commit {commit.oid}): {commit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
