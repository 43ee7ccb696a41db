"""Hugging Face Hub access through ``huggingface_hub``: download a model folder, push one.

Everything goes through the official client, so its cache layout (``HF_HOME``/``HF_HUB_CACHE``),
``HF_ENDPOINT``, ``HF_TOKEN`` and offline mode (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``: files
come from the cache, no request is made) behave as in every other Hub library. Client errors are
turned into ``HubError`` / ``WeightsError`` messages that name the repo and say what to do.
"""

from __future__ import annotations

import re
from pathlib import Path

from .pretrained import CONFIG_NAME, PICKLE_WEIGHT_NAMES, WEIGHTS_NAME, WeightsError

MODEL_CARD_NAME = "README.md"
DEFAULT_COMMIT_MESSAGE = "Upload imgtok model"
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


class HubError(OSError):
    """A repo, revision or file that cannot be fetched from (or pushed to) the Hub or its cache."""


def _where(repo_id: str, revision: str | None, subfolder: str | None) -> str:
    return f"{repo_id}" + (f"@{revision}" if revision else "") + (f"/{subfolder}" if subfolder else "")


def _offline(local_files_only: bool) -> bool:
    from huggingface_hub import constants

    return bool(local_files_only or constants.HF_HUB_OFFLINE)


def download_folder(
    repo_id: str,
    revision: str | None = None,
    subfolder: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    filenames: tuple[str, ...] = (CONFIG_NAME, WEIGHTS_NAME),
) -> Path:
    """Fetch a Hub repo's model files into the ``huggingface_hub`` cache and return their local folder.

    Args:
        repo_id: "namespace/name" on the Hub (``HF_ENDPOINT``).
        revision: a branch, tag or commit sha (default "main"); a sha pins exact files.
        subfolder: a folder inside the repo holding the model files.
        cache_dir: instead of ``HF_HUB_CACHE`` (``$HF_HOME/hub``).
        token: as in ``huggingface_hub`` (None: the saved login or ``HF_TOKEN``; False: none).
        local_files_only: use the cache only, like ``HF_HUB_OFFLINE=1``.
        filenames: the files to fetch; the first is the config, the second the weights.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = _where(repo_id, revision, subfolder)
    paths: list[Path] = []
    pinned = revision
    for index, filename in enumerate(filenames):
        try:
            paths.append(Path(hf_hub_download(
                repo_id=repo_id, filename=filename, revision=pinned, subfolder=subfolder, cache_dir=cache_dir,
                token=token, local_files_only=local_files_only,
            )))
            # The rest comes from the commit the first file came from: a push between two downloads must
            # not pair one commit's config with another's weights (and a cached sha needs no request).
            pinned = _snapshot_sha(paths[0]) or revision
        except HFValidationError as err:
            raise HubError(
                f"{repo_id!r}: no such local folder, and not a valid Hub repo id ('namespace/name'): {err}"
            ) from err
        except GatedRepoError as err:
            raise HubError(f"{repo_id}: a gated Hub repo; accept its terms on the Hub and pass token=") from err
        except RepositoryNotFoundError as err:
            raise HubError(
                f"{repo_id}: no such local folder or Hub repo (if the repo is private, log in or pass token=)"
            ) from err
        except RevisionNotFoundError as err:
            raise HubError(
                f"{repo_id}: revision {revision!r} not found (expected a branch, tag or commit sha)"
            ) from err
        except LocalEntryNotFoundError as err:  # before EntryNotFoundError, its base class
            if _offline(local_files_only):
                raise HubError(
                    f"{where}: {filename} is not in the local cache and downloads are off "
                    "(HF_HUB_OFFLINE=1 or local_files_only=True); load it once online first"
                ) from err
            raise HubError(
                f"{where}: could not reach the Hub and {filename} is not in the local cache ({err})"
            ) from err
        except EntryNotFoundError as err:
            if index == 0:
                raise HubError(f"{where}: the repo has no {filename}; expected an imgtok model repo") from err
            raise _missing_weights(repo_id, where, pinned, subfolder, token, filename) from err
        except HfHubHTTPError as err:
            raise HubError(f"{where}: the Hub refused the download of {filename}: {err}") from err
    return paths[0].parent


def _snapshot_sha(path: Path) -> str | None:
    """The commit sha in a cache path ``.../snapshots/<sha>/[subfolder/]file``, if it is one."""
    parts = path.parts
    for i in range(len(parts) - 2, 0, -1):  # the last "snapshots" above the file
        if parts[i - 1] == "snapshots":
            return parts[i] if _COMMIT_SHA.fullmatch(parts[i]) else None
    return None


def _missing_weights(
    repo_id: str, where: str, revision: str | None, subfolder: str | None, token, filename: str
) -> Exception:
    """The error for a repo without its safetensors weights: pickles are refused with the converter's name."""
    from huggingface_hub import HfApi

    try:  # listing only improves the message, so a failure here must not hide the real problem
        files = HfApi(token=token).list_repo_files(repo_id, revision=revision)
    except Exception:
        files = []
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    here = [f[len(prefix):] for f in files if f.startswith(prefix) and "/" not in f[len(prefix):]]
    pickles = sorted(f for f in here if f in PICKLE_WEIGHT_NAMES or f.endswith(_PICKLE_SUFFIXES))
    if pickles:
        return WeightsError(
            f"{where}: holds only pickle weights ({', '.join(pickles)}), no {filename}; imgtok loads safetensors "
            f"only. Convert explicitly with `imgtok convert {repo_id} OUT --allow-pickle` (unpickling can run code)"
        )
    other = sorted(f for f in here if f.endswith(".safetensors"))
    also = f" (it has {', '.join(other)})" if other else ""
    return HubError(f"{where}: the repo has no {filename}{also}")


