"""The storage directory: datasets, checkpoints, artifacts, uploads.

Every file is written atomically (temp file in the same folder, fsync, os.replace) so a
crash never leaves a half-written file under its final name. Clients only ever see opaque ids.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def dir(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.root / "datasets" / dataset_id

    def job_dir(self, job_id: str) -> Path:
        return self.dir("jobs", job_id)

    def model_dir(self) -> Path:
        return self.dir("models")

    def upload_path(self, upload_id: str) -> Path:
        return self.dir("uploads") / f"{upload_id}.zip"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Open a temp file beside `path`; on clean exit fsync it and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> int:
    with atomic_writer(path) as fh:
        fh.write(data)
    return len(data)


def replace_dir_atomic(staging: Path, final: Path) -> None:
    """Move a fully written staging folder to its final name (replacing a stale one)."""
    for file in staging.rglob("*"):
        if file.is_file():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, final)
    fsync_dir(final.parent)
