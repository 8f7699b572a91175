"""The paper's four-way real/synthetic protocol (Table 3) and its Markdown report.

Rows (train / test):
- TRTR: real 70% / real 30%. The paper split by patch; `split_by="patient"` (the default
  here) keeps every patient on one side, which the paper left open.
- TSTS: synthetic 70% / synthetic 30% (synthetic patches have no patient: split by patch).
- TRTS: all real / all synthetic.
- TSTR: all synthetic / all real.

With `reference` (the real patches the generators were trained on): GRTR, a classifier trained
on those real patches and tested as TSTR is, on all real ones. TSTR trains on what the
generators drew from those patches, so GRTR is what TSTR could be expected to reach: the
distance between the two is the generators' loss, apart from which patients they saw.

Beside them, with `augment_fraction` > 0 (models/augmentation.py): AUG_REAL, a small real
fraction of TRTR's training side alone, and AUG_MIX, the same fraction plus all synthetic
patches, both tested on TRTR's real test patients, and the gain with a bootstrap interval.

Every row trains a fresh classifier from the same config and seed (same initial weights),
then scores the test side with models.classification_metrics. In frozen mode with the fast
path, the backbone features of every real and synthetic image are computed once and shared
by the four rows (the frozen backbone is the same network in every row); only fc is trained
per row, exactly as models.features does for one run.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from models import all_metrics
from models.classification_metrics import AVERAGING, CLASS_NAMES
from models.classifier import ClassifierConfig, build_resnet18
from models.classifier_steps import AbortFn, ProgressFn
from models.classifier_training import train_classifier, uses_fast_path
from models.augmentation import bootstrap_gain, small_fraction
from models.data_view import RowView
from models.features import extract_features, fit_head, head_proba
from models.inference import predict_proba

__all__ = ["split_indices", "run_four_way", "report_markdown", "ROWS", "AUG_ROWS", "REFERENCE_ROW", "PAPER_TABLE3"]

ROWS = ("TRTR", "TSTS", "TRTS", "TSTR")
AUG_ROWS = ("AUG_REAL", "AUG_MIX")
REFERENCE_ROW = "GRTR"
ROW_TITLES = {
    "TRTR": "real (70%) / real (30%)",
    "TSTS": "synthetic (70%) / synthetic (30%)",
    "TRTS": "real (all) / synthetic (all)",
    "TSTR": "synthetic (all) / real (all)",
    "AUG_REAL": "small real fraction / real (30%)",
    "AUG_MIX": "small real fraction + synthetic (all) / real (30%)",
    "GRTR": "the generators' real training patches (all) / real (all)",
}


class _Concat:
    """Several uint8 image arrays seen as one (lazy integer-array indexing), for a training
    set drawn from two sources. Parts of another patch size (64 px synthetic beside 50 px real)
    are resized to the first part's size when read (antialiased bilinear, as `preprocess`
    resizes), so a batch can mix them; the fast path never needs this (it mixes features)."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        first = parts[0]
        self.shape = (int(self.offsets[-1]), *first.shape[1:])
        self.dtype, self.ndim = first.dtype, len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Any) -> np.ndarray:
        idx = np.asarray(idx)
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        for k in np.unique(part):
            where = part == k
            block = np.asarray(self.parts[k][idx[where] - self.offsets[k]])
            if block.shape[1:3] != self.shape[1:3]:
                x = torch.from_numpy(np.ascontiguousarray(block)).permute(0, 3, 1, 2).float()
                x = torch.nn.functional.interpolate(x, size=self.shape[1:3], mode="bilinear", align_corners=False,
                                                    antialias=True)
                block = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            out[where] = block
        return out
# Aytar & Gunduc, Table 3 (patch-level 70:30 splits; no AUC in the table).
PAPER_TABLE3 = {
    "TRTR": {"accuracy": 0.84, "precision": 0.84, "recall": 0.84, "f1": 0.84},
    "TSTS": {"accuracy": 0.99, "precision": 0.98, "recall": 0.98, "f1": 0.98},
    "TRTS": {"accuracy": 0.81, "precision": 0.82, "recall": 0.78, "f1": 0.78},
    "TSTR": {"accuracy": 0.76, "precision": 0.77, "recall": 0.76, "f1": 0.76},
}


