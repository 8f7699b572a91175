"""The train_classifier and evaluate jobs (ResNet18; the paper's four-way protocol)."""

from __future__ import annotations

import json

import numpy as np

from app.db import session_scope
from app.job_kinds import ClassifierParams, EvaluateParams, TrainClassifierParams, is_model_ref
from app.storage import Storage, StorageError
from app.packed import ConcatView, LabelView, open_patches, read_index
from app.tables import Dataset, ModelVersion
from models.classification_metrics import classification_metrics
from models.classifier import ClassifierConfig, WeightsUnavailableError, classifier_state, config_from
from models.classifier_steps import TrainingAborted
from models.classifier_training import train_classifier
from models.inference import predict_proba
from models.protocol import report_markdown, run_four_way, split_indices
from worker.context import JobAborted, JobContext, Outcome, UserError, stable_id
from worker.figures import confusion_matrix_png, loss_curves_png, roc_curve_png
from worker.models_store import pick_device, put_state


def _load(ctx: JobContext, dataset_ids: list[str]) -> tuple[object, np.ndarray, np.ndarray]:
    """(images view, labels, patients) of one or more datasets of one patch size."""
    parts, labels, patients = [], [], []
    with session_scope(ctx.db_url) as s:
        folders = []
        for dataset_id in dataset_ids:
            dataset = s.get(Dataset, dataset_id)
            if dataset is None:
                raise UserError(f"dataset {dataset_id} no longer exists")
            folders.append(dataset.key)
    folders = [ctx.storage.local_tree(key) for key in folders]
    for folder in folders:
        parts.append(open_patches(folder))
        index = read_index(folder)
        labels.append(index["label"].astype(np.int64))
        patients.append(index["patient"])
    try:
        images = parts[0] if len(parts) == 1 else ConcatView(parts)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    return images, np.concatenate(labels), np.concatenate(patients)


