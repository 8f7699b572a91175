"""classification_metrics against numbers worked out by hand on a fixed 10-sample example."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.classification_metrics import classification_metrics

# 4 negatives, 6 positives. Threshold 0.5 gives
#   true 0: predicted 0,0,0,1  -> TN 3, FP 1
#   true 1: predicted 1,1,1,1,0,0 -> TP 4, FN 2
LABELS = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
PROBS = [0.1, 0.2, 0.3, 0.7, 0.9, 0.8, 0.6, 0.55, 0.4, 0.35]


def test_matches_the_hand_computed_confusion_matrix():
    m = classification_metrics(LABELS, probs=PROBS)
    assert m["confusion_matrix"] == [[3, 1], [2, 4]]
    assert np.allclose(m["confusion_matrix_percent"], [[30.0, 10.0], [20.0, 40.0]])  # of all 10
    assert np.allclose(m["confusion_matrix_row_percent"], [[75.0, 25.0], [100 / 3, 200 / 3]])
    assert m["n"] == 10 and m["support"] == [4, 6]
    assert m["accuracy"] == pytest.approx(7 / 10)
    # class 0: precision TN/(TN+FN) = 3/5, recall TN/(TN+FP) = 3/4; class 1: 4/5 and 4/6
    assert m["precision_per_class"] == pytest.approx([0.6, 0.8])
    assert m["recall_per_class"] == pytest.approx([0.75, 4 / 6])
    f1_0 = 2 * 0.6 * 0.75 / (0.6 + 0.75)  # 0.6667
    f1_1 = 2 * 0.8 * (4 / 6) / (0.8 + 4 / 6)  # 0.7273
    assert m["f1_per_class"] == pytest.approx([f1_0, f1_1])
    assert m["averaging"] == "macro"
    assert m["precision"] == pytest.approx(0.7)
    assert m["recall"] == pytest.approx((0.75 + 4 / 6) / 2)
    assert m["f1"] == pytest.approx((f1_0 + f1_1) / 2)
    # AUC: of the 6*4 (positive, negative) pairs the positive scores higher in 4+4+3+3+3+3 = 20
    assert m["auc"] == pytest.approx(20 / 24)
    roc = m["roc"]
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"])
    assert roc["fpr"][0] == 0 and roc["tpr"][0] == 0 and roc["fpr"][-1] == 1 and roc["tpr"][-1] == 1
    json.dumps(m, allow_nan=False)  # plain JSON


def test_from_predicted_labels_only():
    preds = (np.array(PROBS) >= 0.5).astype(int)
    m = classification_metrics(LABELS, preds=preds)
    assert m["confusion_matrix"] == [[3, 1], [2, 4]] and m["auc"] is None and m["roc"] is None


def test_single_class_has_no_auc_and_bad_input_raises():
    m = classification_metrics([1, 1, 1], probs=[0.9, 0.2, 0.6])
    assert m["auc"] is None and m["confusion_matrix"] == [[0, 0], [1, 2]]
    json.dumps(m, allow_nan=False)
    with pytest.raises(ValueError):
        classification_metrics([0, 1], probs=[0.5])
    with pytest.raises(ValueError):
        classification_metrics([0, 2], preds=[0, 1])
