"""The experiment job: the paper's whole pipeline from one POST.

1. split the real dataset's patients into GAN-training, classification and audit-holdout
   parts (models/experiment_plan.py), each written as a dataset of its own;
2. train_classifier on the classification part: the audit's domain feature extractor (and,
   with select_every, the features that pick each generator's best snapshot);
3. train_gan on the GAN part (one generator per label);
4. generate, per label, as many patches as the classification part holds (with label_filter,
   only those a classifier trained on the GAN part puts on their label: models/label_filter.py);
5. evaluate: the four-way protocol (and the augmentation rows) on the classification part
   against the synthetic sets, with the GAN part as the reference (GRTR: what TSTR could reach);
6. audit, per label, against the holdout patients;
7. one report beside the paper's Table 3.

Steps 2-6 are ordinary jobs, children of the experiment (`parent_id`), with stable ids. The
experiment runs each in its own process (no second worker needed) unless another worker
already has it; after a crash the re-run experiment finds the children that finished, and the
one that was running resumes as any job does (train_gan from its checkpoints). Cancelling
the experiment cancels its unfinished children (app/jobs.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from app import jobs
from app.db import session_scope
from app.job_kinds import ExperimentParams, smallest_every, stored_params, validate_params
from app.packed import read_index, write_subset
from app.problems import Problem
from app.storage import Storage
from app.tables import Dataset, Job
from models.experiment_plan import part_targets, split_patients
from worker.context import JobAborted, JobContext, Outcome, UserError, run_job, stable_id
from worker.experiment_report import experiment_markdown

STEPS = ("split", "domain_classifier", "filter_classifier", "train_gan", "generate_0", "generate_1", "evaluate",
         "audit_0", "audit_1", "report", "done")
AT = {step: i for i, step in enumerate(STEPS)}


def _split(ctx: JobContext) -> dict[str, str]:
    """The three part datasets (ids derive from the job id: a re-run finds them)."""
    p: ExperimentParams = ctx.p
    with session_scope(ctx.db_url) as s:
        source = s.get(Dataset, p.dataset_id)
        if source is None:
            raise UserError(f"dataset {p.dataset_id} no longer exists")
        source_key, name = source.key, source.name
    folder = ctx.storage.local_tree(source_key)
    index = read_index(folder)
    available = {label: int((index["label"] == label).sum()) for label in (0, 1)}
    targets = part_targets(available, p.fraction, p.holdout_share)
    parts = split_patients(index["patient"], index["label"], targets, seed=p.seed)
    empty = [part for part, patients in parts.items() if not patients]
    if empty:
        raise UserError(f"the dataset's patients do not fill every part (empty: {empty}); use a dataset with more patients")
    ids = {}
    for part, patients in parts.items():
        dataset_id = ids[part] = stable_id(ctx.job_id, "dataset", part)
        with session_scope(ctx.db_url) as s:
            if s.get(Dataset, dataset_id) is not None:
                continue
        rows = np.flatnonzero(np.isin(index["patient"], patients))
        key = Storage.dataset_key(dataset_id)
        with ctx.storage.scratch("jobs", ctx.job_id, f"part-{part}") as staging:
            meta = write_subset(folder, rows, staging / "dataset",
                                {"kind": "real", "parent_dataset": p.dataset_id, "part": part})
            ctx.storage.put_tree(key, staging / "dataset")
        with session_scope(ctx.db_url) as s:
            s.merge(Dataset(id=dataset_id, name=f"{name} / {part} part (experiment {ctx.job_id[:8]})", kind="real",
                            job_id=ctx.job_id, key=key, n_patches=meta["n"], patch_size=meta["size"],
                            n_patients=meta["n_patients"], n_edge_patches=0,
                            counts={"by_label": meta["by_label"], "by_patient": meta["by_patient"]},
                            source={"parent_dataset": p.dataset_id, "part": part, "patients": patients,
                                    "targets": {str(k): v for k, v in targets[part].items()}}))
    return ids


def _child(ctx: JobContext, step: str, kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Create (once) and run, or wait for, the child job of `step`; its result."""
    child_id = stable_id(ctx.job_id, "child", step)
    with session_scope(ctx.db_url) as s:
        if s.get(Job, child_id) is None:
            try:
                params = validate_params(kind, raw, ctx.settings, s)
            except Problem as exc:
                raise UserError(f"step {step}: {exc.title}: {exc.detail}") from exc
            parent = s.get(Job, ctx.job_id)  # a child belongs to whoever submitted the experiment
            jobs.create_job(s, kind, params, parent_id=ctx.job_id, job_id=child_id,
                            created_by=parent.created_by if parent is not None else None)

    while True:
        ctx.check_abort()
        with session_scope(ctx.db_url) as s:
            row = s.get(Job, child_id)
            state, result, error = row.state, dict(row.result or {}), row.error
        if state == "succeeded":
            return result
        if state == "failed":
            raise UserError(f"step {step} ({kind} job {child_id}) failed: {error}")
        if state == "cancelled":
            raise JobAborted("cancelled")
        if state == "queued":
            run_job(ctx.settings, child_id, ctx.handlers)  # here, in this worker (a no-op if another claims it first)
        else:
            time.sleep(1.0)  # another worker runs it


def _step_name(kind: str, params: dict[str, Any]) -> str:
    """A child's name in the report: its kind, with the label for the per-label steps."""
    return f"{kind}_{stored_params(kind, params).label}" if kind in ("generate", "audit") else kind