def split_indices(patients: Any, labels: Any, test_fraction: float = 0.3, by: str = "patient",
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx), sorted int64, with about `test_fraction` of the samples in test.

    by="patch": the paper's random per-patch split, stratified by label (each label keeps its
    ratio). by="patient": whole patients go to one side. Patients are visited in a seeded
    random order and one joins the test side when that brings the test side's per-label
    counts closer to test_fraction of each label's total, so the label mix is roughly kept.
    `patients` may be None for by="patch".
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if n < 2:
        raise ValueError("need at least 2 samples to split")
    rng = np.random.default_rng(seed)
    test = np.zeros(n, dtype=bool)
    if by == "patch":
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            test[members[:int(round(test_fraction * len(members)))]] = True
        if not test.any():
            test[rng.integers(n)] = True
        if test.all():
            test[rng.integers(n)] = False
    elif by == "patient":
        if patients is None:
            raise ValueError("split by patient needs the patients array")
        patients = np.asarray(patients)
        if len(patients) != n:
            raise ValueError(f"{len(patients)} patients for {n} labels")
        uniq, inverse = np.unique(patients, return_inverse=True)
        if len(uniq) < 2:
            raise ValueError("a patient split needs at least 2 patients")
        classes, label_idx = np.unique(labels, return_inverse=True)
        counts = np.zeros((len(uniq), len(classes)), dtype=np.int64)  # patches per (patient, label)
        np.add.at(counts, (inverse, label_idx), 1)
        target = test_fraction * counts.sum(axis=0)
        chosen = np.zeros(len(uniq), dtype=bool)
        current = np.zeros(len(classes))
        for p in rng.permutation(len(uniq)):
            if np.abs(current + counts[p] - target).sum() < np.abs(current - target).sum():
                chosen[p] = True
                current += counts[p]
        if not chosen.any():  # every patient is bigger than the target: take the smallest
            chosen[np.argmin(counts.sum(axis=1))] = True
        if chosen.all():
            chosen[np.argmax(counts.sum(axis=1))] = False
        test = chosen[inverse]
    else:
        raise ValueError(f"by must be 'patient' or 'patch', got {by!r}")
    return np.flatnonzero(~test).astype(np.int64), np.flatnonzero(test).astype(np.int64)


def _side_info(labels: np.ndarray, idx: np.ndarray, patients: np.ndarray | None) -> dict[str, Any]:
    info: dict[str, Any] = {"n": int(len(idx)), "by_label": {str(int(c)): int((labels[idx] == c).sum()) for c in (0, 1)}}
    if patients is not None:
        info["patients"] = sorted(str(p) for p in np.unique(patients[idx]))
    return info


