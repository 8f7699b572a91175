"""Reading the public IDC layout: <root>/<patient>/<0|1>/<pid>_idx5_x<X>_y<Y>_class<C>.png.

Scanning only looks at names; decoding happens in worker processes (see worker.ingest).
Anything that does not fit the layout is returned as a bad file with a reason, never fatal.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.uploads import PATCH_NAME_RE as NAME_RE
from app.uploads import (
    ZipLimits,
    declared_entry_count,
    directory_wanted,
    member_problem,
    patch_name_problem,
    zip_problems,
)

PATCH = 50  # the public dataset's patch size (DESIGN.md, "The paper in brief")
# Edge patches narrower than 50x50 are kept, padded to 50x50 with white (the slide background
# beyond a tissue edge) at their top-left, and flagged by orig_h/orig_w < 50 in the index.
PAD_VALUE = 255


@dataclass(frozen=True)
class Candidate:
    path: str
    patient: str
    label: int
    x: int
    y: int


class LayoutError(Exception):
    """The folder is not in the IDC layout at all (as opposed to a few bad files)."""


def _is_patient_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not path.is_symlink() and any(
            (path / lab).is_dir() for lab in ("0", "1")
        )
    except OSError:
        return False


def find_root(path: Path) -> Path:
    """The folder whose children are patient folders: `path` itself or one level down
    (the public zip unpacks into IDC_regular_ps50_idx5/)."""
    path = Path(path)
    children = sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())
    if any(_is_patient_dir(c) for c in children):
        return path
    for child in children:
        if any(_is_patient_dir(g) for g in child.iterdir()):
            return child
    raise LayoutError(f"no <patient>/<0|1>/ folders found in {path} or one level below it")


def scan(root: Path) -> tuple[list[Candidate], list[dict[str, str]]]:
    """List candidate patches in a stable order (patient, label, file name) and bad entries."""
    root = find_root(root)
    good: list[Candidate] = []
    bad: list[dict[str, str]] = []
    for patient_entry in sorted(os.scandir(root), key=lambda e: e.name):
        rel_patient = patient_entry.name
        if not patient_entry.is_dir(follow_symlinks=False):
            if patient_entry.is_symlink() or patient_entry.name.endswith(".png"):
                bad.append({"file": rel_patient, "reason": "not inside <patient>/<label>/"})
            continue
        for label_entry in sorted(os.scandir(patient_entry.path), key=lambda e: e.name):
            rel_label = f"{rel_patient}/{label_entry.name}"
            if label_entry.name not in ("0", "1") or not label_entry.is_dir(follow_symlinks=False):
                bad.append({"file": rel_label, "reason": "expected a label folder named 0 or 1"})
                continue
            for file_entry in sorted(os.scandir(label_entry.path), key=lambda e: e.name):
                rel = f"{rel_label}/{file_entry.name}"
                if file_entry.is_symlink():
                    bad.append({"file": rel, "reason": "symbolic link refused"})
                    continue
                if not file_entry.is_file():
                    bad.append({"file": rel, "reason": "not a regular file"})
                    continue
                reason = patch_name_problem(rel_patient, label_entry.name, file_entry.name)
                if reason is not None:
                    bad.append({"file": rel, "reason": reason})
                else:
                    match = NAME_RE.match(file_entry.name)
                    good.append(Candidate(file_entry.path, rel_patient, int(match["c"]), int(match["x"]), int(match["y"])))
    return good, bad


def decode_chunk(paths: list[str]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Decode PNGs to a (b, 50, 50, 3) uint8 array (padded), their (h, w), and failures.

    OpenCV's imdecode (libpng, no per-file Python plugin machinery) decodes these 50x50 files
    ~1.6x faster than Pillow told the format, which is ~1.35x a plain Image.open(path)
    (bench/ingest.py). torchvision's decoder is fast too but costs each decoder process a
    torch import (seconds), more than a whole 19k ingest.
    """
    import cv2

    cv2.setNumThreads(1)  # one decoder process per core; no threads inside
    out = np.full((len(paths), PATCH, PATCH, 3), PAD_VALUE, dtype=np.uint8)
    sizes = np.zeros((len(paths), 2), dtype=np.int16)
    failures: list[tuple[int, str]] = []
    for i, path in enumerate(paths):
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            if not data.startswith(b"\x89PNG\r\n\x1a\n"):
                raise ValueError("not a PNG file")
            buf = np.frombuffer(data, np.uint8)
            # IMREAD_UNCHANGED skips a colour-conversion pass for the usual 8-bit RGB file;
            # anything else (grey, alpha, 16-bit) is decoded again as 8-bit, 3 channels.
            bgr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
            if bgr is not None and (bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8):
                bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError("corrupt or truncated PNG")
            h, w = bgr.shape[:2]
            if h > PATCH or w > PATCH:
                raise ValueError(f"unexpected size {w}x{h} (patches are at most {PATCH}x{PATCH})")
            if h == PATCH and w == PATCH:  # BGR -> RGB straight into the row: 2.5 us, 10.5 as a strided copy
                cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=out[i])
            else:
                out[i, :h, :w] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            sizes[i] = (h, w)
        except Exception as exc:  # noqa: BLE001 - every decoder error becomes a listed bad file
            failures.append((i, f"unreadable: {exc}".splitlines()[0][:200]))
    return out, sizes, failures


