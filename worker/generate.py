"""The generate job: sample N patches of one label from a generator's EMA weights into a
synthetic packed dataset (the same format as ingest) plus a zip of PNGs, streamed to disk."""

from __future__ import annotations

import io
import queue
import shutil
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from app.packed import INDEX_DTYPE, PackedWriter
from app.storage import replace_dir_atomic
from app.tables import Dataset, ModelVersion
from app.db import session_scope
from models.sampling import build_generator_from_state, iter_samples
from worker.context import JobAborted, JobContext, Outcome, UserError, stable_id
from worker.models_store import load_state, pick_device

LABEL_NAMES = {0: "IDC-", 1: "IDC+"}


class PngZipWriter:
    """Encodes PNGs into a zip on a background thread: zlib releases the GIL, so encoding
    overlaps the next generator batch instead of adding to it."""

    def __init__(self, path: Path, prefix: str) -> None:
        self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED)  # PNGs are compressed already
        self._prefix = prefix
        self._queue: queue.Queue = queue.Queue(maxsize=4)  # bounded: memory stays flat whatever n is
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                start, batch = item
                for i, img in enumerate(batch):
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
                    self._zip.writestr(f"{self._prefix}{start + i:06d}.png", buf.getvalue())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self._error = exc

    def put(self, start: int, batch: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((start, batch))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._zip.close()
        if self._error is not None:
            raise self._error


def generate_to(folder: Path, generator, label: int, n: int, seed: int, size: int, batch_size: int, device: str,
                zip_path: Path | None, progress_fn: Callable[[int, int], None] | None = None,
                abort_fn: Callable[[], bool] | None = None, patient: str = "synthetic") -> dict:
    """Stream n samples into a packed dataset at `folder` (and PNGs into `zip_path`)."""
    writer = PackedWriter(folder, size)
    pngs = PngZipWriter(zip_path, f"{LABEL_NAMES[label].replace('+', 'pos').replace('-', 'neg')}_") if zip_path else None
    done = 0
    try:
        for batch in iter_samples(generator, n, seed, batch_size=batch_size, size=size, device=device):
            if abort_fn is not None and abort_fn():
                raise JobAborted("cancelled")
            records = np.zeros(len(batch), INDEX_DTYPE)
            records["patient"], records["label"] = patient, label
            records["x"] = np.arange(done, done + len(batch))  # the sample's position in the seeded stream
            records["y"] = -1
            records["orig_h"] = records["orig_w"] = size
            writer.append(batch, records)
            if pngs is not None:
                pngs.put(done, batch)
            done += len(batch)
            if progress_fn is not None:
                progress_fn(done, n)
    finally:
        if pngs is not None:
            pngs.close()
    return writer.close({"kind": "synthetic", "seed": seed, "n_edge_patches": 0})


def handle_generate(ctx: JobContext) -> Outcome:
    p = ctx.params
    with session_scope(ctx.db_url) as s:
        model = s.get(ModelVersion, p["model_id"])
        if model is None or model.kind != "generator":
            raise UserError(f"model {p['model_id']} is not a generator")
        model_path, model_version = Path(model.path), model.version
    payload = load_state(model_path)
    generator = build_generator_from_state(payload["config"], payload["state_dict"])
    label, n, seed, size = int(p["label"]), int(p["n"]), int(p.get("seed", 0)), int(p.get("size", 64))
    device = pick_device(p.get("device", "auto"))
    work = ctx.work_dir() / f"attempt-{ctx.attempt}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    zip_tmp = work / "patches.zip"
    meta = generate_to(work / "dataset", generator, label, n, seed, size, int(p.get("batch_size", 256)), device,
                       zip_tmp, progress_fn=lambda d, t: ctx.progress(d, t, "sampling"), abort_fn=ctx.should_abort,
                       patient=f"synthetic:{p['model_id'][:8]}")
    dataset_id = stable_id(ctx.job_id, "dataset")
    final = ctx.storage.dataset_dir(dataset_id)
    replace_dir_atomic(work / "dataset", final)
    zip_id = stable_id(ctx.job_id, "artifact", "patches.zip")
    zip_final = ctx.storage.dir("artifacts", ctx.job_id) / zip_id
    zip_tmp.replace(zip_final)
    ctx.register_artifact(zip_id, f"synthetic_{LABEL_NAMES[label]}_{n}.zip", "application/zip", zip_final,
                          zip_final.stat().st_size)
    shutil.rmtree(work, ignore_errors=True)
    dataset = Dataset(id=dataset_id, name=p.get("name") or f"synthetic {LABEL_NAMES[label]} x{n} (seed {seed})",
                      kind="synthetic", job_id=ctx.job_id, path=str(final), n_patches=meta["n"], patch_size=size,
                      n_patients=0, n_edge_patches=0, counts={"by_label": meta["by_label"]},
                      source={"model_id": p["model_id"], "model_version": model_version, "seed": seed, "size": size})
    result = {"dataset_id": dataset_id, "n": meta["n"], "label": label, "size": size, "seed": seed,
              "model_id": p["model_id"], "zip_artifact_id": zip_id}
    return Outcome(result=result, metrics={"n": meta["n"]}, rows=[dataset])
