"""The audit job: a synthetic dataset against the real patches its generator was trained on
and against real patients it never saw (models/audit.py), with a report, figures, and the
numbers recorded on the generator's model version too."""

from __future__ import annotations

import json
from typing import TypeVar

import numpy as np

from app.db import session_scope
from app.job_kinds import AuditParams
from app.packed import LabelView, open_patches, read_index
from app.tables import Dataset, ModelVersion
from models.audit import audit_markdown, run_audit
from models.feature_extractors import FeatureExtractor, FeatureWeightsMissingError, inception_extractor
from worker.context import JobContext, Outcome, UserError
from worker.domain_features import load_domain_extractor
from worker.figures import distance_histogram_png, pairs_grid_png
from worker.models_store import pick_device

CLOSEST_PAIRS = 16
T = TypeVar("T")


def _resolved(value: T | None, name: str) -> T:
    """A field the audit's submission resolves (app.audit_inputs): always stored with the job."""
    if value is None:
        raise UserError(f"no {name}: an audit job's inputs are resolved when it is posted")
    return value


def _dataset(ctx: JobContext, dataset_id: str) -> tuple[np.ndarray, np.ndarray]:
    with session_scope(ctx.db_url) as s:
        row = s.get(Dataset, dataset_id)
        if row is None:
            raise UserError(f"dataset {dataset_id} no longer exists")
        key = row.key
    folder = ctx.storage.local_tree(key)
    return open_patches(folder), read_index(folder)


def _extractor(ctx: JobContext) -> FeatureExtractor:
    p: AuditParams = ctx.p
    if p.features == "inception":
        from app.audit_inputs import inception_search_dirs

        try:
            return inception_extractor(ctx.settings.inception_weights, inception_search_dirs())
        except FeatureWeightsMissingError as exc:
            raise UserError(str(exc)) from exc
    return load_domain_extractor(ctx, _resolved(p.classifier_model_id, "classifier_model_id"))


def extractor_overlap(ctx: JobContext, train_patients: set[str], holdout_patients: set[str]) -> dict | None:
    """Patients the domain classifier was trained on that are also in the audit's training or
    holdout set. A classifier that saw them maps them differently from unseen patients, which
    biases the real floor and the synthetic-vs-holdout numbers (features of seen patches are
    more extreme); the report says so."""
    p: AuditParams = ctx.p
    if p.features != "domain":
        return None
    with session_scope(ctx.db_url) as s:
        row = s.get(ModelVersion, _resolved(p.classifier_model_id, "classifier_model_id"))
        dataset_id = (row.config or {}).get("dataset_id") if row is not None else None
    if not dataset_id:
        return {"known": False}
    try:
        _, index = _dataset(ctx, dataset_id)
    except UserError:
        return {"known": False, "dataset_id": dataset_id}
    seen = set(index["patient"].tolist())
    return {"known": True, "dataset_id": dataset_id, "train_patients": len(seen & train_patients),
            "holdout_patients": len(seen & holdout_patients)}


