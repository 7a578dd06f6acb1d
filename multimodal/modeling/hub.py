"""Models on the Hugging Face hub, through ``huggingface_hub`` (no HTTP code here).

``from_pretrained("org/name", revision=...)`` resolves a hub id with ``snapshot_download``,
so ``HF_HUB_OFFLINE=1`` reads the local HF cache; the folder it gets is then loaded by the
same rules as a local one (safetensors only, ``checksums.json`` verified, no remote code).
``push_to_hub`` hands a saved model folder (weights, config, processor files, checksums and
the model card) to ``HfApi.upload_folder``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.hub_access import ensure_reachable_or_offline, require_hub, unreachable
from ..core.resources import looks_like_hub_id

# Never fetched from a hub repository: files that would need unpickling.
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt", "*.pickle"]


def resolve_pretrained(name_or_path: str | Path, revision: str | None = None,
                       token: str | bool | None = None) -> Path:  # fmt: skip
    """A local folder as it is; a hub id (``name``, ``org/name``) downloaded, or read from
    the local cache, by ``snapshot_download`` at ``revision``, without pickle files."""
    path = Path(name_or_path).expanduser()
    if path.exists() or not looks_like_hub_id(str(name_or_path)):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    why = ensure_reachable_or_offline()
    try:
        folder = snapshot_download(repo_id=str(name_or_path), revision=revision, token=token,
                                   ignore_patterns=PICKLE_PATTERNS)  # fmt: skip
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        raise unreachable("model", str(name_or_path), why or str(err).splitlines()[0]) from err
    return Path(folder)


def push_folder(folder: str | Path, repo_id: str, *, private: bool | None = None,
                token: str | bool | None = None, revision: str | None = None,
                commit_message: str = "Upload transferfuse model") -> Any:  # fmt: skip
    """Upload a verified saved-model folder (a run folder's ``best_model/``) to ``repo_id``,
    creating the repository if needed; returns the hub's commit info."""
    from huggingface_hub import HfApi

    from ..core.io import verify_folder
    from ..core.run_folder import RunFolder

    folder = RunFolder(folder).saved_model()
    verify_folder(folder)
    require_hub(f"pushing {folder} to {repo_id!r}")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision,
                             commit_message=commit_message)  # fmt: skip