def run_four_way(
    real_images: Any, real_labels: Any, real_patients: Any, synth_images: Any, synth_labels: Any,
    config: ClassifierConfig, split_by: str = "patient", seed: int = 0, test_fraction: float = 0.3,
    progress_fn: ProgressFn | None = None, abort_fn: AbortFn | None = None, device: str | torch.device = "cpu",
    model_fn: Callable[[str, nn.Module], None] | None = None, augment_fraction: float = 0.0,
    bootstrap: int = 1000, reference: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """The four rows of Table 3. Images are uint8 (N, H, W, 3) arrays or memmaps (real 50 px and
    synthetic 64 px are both resized to config.input_size by the shared preprocess).

    `seed` drives the 70:30 splits; config.seed the classifier init and batch order (the same
    for every row). progress_fn(current, total, info) counts feature batches (fast path) and
    epochs of all rows; abort_fn() raises TrainingAborted. model_fn(row, model), if given,
    receives each trained classifier (e.g. to checkpoint it). Returns a JSON-ready dict (see
    the end of this function) whose "rows" maps TRTR, TSTS, TRTS, TSTR (and AUG_REAL, AUG_MIX,
    GRTR when asked for) to {train, test, n_train, n_test, split, metrics, history}.
    `reference` is (images, labels) of the real patches the generators were trained on (GRTR).
    """
    started = time.perf_counter()
    real_labels = np.asarray(real_labels).astype(np.int64)
    synth_labels = np.asarray(synth_labels).astype(np.int64)
    patients = None if real_patients is None else np.asarray(real_patients)
    if len(real_images) != len(real_labels) or len(synth_images) != len(synth_labels):
        raise ValueError("one label per image, for real and synthetic")
    real_tr, real_te = split_indices(patients, real_labels, test_fraction, split_by, seed)
    synth_tr, synth_te = split_indices(None, synth_labels, test_fraction, "patch", seed)
    all_real, all_synth = np.arange(len(real_labels)), np.arange(len(synth_labels))
    plan = {  # row: ([(train source, train idx), ...], test source, test idx)
        "TRTR": ([("real", real_tr)], "real", real_te),
        "TSTS": ([("synth", synth_tr)], "synth", synth_te),
        "TRTS": ([("real", all_real)], "synth", all_synth),
        "TSTR": ([("synth", all_synth)], "real", all_real),
    }
    if augment_fraction > 0:
        small = small_fraction(real_labels, real_tr, augment_fraction, seed)
        plan["AUG_REAL"] = ([("real", small)], "real", real_te)
        plan["AUG_MIX"] = ([("real", small), ("synth", all_synth)], "real", real_te)
    images = {"real": real_images, "synth": synth_images}
    labels = {"real": real_labels, "synth": synth_labels}
    if reference is not None:
        images["ref"], labels["ref"] = reference[0], np.asarray(reference[1]).astype(np.int64)
        if len(images["ref"]) != len(labels["ref"]) or len(np.unique(labels["ref"])) < 2:
            raise ValueError("the reference needs one label per image and both labels")
        plan[REFERENCE_ROW] = ([("ref", np.arange(len(labels["ref"])))], "real", all_real)
    row_names = list(plan)
    fast = uses_fast_path(config)
    bs = config.eval_batch_size
    feature_steps = sum(-(-len(labels[src]) // bs) for src in labels) if fast else 0
    total = feature_steps + len(row_names) * config.epochs
    done = {"steps": 0}

    def feature_progress(*_: Any) -> None:
        done["steps"] += 1
        if progress_fn is not None:
            progress_fn(done["steps"], total, {"stage": "features"})

    def row_progress(row: str, row_index: int) -> ProgressFn:
        def report(epoch: int, epochs: int, info: dict) -> None:
            if progress_fn is not None and info.get("stage") == "train":
                progress_fn(feature_steps + row_index * config.epochs + epoch, total, {**info, "row": row})
        return report

    timing: dict[str, float] = {}
    if fast:
        t0 = time.perf_counter()
        torch.manual_seed(config.seed)  # the same init train_classifier gives every row
        base = build_resnet18(config.weights, config.mode, config.num_classes).to(device)
        feats = {src: extract_features(base, images[src], config.input_size, bs, device, feature_progress, abort_fn)
                 for src in images}
        timing["features"] = time.perf_counter() - t0

    rows: dict[str, Any] = {}
    test_probs: dict[str, np.ndarray] = {}
    for i, row in enumerate(row_names):
        t0 = time.perf_counter()
        train_parts, test_src, test_idx = plan[row]
        train_labels = np.concatenate([labels[src][idx] for src, idx in train_parts])
        if fast:
            model = copy.deepcopy(base)
            train_feats = torch.cat([feats[src][torch.as_tensor(idx, device=device)] for src, idx in train_parts])
            history = fit_head(model, train_feats, train_labels, config, row_progress(row, i), abort_fn)
            probs = head_proba(model, feats[test_src][torch.as_tensor(test_idx, device=device)])
        else:
            train_images = (RowView(images[train_parts[0][0]], train_parts[0][1]) if len(train_parts) == 1 else
                            _Concat([RowView(images[src], idx) for src, idx in train_parts]))
            model, history = train_classifier(config, train_images, train_labels, row_progress(row, i), abort_fn,
                                              device=device)
            probs = predict_proba(model, RowView(images[test_src], test_idx), config.input_size, bs, device)
        test_probs[row] = np.asarray(probs)
        metrics = all_metrics.compute(["classification"], labels=labels[test_src][test_idx],
                                          probs=probs)["classification"]
        src_patients = {"real": patients, "synth": None, "ref": None}
        train_src = "+".join(src for src, _ in train_parts)
        first_src, first_idx = train_parts[0]
        rows[row] = {
            "title": ROW_TITLES[row],
            "train": train_src, "test": test_src,
            "n_train": int(len(train_labels)), "n_test": int(len(test_idx)),
            "split": {
                "by": (split_by if first_src == "real" else "patch") if first_src == test_src else "none (all / all)",
                "seed": seed if first_src == test_src else None,
                "train": _side_info(labels[first_src], first_idx, src_patients[first_src]),
                "test": _side_info(labels[test_src], test_idx, src_patients[test_src]),
            },
            "metrics": metrics,
            "history": history,
        }
        if model_fn is not None:
            model_fn(row, model)
        timing[row] = time.perf_counter() - t0
    augmentation = None
    if augment_fraction > 0:
        test_patients = patients[real_te] if patients is not None else real_te  # patch split: each patch alone
        augmentation = {"fraction": augment_fraction, "n_real_small": int(len(plan["AUG_REAL"][0][0][1])),
                        **bootstrap_gain(real_labels[real_te], test_patients, test_probs["AUG_REAL"],
                                         test_probs["AUG_MIX"], resamples=bootstrap, seed=seed)}
    timing["total"] = time.perf_counter() - started
    return {
        "protocol": "four_way",
        "rows": rows,
        "split_by": split_by,
        "synthetic_split_by": "patch",
        "test_fraction": test_fraction,
        "split_seed": seed,
        "train_seed": config.seed,
        "config": config.to_dict(),
        "fast_path": fast,
        "device": str(device),
        "n_real": int(len(real_labels)),
        "n_synthetic": int(len(synth_labels)),
        "n_reference": int(len(labels["ref"])) if "ref" in labels else None,
        "averaging": AVERAGING,
        "paper_table3": PAPER_TABLE3,
        "augmentation": augmentation,
        "timing_s": timing,
    }


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def report_markdown(result: dict[str, Any]) -> str:
    """The four-row table beside the paper's Table 3, then each row's confusion matrix in
    percent of all test samples (as the paper's Tables 4-7)."""
    cfg = result["config"]
    lines = [
        "# Four-way real/synthetic protocol",
        "",
        f"Real patches: {result['n_real']}, synthetic: {result['n_synthetic']}. "
        f"Real 70:30 split by **{result['split_by']}** (test fraction {result['test_fraction']}, seed "
        f"{result['split_seed']}); synthetic split by patch. Classifier: ResNet18, weights `{cfg['weights']}`, "
        f"{cfg['mode']}, {cfg['input_size']} px, Adam lr {cfg['lr']}, batch {cfg['batch_size']}, "
        f"{cfg['epochs']} epochs, seed {result['train_seed']}.",
        "",
        f"Precision, recall and F1 are {result['averaging']} averages over IDC- and IDC+. "
        "Paper values (Aytar & Gunduc, Table 3, patch split) in parentheses.",
        "",
        "| row | train / test | n train | n test | accuracy | precision | recall | F1 | AUC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        r = result["rows"][row]
        m, paper = r["metrics"], PAPER_TABLE3[row]
        cells = [f"{_fmt(m[k])} ({paper[k]:.2f})" for k in ("accuracy", "precision", "recall", "f1")]
        lines.append(f"| {row} | {r['title']} | {r['n_train']} | {r['n_test']} | " + " | ".join(cells)
                     + f" | {_fmt(m['auc'])} |")
    ref = result["rows"].get(REFERENCE_ROW)
    if ref:
        m = ref["metrics"]
        lines += ["", "## What TSTR could reach", "",
                  f"{REFERENCE_ROW}: a classifier on the real patches the generators were trained on ({ref['n_train']}), "
                  "tested as TSTR is on every real patch: accuracy "
                  f"{_fmt(m['accuracy'])}, balanced accuracy {_fmt(m['recall'])}, AUC {_fmt(m['auc'])} (TSTR: "
                  f"{_fmt(result['rows']['TSTR']['metrics']['accuracy'])}, "
                  f"{_fmt(result['rows']['TSTR']['metrics']['recall'])}, {_fmt(result['rows']['TSTR']['metrics']['auc'])}). "
                  "Synthetic patches as good as their source for this classifier would score the same."]
    aug = result.get("augmentation")
    if aug:
        lines += ["", "## Does synthetic data help?", "",
                  f"A classifier on {aug['fraction']:.0%} of TRTR's real training patches ({aug['n_real_small']}) alone, "
                  "and on the same patches plus every synthetic patch, both tested on TRTR's real test patients. "
                  f"Gain with a 95% interval from a paired bootstrap over the {aug['n_test_patients']} test patients "
                  f"({aug['resamples']} resamples).", "",
                  "| row | train / test | n train | n test | accuracy | precision | recall | F1 | AUC |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in AUG_ROWS:
            r = result["rows"][row]
            m = r["metrics"]
            lines.append(f"| {row} | {r['title']} | {r['n_train']} | {r['n_test']} | "
                         + " | ".join(_fmt(m[k]) for k in ("accuracy", "precision", "recall", "f1", "auc")) + " |")
        lines += ["", "| measure | real fraction alone | + synthetic | gain | 95% interval |", "|---|---|---|---|---|"]
        for key in ("accuracy", "balanced_accuracy"):
            g = aug[key]
            lines.append(f"| {key.replace('_', ' ')} | {g['alone']:.3f} | {g['augmented']:.3f} | {g['gain']:+.3f} | "
                         f"[{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}] |")
    lines += ["", "## Confusion matrices (percent of all test samples; rows true, columns predicted)", ""]
    for row in [r for r in (*ROWS, *AUG_ROWS, REFERENCE_ROW) if r in result["rows"]]:
        cm = result["rows"][row]["metrics"]["confusion_matrix_percent"]
        lines += [f"**{row}** ({result['rows'][row]['title']})", "",
                  f"| true \\ predicted | {CLASS_NAMES[0]} | {CLASS_NAMES[1]} |", "|---|---|---|"]
        for name, values in zip(CLASS_NAMES, cm):
            lines.append(f"| {name} | {values[0]:.1f}% | {values[1]:.1f}% |")
        lines.append("")
    return "\n".join(lines)
