"""Uploaded zip files: streamed to storage under a size cap, refused when unsafe."""

from __future__ import annotations

import stat
import zipfile
from pathlib import PurePosixPath


def zip_problems(zf: zipfile.ZipFile) -> list[str]:
    """Why a zip must be refused: entries that would land outside the target folder
    (absolute paths, drive letters, '..') and symbolic links."""
    problems = []
    for info in zf.infolist():
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
            problems.append(f"entry {name!r} would land outside the target folder")
        elif stat.S_ISLNK(info.external_attr >> 16):
            problems.append(f"entry {name!r} is a symbolic link")
    return problems
