"""The ingest job: the public IDC layout (folder or zip) -> a packed dataset."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.job_kinds import IngestParams, ingest_path_refusal
from app.packed import INDEX_DTYPE, PATCHES_FILE, write_index
from app.storage import Storage, StorageError
from app.tables import Dataset
from worker.context import JobAborted, JobContext, Outcome, UserError, stable_id
from app.uploads import ZipLimits
from worker.idc_layout import PATCH, ExtractReport, LayoutError, decode_into_file, find_root, safe_extract, scan

CHUNK = 256  # files per decoder task: only sizes travel back, so small tasks cost little and balance the tail
MAX_BAD_IN_RESULT = 200


def decoder_context() -> mp.context.BaseContext:
    """Decoder processes come from a forkserver, not a plain fork: the worker process has
    heartbeat, reaper and broker threads, and forking a threaded process can copy a held lock
    into the child and hang it (seen here). The forkserver preloads the decoder's imports
    (OpenCV, numpy: no torch) once per worker process, and the task function lives in that
    light module: when it lived here, each decoder process imported this module's SQLAlchemy
    and app imports on start, 0.3 s before the first chunk of a 1.3 s ingest."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["worker.idc_layout", "cv2"])
    return ctx


def ingest_folder(
    root: Path,
    out_dir: Path,
    *,
    workers: int | None = None,
    progress_fn: Callable[[int, int], None] | None = None,
    abort_fn: Callable[[], bool] | None = None,
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Decode every patch under `root` into a packed dataset at `out_dir`; return (meta, bad files).

    Decoder processes write pixels into a staging file at each candidate's row; rows of files
    that failed to decode are squeezed out at the end (a streamed copy, only when there are any).
    """
    root = find_root(root)
    # Start the decoder processes while the folder is being listed: the forkserver's start and
    # the scan are the two fixed costs of an ingest (0.23 s and 0.12 s of ~2.8 s for 19k files).
    pools: list = []
    starter = threading.Thread(target=lambda: pools.append(decoder_context().Pool(workers or os.cpu_count() or 1)))
    starter.start()
    try:
        candidates, bad = scan(root)
    finally:
        starter.join()
    total = len(candidates)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / "staging.u8"
    with open(staging, "wb") as fh:
        fh.truncate(total * PATCH * PATCH * 3)
    sizes = np.zeros((total, 2), dtype=np.int16)
    keep = np.ones(total, dtype=bool)
    tasks = [(str(staging), total, i, [c.path for c in candidates[i:i + CHUNK]]) for i in range(0, total, CHUNK)]
    done = 0
    with pools[0] as pool:
        for start, chunk_sizes, failures in pool.imap_unordered(decode_into_file, tasks):
            if abort_fn is not None and abort_fn():
                pool.terminate()
                raise JobAborted("cancelled")
            sizes[start:start + len(chunk_sizes)] = chunk_sizes
            for i, reason in failures:
                keep[start + i] = False
                bad.append({"file": os.path.relpath(candidates[start + i].path, root), "reason": reason})
            done += len(chunk_sizes)
            if progress_fn is not None:
                progress_fn(done, total)
    _squeeze(staging, out_dir / PATCHES_FILE, keep)
    kept = [c for c, k in zip(candidates, keep) if k]
    index = np.zeros(len(kept), dtype=INDEX_DTYPE)
    index["patient"] = [c.patient for c in kept]
    index["x"] = [c.x for c in kept]
    index["y"] = [c.y for c in kept]
    index["label"] = [c.label for c in kept]
    index["orig_h"], index["orig_w"] = sizes[keep, 0], sizes[keep, 1]
    n_edge = int(((index["orig_h"] < PATCH) | (index["orig_w"] < PATCH)).sum())
    bad.sort(key=lambda b: b["file"])
    meta = write_index(out_dir, PATCH, index, {
        "n_edge_patches": n_edge, "edge_policy": "padded with white to 50x50 at top-left; orig_h/orig_w in the index"})
    return meta, bad


def _squeeze(staging: Path, final: Path, keep: np.ndarray) -> None:
    """Rename the staging file into place, or copy only the kept rows when some failed."""
    if keep.all():
        os.replace(staging, final)
        return
    row = PATCH * PATCH * 3
    src = np.memmap(staging, dtype=np.uint8, mode="r", shape=(len(keep), row)) if len(keep) else None
    with open(final, "wb") as out:
        for start in range(0, len(keep), 4096):
            sel = keep[start:start + 4096]
            if sel.any():
                out.write(np.ascontiguousarray(src[start:start + 4096][sel]).tobytes())
    del src
    staging.unlink()


def handle_ingest(ctx: JobContext) -> Outcome:
    p: IngestParams = ctx.p
    dataset_id = stable_id(ctx.job_id, "dataset")
    key = Storage.dataset_key(dataset_id)
    limits = ZipLimits.from_settings(ctx.settings)
    extracted: ExtractReport | None = None
    # The scratch folder (extracted zip, staging) is removed whatever happens, a failure included.
    with ctx.storage.scratch("jobs", ctx.job_id, f"attempt-{ctx.attempt}") as work:
        source: Path
        if p.upload_id is not None:
            upload_key = Storage.upload_key(p.upload_id)
            gone = f"upload {p.upload_id} no longer exists"  # expired (app.uploads) or deleted
            try:
                zip_path = ctx.storage.local_path(upload_key)
            except StorageError as exc:
                raise UserError(gone) from exc
            source = work / "unzipped"
            try:
                extracted = _extract(zip_path, source, limits)
            except FileNotFoundError as exc:  # deleted between the two lines
                if zip_path.exists():
                    raise
                raise UserError(gone) from exc
        else:
            assert p.path is not None  # IngestParams: exactly one of path and upload_id
            source = Path(p.path)
            refusal = ingest_path_refusal(ctx.settings, source)
            if refusal is not None:
                raise UserError(refusal)
            if not source.exists():
                raise UserError(f"path {source} does not exist")
            if source.is_file():
                extracted = _extract(source, work / "unzipped", limits)
                source = work / "unzipped"
        staging = work / "dataset"
        ctx.progress(0, 0, "scanning", force=True)
        try:
            meta, bad = ingest_folder(
                source, staging, progress_fn=lambda d, t: ctx.progress(d, t, "decoding"), abort_fn=ctx.should_abort
            )
        except LayoutError as exc:
            raise UserError(str(exc)) from exc
        if extracted is not None and extracted.skipped:
            # Entries left in the zip are listed like the scanner's bad files, relative to the root.
            prefix = find_root(source).relative_to(source).as_posix()
            cut = len(prefix) + 1 if prefix != "." else 0
            bad.extend({"file": name[cut:] if cut and name.startswith(prefix + "/") else name, "reason": reason}
                       for name, reason in extracted.skipped)
            bad.sort(key=lambda b: b["file"])
        if meta["n"] == 0:
            raise UserError(f"no readable patches found ({len(bad)} bad files)")
        ctx.storage.put_tree(key, staging)
    bad_id = ctx.add_artifact("bad_files.json", "application/json", json.dumps(bad, indent=1).encode())
    counts = {"by_label": meta["by_label"], "by_patient": meta["by_patient"]}
    dataset = Dataset(
        id=dataset_id, name=p.name or Path(p.path or "upload").name, kind="real",
        job_id=ctx.job_id, key=key, n_patches=meta["n"], patch_size=meta["size"],
        n_patients=meta["n_patients"], n_edge_patches=meta["n_edge_patches"], counts=counts,
        source=p.model_dump(include={"path", "upload_id"}, exclude_none=True),
    )
    result = {
        "dataset_id": dataset_id,
        "n_patches": meta["n"],
        "by_label": meta["by_label"],
        "n_patients": meta["n_patients"],
        "n_edge_patches": meta["n_edge_patches"],
        "edge_policy": meta["edge_policy"],
        "n_bad_files": len(bad),
        "n_zip_entries_skipped": len(extracted.skipped) if extracted is not None else 0,
        "bad_files": bad[:MAX_BAD_IN_RESULT],
        "bad_files_artifact_id": bad_id,
    }
    metrics = {"n_patches": meta["n"], "n_bad_files": len(bad), "n_edge_patches": meta["n_edge_patches"]}
    return Outcome(result=result, metrics=metrics, rows=[dataset])


def _extract(zip_path: Path, target: Path, limits: ZipLimits) -> ExtractReport:
    """safe_extract with its failures as the job's error (it deletes what it wrote)."""
    import zipfile

    try:
        report = safe_extract(zip_path, target, limits)
    except zipfile.BadZipFile as exc:  # a CRC or size that does not match its header included
        raise UserError(f"{zip_path.name} is not a readable zip file: {exc}") from exc
    except LayoutError as exc:
        raise UserError(f"zip refused: {exc}") from exc
    if report.n_extracted == 0:
        examples = "; ".join(f"{name}: {reason}" for name, reason in report.skipped[:3])
        raise UserError(f"the zip holds no patch of the public layout <patient>/<0|1>/<pid>_idx5_x<X>_y<Y>_class<0|1>.png "
                        f"({len(report.skipped)} entries skipped{', e.g. ' + examples if examples else ''})")
    return report
