"""The ingest job: the public IDC layout (folder or zip) -> a packed dataset."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.packed import INDEX_DTYPE, PackedWriter
from app.storage import replace_dir_atomic
from app.tables import Dataset
from worker.context import JobAborted, JobContext, Outcome, UserError, stable_id
from worker.idc_layout import PATCH, LayoutError, decode_chunk, find_root, safe_extract, scan

CHUNK = 512  # files per task sent to a decoder process: big enough to amortise IPC
MAX_BAD_IN_RESULT = 200


def decoder_context() -> mp.context.BaseContext:
    """Decoder processes come from a forkserver, not a plain fork: the worker process has
    heartbeat, reaper and broker threads, and forking a threaded process can copy a held lock
    into the child and hang it (seen here). The forkserver preloads the decoder's imports
    (Pillow, numpy: no torch) once per worker process."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["worker.idc_layout"])
    return ctx


def ingest_folder(
    root: Path,
    out_dir: Path,
    *,
    workers: int | None = None,
    progress_fn: Callable[[int, int], None] | None = None,
    abort_fn: Callable[[], bool] | None = None,
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Decode every patch under `root` into a packed dataset at `out_dir`; return (meta, bad files)."""
    root = find_root(root)
    candidates, bad = scan(root)
    total = len(candidates)
    writer = PackedWriter(out_dir, PATCH)
    workers = workers or os.cpu_count() or 1
    chunks = [candidates[i : i + CHUNK] for i in range(0, total, CHUNK)]
    n_edge = 0
    done = 0
    ctx = decoder_context()
    # imap keeps file order, so a dataset's index is the same on every run.
    with ctx.Pool(workers) as pool:
        for chunk, (pixels, sizes, failures) in zip(chunks, pool.imap(decode_chunk, [[c.path for c in ch] for ch in chunks])):
            if abort_fn is not None and abort_fn():
                pool.terminate()
                raise JobAborted("cancelled")
            keep = np.ones(len(chunk), dtype=bool)
            for i, reason in failures:
                keep[i] = False
                bad.append({"file": os.path.relpath(chunk[i].path, root), "reason": reason})
            records = np.zeros(int(keep.sum()), dtype=INDEX_DTYPE)
            kept = [c for c, k in zip(chunk, keep) if k]
            records["patient"] = [c.patient for c in kept]
            records["x"] = [c.x for c in kept]
            records["y"] = [c.y for c in kept]
            records["label"] = [c.label for c in kept]
            records["orig_h"], records["orig_w"] = sizes[keep, 0], sizes[keep, 1]
            n_edge += int(((sizes[keep, 0] < PATCH) | (sizes[keep, 1] < PATCH)).sum())
            writer.append(pixels[keep], records)
            done += len(chunk)
            if progress_fn is not None:
                progress_fn(done, total)
    meta = writer.close({"n_edge_patches": n_edge, "edge_policy": "padded with white to 50x50 at top-left; orig_h/orig_w in the index"})
    return meta, bad


def handle_ingest(ctx: JobContext) -> Outcome:
    params = ctx.params
    work = ctx.work_dir() / f"attempt-{ctx.attempt}"
    shutil.rmtree(work, ignore_errors=True)
    source: Path
    if params.get("upload_id"):
        zip_path = ctx.storage.upload_path(params["upload_id"])
        if not zip_path.is_file():
            raise UserError(f"upload {params['upload_id']} no longer exists")
        source = work / "unzipped"
        _extract(zip_path, source)
    else:
        source = Path(params["path"])
        if not source.exists():
            raise UserError(f"path {source} does not exist")
        if source.is_file():
            _extract(source, work / "unzipped")
            source = work / "unzipped"
    dataset_id = stable_id(ctx.job_id, "dataset")
    staging = work / "dataset"
    ctx.progress(0, 0, "scanning", force=True)
    try:
        meta, bad = ingest_folder(
            source, staging, progress_fn=lambda d, t: ctx.progress(d, t, "decoding"), abort_fn=ctx.should_abort
        )
    except LayoutError as exc:
        raise UserError(str(exc)) from exc
    if meta["n"] == 0:
        raise UserError(f"no readable patches found ({len(bad)} bad files)")
    final = ctx.storage.dataset_dir(dataset_id)
    replace_dir_atomic(staging, final)
    shutil.rmtree(work, ignore_errors=True)
    import json

    bad_id = ctx.add_artifact("bad_files.json", "application/json", json.dumps(bad, indent=1).encode())
    counts = {"by_label": meta["by_label"], "by_patient": meta["by_patient"]}
    dataset = Dataset(
        id=dataset_id, name=params.get("name") or Path(params.get("path") or "upload").name, kind="real",
        job_id=ctx.job_id, path=str(final), n_patches=meta["n"], patch_size=meta["size"],
        n_patients=meta["n_patients"], n_edge_patches=meta["n_edge_patches"], counts=counts,
        source={k: v for k, v in params.items() if k in ("path", "upload_id")},
    )
    result = {
        "dataset_id": dataset_id,
        "n_patches": meta["n"],
        "by_label": meta["by_label"],
        "n_patients": meta["n_patients"],
        "n_edge_patches": meta["n_edge_patches"],
        "edge_policy": meta["edge_policy"],
        "n_bad_files": len(bad),
        "bad_files": bad[:MAX_BAD_IN_RESULT],
        "bad_files_artifact_id": bad_id,
    }
    metrics = {"n_patches": meta["n"], "n_bad_files": len(bad), "n_edge_patches": meta["n_edge_patches"]}
    return Outcome(result=result, metrics=metrics, rows=[dataset])


def _extract(zip_path: Path, target: Path) -> None:
    import zipfile

    try:
        safe_extract(zip_path, target)
    except zipfile.BadZipFile as exc:
        raise UserError(f"{zip_path.name} is not a readable zip file") from exc
    except LayoutError as exc:
        raise UserError(f"zip refused: {exc}") from exc