def _cap_per_class(labels: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """At most `cap` patches per class, drawn with a recorded seed (CPU-scale runs)."""
    rows = np.arange(len(labels))
    if not cap:
        return rows
    rng = np.random.default_rng(seed)
    keep = [np.sort(rng.permutation(rows[labels == c])[:cap]) for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def _config(ctx: JobContext, p: ClassifierParams) -> tuple[ClassifierConfig, ClassifierConfig]:
    """(the config to train with, the config to record). `weights` given as a classifier model
    id is trained from that model's file (a local copy from the store); the record says
    `model:<id>`, never the copy's path."""
    settings = p.classifier_settings()
    recorded = dict(settings)
    if is_model_ref(p.weights):
        with session_scope(ctx.db_url) as s:
            row = s.get(ModelVersion, p.weights)
            key = row.key if row is not None and row.kind == "classifier" else None
        if key is None:
            raise UserError(f"classifier model {p.weights} no longer exists")
        try:
            settings["weights"] = str(ctx.storage.local_path(key))
        except StorageError as exc:
            raise UserError(f"the file of classifier model {p.weights} is gone") from exc
        recorded["weights"] = f"model:{p.weights}"
    try:
        return config_from(settings), config_from(recorded)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from exc


def _progress(ctx: JobContext, what: str):  # noqa: ANN202
    def report(current: int, total: int, info: dict) -> None:
        row = f" {info['row']}" if "row" in info else ""
        ctx.progress(current, total, f"{what}{row} {info.get('stage', '')}".strip())
    return report


def handle_train_classifier(ctx: JobContext) -> Outcome:
    p: TrainClassifierParams = ctx.p
    config, recorded = _config(ctx, p)
    device = pick_device(p.device)
    images, labels, patients = _load(ctx, [p.dataset_id])
    rows = _cap_per_class(labels, p.max_per_class, p.split_seed)
    train_idx, val_idx = split_indices(patients[rows], labels[rows], p.val_fraction, p.split_by, p.split_seed)
    train_rows, val_rows = rows[train_idx], rows[val_idx]
    try:
        model, history = train_classifier(config, LabelView(images, train_rows), labels[train_rows],
                                          progress_fn=_progress(ctx, "training"), abort_fn=ctx.should_abort,
                                          device=device)
    except TrainingAborted as exc:
        raise JobAborted("cancelled") from exc
    except (WeightsUnavailableError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    probs = predict_proba(model, LabelView(images, val_rows), config.input_size, config.eval_batch_size, device)
    val = classification_metrics(labels[val_rows], probs=probs)
    model_id = stable_id(ctx.job_id, "classifier")
    key = Storage.model_key(model_id)
    put_state(ctx.storage, key, classifier_state(model, recorded))
    ctx.add_artifact("training_curves.png", "image/png",
                     loss_curves_png(history, keys=("train_loss", "train_acc"), title="ResNet18 training"))
    if val["roc"] is not None:  # None when the validation split holds one class only
        ctx.add_artifact("val_roc.png", "image/png",
                         roc_curve_png(val["roc"]["fpr"], val["roc"]["tpr"], val["auc"], "Validation ROC"))
    summary = {k: val[k] for k in ("accuracy", "precision", "recall", "f1", "auc") if k in val}
    metrics = {"val": summary, "n_train": int(len(train_rows)), "n_val": int(len(val_rows)),
               "split_by": p.split_by, "final_train_loss": history[-1]["train_loss"] if history else None}
    # numbered (and never auto-promoted) by app.model_registry when the success is recorded
    row = ModelVersion(id=model_id, kind="classifier", label=None, job_id=ctx.job_id, key=key,
                       config={**recorded.to_dict(), "dataset_id": p.dataset_id}, metrics=metrics)
    return Outcome(result={"model_id": model_id, "val": summary}, metrics=metrics, new_models=[row])


def handle_evaluate(ctx: JobContext) -> Outcome:
    p: EvaluateParams = ctx.p
    config, recorded = _config(ctx, p)
    device = pick_device(p.device)
    seed = p.seed
    real, real_labels, real_patients = _load(ctx, [p.real_dataset_id])
    synth, synth_labels, _ = _load(ctx, p.synthetic_dataset_ids)
    if len(np.unique(synth_labels)) < 2:
        raise UserError("the synthetic datasets hold one label only; the protocol needs IDC- and IDC+")
    r_rows = _cap_per_class(real_labels, p.max_per_class, seed)
    s_rows = _cap_per_class(synth_labels, p.max_per_class, seed)
    reference = None
    if p.reference_dataset_id is not None:
        ref, ref_labels, _ = _load(ctx, [p.reference_dataset_id])
        g_rows = _cap_per_class(ref_labels, p.max_per_class, seed)
        reference = (LabelView(ref, g_rows), ref_labels[g_rows])
    try:
        result = run_four_way(LabelView(real, r_rows), real_labels[r_rows], real_patients[r_rows],
                              LabelView(synth, s_rows), synth_labels[s_rows], config,
                              split_by=p.split_by, seed=seed,
                              test_fraction=p.test_fraction, progress_fn=_progress(ctx, "protocol"),
                              augment_fraction=p.augment_fraction, bootstrap=p.bootstrap,
                              abort_fn=ctx.should_abort, device=device, reference=reference)
    except TrainingAborted as exc:
        raise JobAborted("cancelled") from exc
    except (WeightsUnavailableError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    result["config"] = recorded.to_dict()  # the record names a model, not a cache path
    result["datasets"] = {"real": p.real_dataset_id, "synthetic": p.synthetic_dataset_ids,
                          "reference": p.reference_dataset_id}
    result["max_per_class"] = p.max_per_class
    artifacts = {}
    for name, row in result["rows"].items():
        m = row["metrics"]
        if m["roc"] is not None:
            artifacts[f"roc_{name}"] = ctx.add_artifact(
                f"roc_{name}.png", "image/png", roc_curve_png(m["roc"]["fpr"], m["roc"]["tpr"], m["auc"], f"ROC, {row['title']}"))
        artifacts[f"confusion_{name}"] = ctx.add_artifact(
            f"confusion_{name}.png", "image/png", confusion_matrix_png(m["confusion_matrix_percent"], f"{name} (% of test set)"))
    artifacts["report_json"] = ctx.add_artifact("report.json", "application/json", json.dumps(result, indent=1).encode())
    artifacts["report_md"] = ctx.add_artifact("report.md", "text/markdown", report_markdown(result).encode())
    table = {name: {k: row["metrics"].get(k) for k in ("accuracy", "precision", "recall", "f1", "auc")}
             for name, row in result["rows"].items()}
    out = {"table": table, "artifacts": artifacts, "split_by": result["split_by"], "seed": seed}
    if result.get("augmentation"):
        out["augmentation"] = {k: result["augmentation"][k] for k in ("accuracy", "balanced_accuracy", "fraction",
                                                                       "n_test_patients")}
    return Outcome(result=out, metrics={**table, "augmentation": out.get("augmentation")})
