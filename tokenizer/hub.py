"""Hugging Face Hub access through ``huggingface_hub``: fetch a snapshot of a repo's files, push a folder.

Everything goes through the official client, so its cache layout (``HF_HOME``/``HF_HUB_CACHE``),
``HF_ENDPOINT``, ``HF_TOKEN`` and offline mode (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``: files
come from the cache, no request is made) behave as in every other Hub library. Client errors are
turned into ``HubError`` messages that name the repo and say what to do. Which files a model needs is
``tokenizer.pretrained``'s business (with the names of ``tokenizer.checkpoints``); this module only moves them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import CONFIG_NAME, WEIGHTS_NAME

MODEL_CARD_NAME = "README.md"
DEFAULT_COMMIT_MESSAGE = "Upload imgtok model"
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


class HubError(OSError):
    """A repo, revision or file that cannot be fetched from (or pushed to) the Hub or its cache."""


class RepoNotFoundError(HubError):
    """No such repo on the Hub, or the Hub cannot be reached and the cache has none.

    ``detail`` is the message without the repo's name, for callers that add where else they looked.
    """

    def __init__(self, where: str, detail: str):
        super().__init__(f"{where}: {detail}")
        self.detail = detail


# A Hub that cannot be reached at all (no DNS, connection refused, no route) is told by one connection
# attempt of this many seconds, instead of the client's retries (15 s here, 93 s with older clients).
REACH_TIMEOUT = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")


def unreachable_reason(endpoint: str | None = None, timeout: float = REACH_TIMEOUT) -> str | None:
    """Why the Hub's host cannot be reached in one TCP connection attempt, or None when it can.

    Behind a proxy only the client knows the route, so then this says None and the client decides.
    """
    import os
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    url = urlsplit(endpoint or constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return None
    except OSError as err:  # socket.gaierror (no DNS), ConnectionRefusedError, TimeoutError, no route
        return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


@dataclass(frozen=True)
class HubOptions:
    """Where and how to fetch a Hub repo (the arguments every ``huggingface_hub`` download takes).

    revision: a branch, tag or commit sha (default "main"); a sha pins exact files.
    subfolder: a folder inside the repo holding the model files.
    cache_dir: instead of ``HF_HUB_CACHE`` (``$HF_HOME/hub``).
    token: as in ``huggingface_hub`` (None: the saved login or ``HF_TOKEN``; False: none).
    local_files_only: use the cache only, like ``HF_HUB_OFFLINE=1``.
    """

    revision: str | None = None
    subfolder: str | None = None
    cache_dir: str | Path | None = None
    token: str | bool | None = None
    local_files_only: bool = False

    def where(self, repo_id: str) -> str:
        """``repo@revision/subfolder``, for messages."""
        return repo_id + (f"@{self.revision}" if self.revision else "") + (f"/{self.subfolder}" if self.subfolder else "")

    def prefix(self) -> str:
        """The subfolder as a path prefix inside the repo ("" or "sub/")."""
        return f"{self.subfolder.strip('/')}/" if self.subfolder else ""


def _offline(local_files_only: bool) -> bool:
    from huggingface_hub import constants

    return bool(local_files_only or constants.HF_HUB_OFFLINE)


def download(repo_id: str, options: HubOptions, patterns: list[str]) -> Path:
    """Fetch the files of one commit of ``repo_id`` that match ``patterns``; return the snapshot folder.

    ``snapshot_download`` resolves the revision to a commit once and fetches every file from that commit,
    so a push landing between two files cannot pair one commit's config with another's weights. Patterns
    that match nothing are not an error: the caller looks at what arrived.

    Args:
        repo_id: "namespace/name" on the Hub (``HF_ENDPOINT``).
        options: revision, cache_dir, token, local_files_only (``subfolder`` is part of ``patterns``).
        patterns: ``allow_patterns`` (paths inside the repo, globs allowed).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from huggingface_hub import constants

    where = options.where(repo_id)
    # Unreachable at all: read the cache at once (what the client does too, after its retries).
    unreachable = None if _offline(options.local_files_only) else unreachable_reason()
    try:
        return Path(snapshot_download(
            repo_id, revision=options.revision, cache_dir=options.cache_dir, token=options.token,
            local_files_only=options.local_files_only or unreachable is not None, allow_patterns=patterns,
        ))
    except HFValidationError as err:
        raise RepoNotFoundError(repr(repo_id), f"not a valid Hub repo id ('namespace/name'): {err}") from err
    except GatedRepoError as err:  # before RepositoryNotFoundError, its base class
        raise HubError(f"{repo_id}: a gated Hub repo; accept its terms on the Hub and pass token=") from err
    except RepositoryNotFoundError as err:
        raise RepoNotFoundError(
            repo_id, f"no Hub repo of that name at {constants.ENDPOINT} (if it is private, log in or pass token=)"
        ) from err
    except RevisionNotFoundError as err:
        raise HubError(
            f"{repo_id}: revision {options.revision!r} not found (expected a branch, tag or commit sha)"
        ) from err
    except LocalEntryNotFoundError as err:
        if unreachable is not None:
            raise RepoNotFoundError(
                where, f"the Hub ({constants.ENDPOINT}) cannot be reached ({unreachable}) and the local cache "
                f"({options.cache_dir or constants.HF_HUB_CACHE}) has no copy of it"
            ) from err
        if _offline(options.local_files_only):
            raise HubError(
                f"{where}: not in the local cache and downloads are off "
                "(HF_HUB_OFFLINE=1 or local_files_only=True); load it once online first"
            ) from err
        raise HubError(f"{where}: could not reach the Hub and the files are not in the local cache ({err})") from err
    except HfHubHTTPError as err:
        raise HubError(f"{where}: the Hub refused the download: {err}") from err


def list_files(repo_id: str, options: HubOptions) -> list[str]:
    """The repo's files directly inside ``options.subfolder`` (names relative to it); [] if the listing fails.

    Only for messages (naming the pickles a repo holds instead of safetensors): a failure here must not
    hide the problem being reported.
    """
    from huggingface_hub import HfApi

    try:
        files = HfApi(token=options.token).list_repo_files(repo_id, revision=options.revision)
    except Exception:
        return []
    prefix = options.prefix()
    return [f[len(prefix):] for f in files if f.startswith(prefix) and "/" not in f[len(prefix):]]


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
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubError(f"{repo_id!r}: not a valid Hub repo id ('namespace/name'): {err}") from err
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
    unreachable = None if _offline(False) else unreachable_reason(api.endpoint)
    if unreachable is not None:  # one short attempt instead of the client's retries per request
        raise HubError(f"{repo_id}: cannot push: the Hub ({api.endpoint}) cannot be reached ({unreachable})")
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
