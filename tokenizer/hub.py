"""Hugging Face Hub access through ``huggingface_hub`` (honours HF_HOME, HF_ENDPOINT, HF_HUB_OFFLINE)."""

from __future__ import annotations

from pathlib import Path

from .pretrained import CONFIG_NAME, PICKLE_WEIGHT_NAMES, WEIGHTS_NAME, WeightsError


class HubError(OSError):
    """A repo, revision or file that cannot be fetched from the Hub or its cache."""


def download_folder(
    repo_id: str,
    revision: str | None = None,
    subfolder: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """Fetch ``config.json`` and ``model.safetensors`` of a Hub repo into the cache; return their folder."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    kwargs = dict(
        repo_id=repo_id, revision=revision, subfolder=subfolder, cache_dir=cache_dir, token=token,
        local_files_only=local_files_only,
    )
    where = f"{repo_id}" + (f"@{revision}" if revision else "") + (f"/{subfolder}" if subfolder else "")
    try:
        config_path = Path(hf_hub_download(filename=CONFIG_NAME, **kwargs))
    except RepositoryNotFoundError as err:
        raise HubError(f"{repo_id}: no such local folder or Hub repo (or it is private: pass token=)") from err
    except RevisionNotFoundError as err:
        raise HubError(f"{where}: revision {revision!r} not found") from err
    except EntryNotFoundError as err:
        raise HubError(f"{where}: the repo has no {CONFIG_NAME}; expected an imgtok model repo") from err
    except LocalEntryNotFoundError as err:
        raise HubError(
            f"{where}: not in the local cache and downloads are off (HF_HUB_OFFLINE or local_files_only)"
        ) from err
    try:
        hf_hub_download(filename=WEIGHTS_NAME, **kwargs)
    except EntryNotFoundError as err:
        raise _missing_weights(repo_id, where, revision, token) from err
    except LocalEntryNotFoundError as err:
        raise HubError(f"{where}: {WEIGHTS_NAME} is not in the local cache and downloads are off") from err
    return config_path.parent


def _missing_weights(repo_id: str, where: str, revision: str | None, token) -> Exception:
    """The error for a repo without model.safetensors: refuse pickles explicitly."""
    try:
        from huggingface_hub import list_repo_files

        files = set(list_repo_files(repo_id, revision=revision, token=token))
    except Exception:  # listing is only for a better message
        files = set()
    pickles = sorted(f for f in files if Path(f).name in PICKLE_WEIGHT_NAMES or f.endswith((".ckpt", ".pt", ".bin")))
    if pickles:
        return WeightsError(
            f"{where}: holds only pickle weights ({', '.join(pickles)}); imgtok loads safetensors only. "
            f"Convert explicitly with `imgtok convert {repo_id} OUT --allow-pickle` (pickle can run code)"
        )
    return HubError(f"{where}: the repo has no {WEIGHTS_NAME}")