def _selected_steps(ctx: JobContext, model_ids: dict[str, str]) -> dict[str, int]:
    """Per label, the step whose snapshot each generator is (the last step without select_every)."""
    from app.tables import ModelVersion

    with session_scope(ctx.db_url) as s:
        configs = {label: s.get(ModelVersion, mid).config or {} for label, mid in model_ids.items()}
    return {label: int(c.get("selected_step", c.get("steps", 0))) for label, c in configs.items()}


def handle_experiment(ctx: JobContext) -> Outcome:
    p: ExperimentParams = ctx.p
    total = len(STEPS) - 1
    progress = (lambda step, msg: ctx.progress(AT[step], total, msg, force=True))
    progress("split", "splitting patients")
    parts = _split(ctx)
    # The evaluate step's classifier fields; the experiment's own `overrides` are the GAN's.
    classifier = {"weights": p.weights, "mode": p.mode, "epochs": p.epochs, "input_size": p.input_size,
                  "device": p.device, "overrides": p.classifier_overrides}
    if p.max_per_class:
        classifier["max_per_class"] = p.max_per_class
    progress("domain_classifier", "domain classifier for the audit")
    small_resnet = {"weights": "none", "mode": "finetune", "input_size": 64, "epochs": p.domain_epochs,
                    "overrides": {"batch_size": 64, "seed": p.seed}, "device": p.device}
    domain = _child(ctx, "domain_classifier", "train_classifier", {"dataset_id": parts["classify"], **small_resnet})
    label_filter = {}
    if p.label_filter:
        # trained on the GAN part: the filtered samples know no patient the generators did not
        progress("filter_classifier", "label filter classifier")
        kept_by = _child(ctx, "filter_classifier", "train_classifier", {"dataset_id": parts["gan"], **small_resnet})
        label_filter = {"filter_model_id": kept_by["model_id"], "filter_min_prob": p.label_filter_min_prob}
    progress("train_gan", "train_gan")
    selection = ({"select_every": p.select_every, "select_start": p.select_start, "select_samples": p.select_samples,
                  "select_size": p.select_size, "select_classifier_model_id": domain["model_id"]}
                 if p.select_every else {})
    gan = _child(ctx, "train_gan", "train_gan", {
        "dataset_id": parts["gan"], "label": "both", "preset": p.preset, "steps": p.steps,
        "overrides": p.overrides, "speed": p.speed, "device": p.device,
        "checkpoint_every": max(smallest_every(p.steps, 2), min(500, p.steps // 4)), "sample_every": 0, **selection})
    with session_scope(ctx.db_url) as s:
        cls_counts = s.get(Dataset, parts["classify"]).counts["by_label"]
    synthetic, filtered = {}, {}
    for label in (0, 1):
        progress(f"generate_{label}", f"generate label {label}")
        n = min(int(cls_counts.get(str(label), 0)), ctx.settings.max_generate_n)
        generated = _child(ctx, f"generate_{label}", "generate", {
            "label": label, "n": max(n, 1), "model_id": gan["model_ids"][str(label)], "seed": p.seed,
            "size": p.sample_size, "device": p.device, **label_filter})
        synthetic[label] = generated["dataset_id"]
        if "label_filter" in generated:
            filtered[str(label)] = generated["label_filter"]
    progress("evaluate", "evaluate")
    evaluate = _child(ctx, "evaluate", "evaluate", {
        **classifier, "real_dataset_id": parts["classify"], "synthetic_dataset_ids": [synthetic[0], synthetic[1]],
        "seed": p.seed, "augment_fraction": p.augment_fraction, "reference_dataset_id": parts["gan"]})
    audits = {}
    for label in (0, 1):
        progress(f"audit_{label}", f"audit label {label}")
        audits[label] = _child(ctx, f"audit_{label}", "audit", {
            "synthetic_dataset_id": synthetic[label], "holdout_dataset_id": parts["holdout"],
            "classifier_model_id": domain["model_id"], "max_samples": p.audit_max_samples,
            "seed": p.seed, "device": p.device})
    progress("report", "report")
    with session_scope(ctx.db_url) as s:
        part_info = {part: {"dataset_id": ds, "n": s.get(Dataset, ds).n_patches,
                            "by_label": s.get(Dataset, ds).counts["by_label"],
                            "patients": len(s.get(Dataset, ds).source["patients"])} for part, ds in parts.items()}
        by_id = {stable_id(ctx.job_id, "child", step): step for step in STEPS}
        # named by step where the step is known (two train_classifier children with the label filter)
        child_ids = {(by_id.get(c.id) or _step_name(c.kind, c.params)): c.id for c in jobs.children(s, ctx.job_id)}
    summary = {"parts": part_info, "generators": gan["model_ids"], "synthetic_datasets": synthetic,
               "domain_classifier": domain["model_id"], "table": evaluate["table"],
               "augmentation": evaluate.get("augmentation"),
               "audit": {str(label): audits[label]["summary"] for label in (0, 1)}, "children": child_ids,
               "evaluate_report_artifact": (evaluate.get("artifacts") or {}).get("report_md"),
               "selected_steps": _selected_steps(ctx, gan["model_ids"]),
               **({"label_filter": filtered} if filtered else {}),
               "params": p.model_dump(include={"fraction", "preset", "steps", "epochs", "seed", "select_every",
                                               "select_size", "sample_size", "label_filter"})}
    ctx.add_artifact("report.json", "application/json", json.dumps(summary, indent=1).encode())
    ctx.add_artifact("report.md", "text/markdown", experiment_markdown(summary).encode())
    progress("done", "done")
    metrics = {"table": summary["table"], "augmentation": summary["augmentation"],
               "audit": {k: {"fidelity": v["fidelity"], "flagged_fraction": v["flagged_fraction"]}
                         for k, v in summary["audit"].items()}}
    return Outcome(result=summary, metrics=metrics)
