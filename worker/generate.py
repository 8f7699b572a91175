"""The generate job: sample N patches of one label from a generator's EMA weights into a
synthetic packed dataset (the same format as ingest) plus a zip of PNGs, streamed to disk.
With `filter_model_id`, only the candidates that classifier puts on the label are kept
(models/label_filter.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.job_kinds import GenerateParams
from app.packed import INDEX_DTYPE, PackedWriter
from app.storage import Storage
from app.tables import Dataset, ModelVersion
from app.db import session_scope
from models.label_filter import FilterExhausted, FilterTally, label_filtered
from models.sampling import build_generator_from_state, iter_samples
from worker.context import JobAborted, JobContext, Outcome, UserError, stable_id
from worker.domain_features import load_classifier_version
from worker.models_store import pick_device, read_state

LABEL_NAMES = {0: "IDC-", 1: "IDC+"}


@dataclass
class LabelFilter:
    """A classifier that keeps only the candidates it puts on the label (models/label_filter.py)."""

    classifier: object
    input_size: int
    min_prob: float
    max_draw: float
    tally: FilterTally


def _batches(generator, label: int, n: int, seed: int, size: int, batch_size: int, device: str, precision: str,
             keep: LabelFilter | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(patches, their positions in the seed's stream) batches: every sample, or the kept ones."""
    if keep is not None:
        yield from label_filtered(generator, keep.classifier, keep.input_size, label, n, seed, keep.min_prob,
                                  keep.max_draw, size=size, batch_size=batch_size, device=device,
                                  precision=precision, tally=keep.tally)
        return
    done = 0
    for batch in iter_samples(generator, n, seed, batch_size=batch_size, size=size, device=device,
                              precision=precision):
        yield batch, np.arange(done, done + len(batch))
        done += len(batch)


def generate_to(folder: Path, generator, label: int, n: int, seed: int, size: int, batch_size: int, device: str,
                progress_fn: Callable[[int, int], None] | None = None,
                abort_fn: Callable[[], bool] | None = None, patient: str = "synthetic",
                precision: str = "auto", keep: LabelFilter | None = None) -> dict:
    """Stream n samples into a packed dataset at `folder`; memory stays flat whatever n is.
    (The zip of PNGs is encoded when it is downloaded: app/zipstream.py.)"""
    writer = PackedWriter(folder, size)
    done = 0
    for batch, positions in _batches(generator, label, n, seed, size, batch_size, device, precision, keep):
        if abort_fn is not None and abort_fn():
            raise JobAborted("cancelled")
        records = np.zeros(len(batch), INDEX_DTYPE)
        records["patient"], records["label"] = patient, label
        records["x"] = positions  # the sample's position in the seeded stream
        records["y"] = -1
        records["orig_h"] = records["orig_w"] = size
        writer.append(batch, records)
        done += len(batch)
        if progress_fn is not None:
            progress_fn(done, n)
    return writer.close({"kind": "synthetic", "seed": seed, "n_edge_patches": 0, "precision": precision,
                         "device": str(device)})


def _label_filter(ctx: JobContext, p: GenerateParams, device: str) -> tuple[LabelFilter | None, dict]:
    """The job's LabelFilter and its record (model id, version, sha256, threshold), or (None, {})."""
    if p.filter_model_id is None:
        return None, {}
    classifier, config, identity = load_classifier_version(ctx, p.filter_model_id, "filter classifier", device)
    record = {**identity, "min_prob": p.filter_min_prob, "max_draw": p.filter_max_draw}
    return LabelFilter(classifier, config.input_size, p.filter_min_prob, p.filter_max_draw, FilterTally()), record


def handle_generate(ctx: JobContext) -> Outcome:
    p: GenerateParams = ctx.p
    model_id = p.model_id
    if model_id is None:
        raise UserError("no model_id: a generate job's generator is resolved when it is posted")
    with session_scope(ctx.db_url) as s:
        model = s.get(ModelVersion, model_id)
        if model is None or model.kind != "generator":
            raise UserError(f"model {model_id} is not a generator")
        model_key, model_version = model.key, model.version
    payload = read_state(ctx.storage, model_key)
    generator = build_generator_from_state(payload["config"], payload["state_dict"])
    label, n, seed, size = p.label, p.n, p.seed, p.size
    device = pick_device(p.device)
    dataset_id = stable_id(ctx.job_id, "dataset")
    key = Storage.dataset_key(dataset_id)
    keep, filter_record = _label_filter(ctx, p, device)
    with ctx.storage.scratch("jobs", ctx.job_id, f"attempt-{ctx.attempt}") as work:
        try:
            meta = generate_to(work / "dataset", generator, label, n, seed, size, p.batch_size, device,
                               progress_fn=lambda d, t: ctx.progress(d, t, "sampling"), abort_fn=ctx.should_abort,
                               patient=f"synthetic:{model_id[:8]}", precision=p.precision, keep=keep)
        except FilterExhausted as exc:
            raise UserError(f"label filter: {exc} (filter_min_prob, filter_max_draw)") from exc
        ctx.storage.put_tree(key, work / "dataset")
    if keep is not None:
        filter_record.update(keep.tally.summary())
    # The zip artifact points at the packed dataset; the API encodes the PNGs as it streams.
    zip_id = stable_id(ctx.job_id, "artifact", "patches.zip")
    ctx.register_artifact(zip_id, f"synthetic_{'pos' if label else 'neg'}_{n}.zip", "application/zip", key,
                          ctx.storage.size(f"{key}/patches.u8"))
    dataset = Dataset(id=dataset_id, name=p.name or f"synthetic {LABEL_NAMES[label]} x{n} (seed {seed})",
                      kind="synthetic", job_id=ctx.job_id, key=key, n_patches=meta["n"], patch_size=size,
                      n_patients=0, n_edge_patches=0, counts={"by_label": meta["by_label"]},
                      source={"model_id": model_id, "model_version": model_version, "seed": seed, "size": size,
                              "device": device, "precision": p.precision,
                              **({"label_filter": filter_record} if filter_record else {})})
    result = {"dataset_id": dataset_id, "n": meta["n"], "label": label, "size": size, "seed": seed,
              "model_id": model_id, "zip_artifact_id": zip_id,
              **({"label_filter": filter_record} if filter_record else {})}
    metrics = {"n": meta["n"], **({"filter_acceptance": filter_record["acceptance"]} if filter_record else {})}
    return Outcome(result=result, metrics=metrics, rows=[dataset])