def decode_into_file(task: tuple[str, int, int, list[str]]) -> tuple[int, np.ndarray, list[tuple[int, str]]]:
    """Decoder process (worker.ingest's pool): decode `paths` straight into rows start.. of the
    shared staging file, so only sizes and failures travel back (not 1.9 MB of pixels per chunk).
    It lives here, beside decode_chunk, so a decoder process imports nothing heavier."""
    staging, n_total, start, paths = task
    pixels, sizes, failures = decode_chunk(paths)
    rows = np.memmap(staging, dtype=np.uint8, mode="r+", shape=(n_total, PATCH, PATCH, 3))
    rows[start:start + len(paths)] = pixels
    del rows  # no flush: the shared page cache already holds the rows; the dataset is fsynced once, at the end
    return start, sizes, failures


class ZipCapError(LayoutError):
    """A zip that unpacks to more than a cap allows (HISTOSYNTH_ZIP_* settings)."""


@dataclass
class ExtractReport:
    """What safe_extract did: patches written, and the entries it skipped with the reason."""

    n_entries: int = 0
    n_extracted: int = 0
    n_bytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


READ_CHUNK = 64 * 1024  # a cap is noticed within this many decompressed bytes


def safe_extract(zip_path: Path, target: Path, limits: ZipLimits | None = None) -> ExtractReport:
    """Extract the patches of the public layout from a zip into `target`.

    Refused (LayoutError) before anything is written: entries that would land outside `target`,
    symbolic links. Skipped (listed in the report, not written): every file that is not
    `<patient>/<0|1>/<pid>_idx5_x<X>_y<Y>_class<0|1>.png`, directly or under one top folder
    (READMEs, .DS_Store, __MACOSX/). Capped (ZipCapError): entries, total bytes, bytes per entry
    and compression ratio, counted on what is really decompressed, never taken from the zip's
    headers; extraction stops at the first cap broken. On any failure everything this call
    wrote is deleted.
    """
    if limits is None:
        from app.settings import get_settings

        limits = ZipLimits.from_settings(get_settings())
    target = Path(target)
    existed = target.exists()
    target.mkdir(parents=True, exist_ok=True)
    target = target.resolve()
    written: list[Path] = []
    made_dirs: list[Path] = []
    report = ExtractReport()

    def mkdirs(folder: Path) -> None:
        missing = []
        while not folder.exists() and folder != target:
            missing.append(folder)
            folder = folder.parent
        for d in reversed(missing):
            d.mkdir()
            made_dirs.append(d)

    try:
        declared = declared_entry_count(Path(zip_path))
        if declared is not None and declared > limits.max_entries:  # before the central directory is parsed
            raise ZipCapError(limits.entries_message(declared, "declares"))
        with zipfile.ZipFile(zip_path) as zf:
            problems = zip_problems(zf)
            if problems:
                raise LayoutError("; ".join(problems[:5]))
            for info in zf.infolist():
                report.n_entries += 1
                if report.n_entries > limits.max_entries:
                    raise ZipCapError(limits.entries_message(report.n_entries, "has at least"))
                name = info.filename.replace("\\", "/")
                if info.is_dir():
                    if directory_wanted(name):
                        mkdirs((target / name).resolve())
                    continue
                reason = member_problem(name)
                if reason is not None:
                    report.skipped.append((name, reason))
                    continue
                dest = (target / name).resolve()
                mkdirs(dest.parent)
                n = 0
                with zf.open(info) as src, open(dest, "wb") as dst:
                    written.append(dest)
                    while chunk := src.read(READ_CHUNK):
                        n += len(chunk)
                        report.n_bytes += len(chunk)
                        if n > limits.max_entry_bytes:
                            raise ZipCapError(limits.entry_message(name, n, "unpacks to at least"))
                        if limits.ratio_exceeded(n, info.compress_size):
                            raise ZipCapError(limits.ratio_message(name, n, info.compress_size, "unpacks to at least"))
                        if report.n_bytes > limits.max_total_bytes:
                            raise ZipCapError(limits.total_message(report.n_bytes, "unpacks to at least"))
                        dst.write(chunk)
                report.n_extracted += 1
    except BaseException:
        if not existed:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for path in written:
                path.unlink(missing_ok=True)
            for d in reversed(made_dirs):
                try:
                    d.rmdir()
                except OSError:
                    pass
        raise
    return report