def handle_audit(ctx: JobContext) -> Outcome:
    p: AuditParams = ctx.p
    label = _resolved(p.label, "label")
    generator_id = _resolved(p.generator_id, "generator_id")
    train_dataset_id = _resolved(p.train_dataset_id, "train_dataset_id")
    with session_scope(ctx.db_url) as s:
        generator = s.get(ModelVersion, generator_id)
        if generator is None:
            raise UserError(f"generator {generator_id} no longer exists")
        g_config = dict(generator.config or {})
    synth, synth_index = _dataset(ctx, p.synthetic_dataset_id)
    real, real_index = _dataset(ctx, train_dataset_id)
    trained_on = g_config.get("train_patients")
    train_rows = real_index["label"] == label
    if trained_on:
        train_rows &= np.isin(real_index["patient"], trained_on)
    train = LabelView(real, np.flatnonzero(train_rows))
    if p.holdout_dataset_id:
        hold_arr, hold_index = _dataset(ctx, p.holdout_dataset_id)
        shared = set(hold_index["patient"].tolist()) & set(trained_on or real_index["patient"][train_rows].tolist())
        if shared:
            raise UserError(f"the holdout shares {len(shared)} patient(s) with the generator's training set, "
                            f"e.g. {sorted(shared)[:3]}")
        holdout = LabelView(hold_arr, np.flatnonzero(hold_index["label"] == label))
        holdout_source = {"dataset_id": p.holdout_dataset_id}
    else:
        held = g_config["holdout_patients"]
        holdout = LabelView(real, np.flatnonzero((real_index["label"] == label) & np.isin(real_index["patient"], held)))
        holdout_source = {"dataset_id": train_dataset_id, "patients": len(held)}
    synthetic = LabelView(synth, np.flatnonzero(synth_index["label"] == label))
    for name, view in (("synthetic", synthetic), ("train", train), ("holdout", holdout)):
        if len(view) < 10:
            raise UserError(f"the {name} set has {len(view)} patches of label {label}; the audit needs at least 10")

    result = run_audit(synthetic, train, holdout, _extractor(ctx), max_samples=p.max_samples,
                       seed=p.seed, device=pick_device(p.device),
                       progress_fn=lambda c, t, info: ctx.progress(c, t, info.get("stage")))
    train_set = set(real_index["patient"][train_rows].tolist())
    hold_set = (set(hold_index["patient"].tolist()) if p.holdout_dataset_id
                else set(g_config["holdout_patients"]))
    summary = {**result.summary, "generator_id": generator_id, "label": label,
               "extractor_overlap": extractor_overlap(ctx, train_set, hold_set),
               "datasets": {"synthetic": p.synthetic_dataset_id, "train": train_dataset_id,
                            "holdout": holdout_source}}
    context = {"synthetic dataset": p.synthetic_dataset_id, "generator": generator_id,
               "label": "IDC+" if label else "IDC-", "training dataset": train_dataset_id,
               "holdout": json.dumps(holdout_source)}
    artifacts = {"audit_md": ctx.add_artifact("audit.md", "text/markdown", audit_markdown(summary, context=context).encode()),
                 "audit_json": ctx.add_artifact("audit.json", "application/json", json.dumps(summary, indent=1).encode())}
    memo = result.memorization
    for space in ("pixels", "features"):
        artifacts[f"distances_{space}"] = ctx.add_artifact(
            f"distances_{space}.png", "image/png",
            distance_histogram_png(memo.synthetic[space].tolist(), memo.holdout[space].tolist(),
                                   summary["memorization"]["spaces"][space]["threshold"],
                                   f"Nearest training patch, {space}"))
    order = np.argsort(memo.synthetic["pixels"].numpy())[:CLOSEST_PAIRS]
    nearest_train = memo.nearest_train["pixels"].numpy()[order]
    artifacts["closest_pairs"] = ctx.add_artifact(
        "closest_pairs.png", "image/png",
        pairs_grid_png(synthetic[result.synthetic_rows[order]], train[result.train_rows[nearest_train]]))
    headline = _headline(summary)
    model_metrics = {**(generator_metrics(ctx, generator_id)), "audit": {**headline, "job_id": ctx.job_id}}
    row = ModelVersion(id=generator_id, metrics=model_metrics)
    return Outcome(result={"summary": headline, "artifacts": artifacts}, metrics=summary, rows=[row])


def generator_metrics(ctx: JobContext, model_id: str) -> dict:
    with session_scope(ctx.db_url) as s:
        row = s.get(ModelVersion, model_id)
        return dict(row.metrics or {}) if row is not None else {}


def _headline(summary: dict) -> dict:
    f, floor, m = summary["fidelity"], summary["real_floor"], summary["memorization"]
    keys = ("fid", "kid", "precision", "recall", "density", "coverage")
    return {"features": summary["features"], "counts": summary["counts"],
            "fidelity": {k: f.get(k) for k in keys}, "real_floor": {k: floor.get(k) for k in keys},
            "flagged_fraction": m["flagged_fraction"], "binomial_p_value": m["binomial_p_value"],
            "closer_to_train_share": m["closer_to_train_share"], "small_sample": summary["small_sample"]}
