"""Fetching a diffusers autoencoder from the Hub (kept apart from ``tokenizer/hub.py``, which fetches
imgtok's own ``config.json`` + ``model.safetensors``).

A diffusers model repo has ``config.json`` + ``diffusion_pytorch_model.safetensors`` at its root (or in
``subfolder``); a pipeline repo has ``model_index.json`` and the autoencoder in ``vae/``. Only the
config files and one weights file are downloaded, never the pipeline's other components.
"""

from __future__ import annotations

from pathlib import Path

from .diffusers import CONFIG_NAME, PICKLE_NAMES, PIPELINE_SUBFOLDERS, WEIGHT_NAMES, diffusers_folder


def download_diffusers_folder(
    repo_id: str,
    revision: str | None = None,
    subfolder: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    include_pickle: bool = False,
) -> Path | None:
    """The local (cached) folder of a Hub repo's diffusers autoencoder, or None if the repo has none.

    Args:
        repo_id: Hub repo id; a diffusers AutoencoderKL/VQModel repo or a pipeline repo (its ``vae/``).
        revision, subfolder, cache_dir, token, local_files_only: as in ``huggingface_hub``.
        include_pickle: also fetch ``diffusion_pytorch_model.bin`` when there is no safetensors file
            (for ``imgtok convert --allow-pickle``; it is not read here).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    kwargs = dict(repo_id=repo_id, revision=revision, cache_dir=cache_dir, token=token,
                  local_files_only=local_files_only)

    def fetch(sub: str | None, filename: str) -> Path | None:
        try:
            return Path(hf_hub_download(filename=filename, subfolder=sub, **kwargs))
        except (EntryNotFoundError, LocalEntryNotFoundError):
            return None

    try:
        for sub in (subfolder, *(f"{subfolder}/{s}" if subfolder else s for s in PIPELINE_SUBFOLDERS)):
            config = fetch(sub, CONFIG_NAME)
            if config is None or diffusers_folder(config.parent) != config.parent:
                continue
            for name in WEIGHT_NAMES + (PICKLE_NAMES if include_pickle else ()):
                if fetch(sub, name) is not None:
                    return config.parent
            return config.parent  # config without safetensors: the loader names the missing file
    except (HfHubHTTPError, OSError, ValueError):
        return None
    return None
