"""Binary classification metrics (IDC- = 0, IDC+ = 1) as plain JSON-ready dicts, via torchmetrics.

Averaging: precision, recall and F1 are *macro* averages over the two classes (unweighted
mean of the per-class values), and the per-class values are returned beside them. Why macro:
the paper's Table 3 is consistent with it but not with support-weighted averaging, because
weighted recall always equals accuracy, while its real/synthetic row has accuracy 0.81 and
recall 0.78. Class-1-only ("binary") scores are the `*_per_class[1]` entries.

Confusion matrices follow sklearn/torchmetrics layout: rows = true class, columns = predicted
class, [[TN, FP], [FN, TP]]. `confusion_matrix_percent` is in percent of *all* test samples
(the four cells sum to 100), as the paper's Tables 4-7 report it;
`confusion_matrix_row_percent` is in percent of each true class (rows sum to 100).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_auroc, binary_roc, multiclass_accuracy, multiclass_confusion_matrix, multiclass_f1_score,
    multiclass_precision, multiclass_recall,
)

from models.metric_registry import register

__all__ = ["classification_metrics", "AVERAGING", "CLASS_NAMES"]

AVERAGING = "macro"
CLASS_NAMES = ("IDC-", "IDC+")


def _floats(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.flatten().tolist()]


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def classification_metrics(labels: Any, probs: Any = None, preds: Any = None, threshold: float = 0.5,
                           ) -> dict[str, Any]:
    """Metrics of binary predictions against `labels` (ints 0/1).

    Give `probs` (P(class 1), floats) for everything incl. ROC/AUC (preds = probs >= threshold),
    or `preds` (0/1) alone for the threshold metrics only (auc and roc are then None). AUC and
    the ROC curve are None too when `labels` hold one class only (undefined).
    Returns: n, support [n0, n1], threshold, averaging, accuracy, precision, recall, f1 (macro),
    precision/recall/f1_per_class [class 0, class 1], auc, confusion_matrix (counts),
    confusion_matrix_percent (of all samples), confusion_matrix_row_percent, roc {fpr, tpr,
    thresholds} (thresholds decreasing; the first is torchmetrics' 1.0 start point).
    """
    target = torch.as_tensor(np.asarray(labels), dtype=torch.long).flatten()
    if probs is None and preds is None:
        raise ValueError("give probs or preds")
    scores = None
    if probs is not None:
        scores = torch.as_tensor(np.asarray(probs, dtype=np.float64)).flatten()
        if len(scores) != len(target):
            raise ValueError(f"{len(scores)} probabilities for {len(target)} labels")
        if preds is None:
            preds = (scores >= threshold).long()
    pred = torch.as_tensor(np.asarray(preds), dtype=torch.long).flatten()
    if len(pred) != len(target):
        raise ValueError(f"{len(pred)} predictions for {len(target)} labels")
    if len(target) == 0:
        raise ValueError("no samples")
    if not (((target == 0) | (target == 1)).all() and ((pred == 0) | (pred == 1)).all()):
        raise ValueError("labels and predictions must be 0 or 1")

    k = {"num_classes": 2}
    cm = multiclass_confusion_matrix(pred, target, **k)
    n = len(target)
    row_totals = cm.sum(dim=1, keepdim=True).clamp(min=1)
    out: dict[str, Any] = {
        "n": n,
        "support": _floats(cm.sum(dim=1)),
        "threshold": float(threshold) if scores is not None else None,
        "averaging": AVERAGING,
        "class_names": list(CLASS_NAMES),
        "accuracy": float(multiclass_accuracy(pred, target, average="micro", **k)),
        "precision": float(multiclass_precision(pred, target, average=AVERAGING, **k)),
        "recall": float(multiclass_recall(pred, target, average=AVERAGING, **k)),
        "f1": float(multiclass_f1_score(pred, target, average=AVERAGING, **k)),
        "precision_per_class": _floats(multiclass_precision(pred, target, average="none", **k)),
        "recall_per_class": _floats(multiclass_recall(pred, target, average="none", **k)),
        "f1_per_class": _floats(multiclass_f1_score(pred, target, average="none", **k)),
        "confusion_matrix": [[int(v) for v in row] for row in cm.tolist()],
        "confusion_matrix_percent": [[100.0 * float(v) / n for v in row] for row in cm.tolist()],
        "confusion_matrix_row_percent": (100.0 * cm.double() / row_totals).tolist(),
        "auc": None,
        "roc": None,
    }
    out["support"] = [int(v) for v in out["support"]]
    if scores is not None and len(torch.unique(target)) == 2:
        out["auc"] = _finite(float(binary_auroc(scores, target)))
        fpr, tpr, thresholds = binary_roc(scores, target)
        out["roc"] = {"fpr": _floats(fpr), "tpr": _floats(tpr), "thresholds": [_finite(v) for v in _floats(thresholds)]}
    return out


@register("classification", "classification",
          "Accuracy, macro precision/recall/F1, per-class values, AUC, ROC and confusion matrices (torchmetrics)")
def _registered(labels: Any, probs: Any = None, preds: Any = None, threshold: float = 0.5, **_: Any) -> dict[str, Any]:
    return classification_metrics(labels, probs=probs, preds=preds, threshold=threshold)
