"""Where a job's files live under the settings' directories (one place for the layout).

`storage_dir/checkpoints/<job id>/` holds a job's checkpoints (and `INIT_FILE`, the copy of an
`init_from` source the API installs at submission); `storage_dir/uploads/` uploaded checkpoints;
`datasets_dir/<id>.npz` uploaded datasets. Stored rows hold paths relative to `storage_dir`.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from jobstore.settings import Settings

INIT_FILE = "init_from.safetensors"


def job_checkpoint_dir(settings: Settings, job_id: str, *, create: bool = False) -> Path:
    path = Path(settings.storage_dir) / "checkpoints" / job_id
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def uploads_dir(settings: Settings) -> Path:
    path = Path(settings.storage_dir) / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def datasets_dir(settings: Settings) -> Path:
    path = Path(settings.datasets_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def relative_to_storage(settings: Settings, path: Path) -> str:
    """The form a row stores: `path` relative to `storage_dir`, with forward slashes."""
    return Path(path).resolve().relative_to(Path(settings.storage_dir).resolve()).as_posix()


def stored_file(storage_dir: Path | str, relative: str) -> Path | None:
    """The absolute path of a row's file, or None when the path would leave `storage_dir`."""
    root = Path(storage_dir).resolve()
    path = (root / relative).resolve()
    return path if path.is_relative_to(root) else None


def install_init_file(settings: Settings, job_id: str, source: Path) -> Path:
    """Copy an `init_from` source checkpoint into the new job's directory (atomically)."""
    directory = job_checkpoint_dir(settings, job_id, create=True)
    tmp = directory / f".{INIT_FILE}.{uuid.uuid4().hex}.tmp"
    shutil.copyfile(source, tmp)
    os.replace(tmp, directory / INIT_FILE)
    return directory / INIT_FILE
