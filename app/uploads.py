"""Uploaded zip files: streamed to storage under a size cap, refused when unsafe, and expired.

Safety has two halves. Here, before anything is extracted: the names (no escape from the target
folder, no symbolic links) and what the zip *declares* (entries, total size; the upload route
refuses early on these). In ``worker.idc_layout.safe_extract``: the caps again, counted on the
bytes actually decompressed, since a zip's headers are written by whoever made it.
"""

from __future__ import annotations

import re
import stat
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.settings import Settings
    from app.storage import Storage

# The public layout's file name: <pid>_idx5_x<X>_y<Y>_class<0|1>.png inside <pid>/<0|1>/.
PATCH_NAME_RE = re.compile(r"^(?P<pid>[0-9A-Za-z]+)_idx5_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<c>[01])\.png$")
NAME_REASON = "name is not <pid>_idx5_x<X>_y<Y>_class<0|1>.png"
# The ratio cap applies once an entry has produced this many bytes: tiny entries can compress
# far better than 100:1 (a short run of equal bytes) and cost nothing.
RATIO_MIN_BYTES = 64 * 1024
UPLOADS_PREFIX = "uploads"


@dataclass(frozen=True)
class ZipLimits:
    """Caps on what one zip may unpack to (HISTOSYNTH_ZIP_* settings)."""

    max_total_bytes: int
    max_entries: int
    max_entry_bytes: int
    max_ratio: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ZipLimits:
        return cls(settings.zip_max_total_bytes, settings.zip_max_entries, settings.zip_max_entry_bytes,
                   settings.zip_max_ratio)

    # One wording for each cap, used by the route (declared) and the extraction (counted).
    def entries_message(self, n: int, how: str) -> str:
        return (f"the zip {how} {n} entries, more than the cap of {self.max_entries} "
                f"(HISTOSYNTH_ZIP_MAX_ENTRIES)")

    def total_message(self, n: int, how: str) -> str:
        return (f"the zip {how} {n} bytes of patches, more than the cap of {self.max_total_bytes} bytes "
                f"(HISTOSYNTH_ZIP_MAX_TOTAL_BYTES)")

    def entry_message(self, name: str, n: int, how: str) -> str:
        return (f"entry {name!r} {how} {n} bytes, more than the per-entry cap of {self.max_entry_bytes} bytes "
                f"(HISTOSYNTH_ZIP_MAX_ENTRY_BYTES)")

    def ratio_message(self, name: str, n: int, compressed: int, how: str) -> str:
        return (f"entry {name!r} {how} {n} bytes from {compressed} compressed, a ratio over the cap of "
                f"{self.max_ratio:g} (HISTOSYNTH_ZIP_MAX_RATIO)")

    def ratio_exceeded(self, n: int, compressed: int) -> bool:
        return n > RATIO_MIN_BYTES and n > self.max_ratio * max(compressed, 1)


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


def patch_name_problem(patient: str, label: str, filename: str) -> str | None:
    """Why `<patient>/<label>/<filename>` is not a patch of the public layout (None: it is)."""
    if label not in ("0", "1"):
        return "expected a label folder named 0 or 1"
    match = PATCH_NAME_RE.match(filename)
    if match is None:
        return NAME_REASON
    if match["pid"] != patient:
        return f"patient {match['pid']} in name, folder says {patient}"
    if match["c"] != label:
        return f"class{match['c']} in name, label folder says {label}"
    return None


def member_problem(name: str) -> str | None:
    """Why a zip entry (a file) is not extracted: only `<patient>/<0|1>/<patch>.png`, directly
    or under one top folder (the public zip's IDC_regular_ps50_idx5/), is. None: extract it."""
    parts = name.split("/")
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return "hidden file or macOS metadata (not extracted)"
    if len(parts) < 3:
        return "not inside <patient>/<label>/ (not extracted)"
    if len(parts) > 4:
        return "deeper than <folder>/<patient>/<label>/<file> (not extracted)"
    reason = patch_name_problem(*parts[-3:])
    return None if reason is None else f"{reason} (not extracted)"


def directory_wanted(name: str) -> bool:
    """Directory entries are made when they could hold the layout (not __MACOSX/, hidden ones)."""
    parts = [p for p in name.split("/") if p]
    return 0 < len(parts) <= 3 and not any(p.startswith(".") or p == "__MACOSX" for p in parts)


def declared_entry_count(path: Path) -> int | None:
    """The entry count in the zip's end-of-central-directory record, read before the central
    directory itself is parsed (parsing millions of entries would cost gigabytes of memory).
    None when the record cannot be read (then zipfile says why)."""
    try:
        with open(path, "rb") as fh:
            end = zipfile._EndRecData(fh)  # the stdlib's own reader, zip64 included
    except (AttributeError, OSError, zipfile.BadZipFile):
        return None
    return None if not end else int(end[zipfile._ECD_ENTRIES_TOTAL])


def declared_problems(zf: zipfile.ZipFile, limits: ZipLimits) -> list[str]:
    """Caps broken by what the central directory declares: the entry count, and the sizes of
    the entries that would be extracted (the patches). Declared sizes are not trusted beyond
    this early refusal: the extraction counts what is really decompressed."""
    infos = zf.infolist()
    problems = []
    if len(infos) > limits.max_entries:
        problems.append(limits.entries_message(len(infos), "declares"))
    total = 0
    for info in infos:
        if info.is_dir() or member_problem(info.filename) is not None:
            continue
        total += info.file_size
        if info.file_size > limits.max_entry_bytes:
            problems.append(limits.entry_message(info.filename, info.file_size, "declares"))
        elif limits.ratio_exceeded(info.file_size, info.compress_size):
            problems.append(limits.ratio_message(info.filename, info.file_size, info.compress_size, "declares"))
        if len(problems) >= 50:
            break
    if total > limits.max_total_bytes:
        problems.insert(0, limits.total_message(total, "declares"))
    return problems


class ZipRefused(Exception):
    """An upload that is not a zip or breaks a rule: `title` for the problem, the reasons."""

    def __init__(self, title: str, problems: list[str]) -> None:
        super().__init__("; ".join(problems[:5]))
        self.title, self.problems = title, problems


def check_upload(path: Path, limits: ZipLimits) -> int:
    """The number of entries of an uploaded zip, or ZipRefused. Blocking (reads the central
    directory): the route runs it in a worker thread, never on the event loop."""
    if not zipfile.is_zipfile(path):
        raise ZipRefused("Not a zip file", ["The upload is not a readable zip archive."])
    declared = declared_entry_count(path)
    if declared is not None and declared > limits.max_entries:
        raise ZipRefused("Zip refused", [limits.entries_message(declared, "declares")])
    try:
        with zipfile.ZipFile(path) as zf:
            problems = zip_problems(zf) or declared_problems(zf, limits)
            n_entries = len(zf.infolist())
    except zipfile.BadZipFile as exc:
        raise ZipRefused("Not a zip file", [f"The upload is not a readable zip archive: {exc}"]) from exc
    if problems:
        raise ZipRefused("Zip refused", problems)
    return n_entries


def delete_expired_uploads(storage: Storage, ttl_seconds: float, *, now: datetime | None = None) -> list[str]:
    """Delete the uploaded zips last modified more than `ttl_seconds` before `now`; return their
    keys. An ingest of one of them fails with "upload ... no longer exists"."""
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(seconds=ttl_seconds)
    expired = [key for key, modified in storage.list_modified(UPLOADS_PREFIX).items() if modified < cutoff]
    for key in expired:
        storage.delete(key)
    return expired
