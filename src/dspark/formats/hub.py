"""Drafter checkpoints by Hugging Face hub id (`org/name`, optionally `org/name@revision`).

`resolve_checkpoint_dir` turns what a user typed into a local directory: an existing path as it is,
else a hub id through `huggingface_hub.snapshot_download` (the HF cache, `HF_HOME` / `HF_HUB_CACHE`).
Offline (`HF_HUB_OFFLINE=1`), or when the hub cannot be reached, only the local cache is used
(`local_files_only`); a drafter that is not cached then fails with one line saying so.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from dspark.errors import CheckpointError

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[\w.\-/]+)?$")
_FILES = ["*.json", "*.safetensors"]  # a drafter checkpoint is config + weights (+ calibration report)


def looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "/", "~"))


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or env.strip().upper() in ("1", "ON", "YES", "TRUE")


def resolve_checkpoint_dir(path: str | Path, what: str = "drafter") -> Path:
    """A local checkpoint directory for `path` (a directory, or a hub id downloaded / found in the cache)."""
    local = Path(path).expanduser()
    name = str(path)
    if local.exists() or not looks_like_hub_id(name):
        if not local.is_dir():
            raise CheckpointError(f"{what} path {name!r} does not exist or is not a directory")
        return local
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, _, revision = name.partition("@")
    offline = _offline()
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=_FILES,
                                      local_files_only=offline))
    except LocalEntryNotFoundError:
        if offline:
            raise CheckpointError(f"{what} {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is "
                                  "set; download it once with network access (or give a directory)") from None
        raise CheckpointError(f"{what} {name!r}: the hub cannot be reached and it is not in the local cache") from None
    except HfHubHTTPError as exc:
        raise CheckpointError(f"{what} {name!r} could not be downloaded from the hub: {exc}") from None
    except (OSError, ValueError) as exc:  # connection problems, a malformed id
        log.info("hub lookup of %s failed (%s); trying the local cache", name, exc)
        try:
            return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=_FILES,
                                          local_files_only=True))
        except Exception:
            raise CheckpointError(f"{what} {name!r} is neither a directory nor a reachable hub repository "
                                  f"({exc})") from None