def push_folder(
    folder: str | Path,
    repo_id: str,
    model_card: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    extra_files: dict[str, str | Path | bytes] | None = None,
):
    """Create ``repo_id`` if needed and commit a model folder's ``config.json`` + ``model.safetensors``.

    Returns the ``huggingface_hub.CommitInfo`` (a ``str``: the commit URL; ``.oid`` is the commit sha).

    Args:
        folder: a model folder (as ``save_pretrained`` writes it).
        repo_id: "namespace/name".
        model_card: README.md text to upload with it (default: the folder's README.md, if any).
        private: create the repo private (an existing repo keeps its visibility).
        commit_message: the commit's summary.
        revision: branch to commit to (created from main if missing); default main.
        token: as in ``huggingface_hub``.
        extra_files: more files to commit, path in repo -> local path or bytes (e.g. metrics.json).
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: no {name}; expected a model folder written by save_pretrained")
    if revision is not None and _COMMIT_SHA.fullmatch(revision):
        raise ValueError(f"revision {revision!r} is a commit sha; push_to_hub commits to a branch name")
    if model_card is None and (folder / MODEL_CARD_NAME).is_file():
        model_card = (folder / MODEL_CARD_NAME).read_text(encoding="utf-8")
    operations = [
        CommitOperationAdd(path_in_repo=CONFIG_NAME, path_or_fileobj=str(folder / CONFIG_NAME)),
        CommitOperationAdd(path_in_repo=WEIGHTS_NAME, path_or_fileobj=str(folder / WEIGHTS_NAME)),
    ]
    if model_card is not None:
        operations.append(CommitOperationAdd(path_in_repo=MODEL_CARD_NAME, path_or_fileobj=model_card.encode("utf-8")))
    for path_in_repo, source in (extra_files or {}).items():
        source = source if isinstance(source, bytes) else str(source)
        operations.append(CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=source))
    # A fresh client reads HF_ENDPOINT's current value (the module-level one keeps the import-time value).
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.create_commit(
            repo_id, operations=operations, commit_message=commit_message or DEFAULT_COMMIT_MESSAGE, revision=revision
        )
    except OfflineModeIsEnabled as err:
        raise HubError(f"{repo_id}: cannot push while HF_HUB_OFFLINE is set") from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        hint = " (log in with `hf auth login` or pass token=)" if status in (401, 403) else ""
        raise HubError(f"{repo_id}: push failed, the Hub answered {status}{hint}: {err}") from err


def push_model_folder(
    folder: str | Path,
    repo_id: str,
    info=None,
    private: bool = False,
    commit_message: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    extra_files: dict[str, str | Path | bytes] | None = None,
):
    """Push an existing model folder as it is (weights byte-identical) with a freshly rendered card.

    The folder is loaded strictly first, so a broken export is refused before anything is uploaded.

    Args:
        folder: a model folder (config.json + model.safetensors), e.g. a training run's export.
        repo_id: "namespace/name".
        info: a ``ModelCardInfo`` (datasets, metrics, training notes) for the card.
        private, commit_message, revision, token, extra_files: as in ``push_folder``.
    """
    import dataclasses

    from .api import load_any
    from .model_card import ModelCardInfo

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    model = load_any(folder)
    info = info or ModelCardInfo()
    card = model.model_card(dataclasses.replace(info, repo_id=info.repo_id or repo_id))
    return push_folder(
        folder, repo_id, model_card=card, private=private, commit_message=commit_message, revision=revision,
        token=token, extra_files=extra_files,
    )
