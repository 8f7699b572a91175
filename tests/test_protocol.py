"""The four-way protocol: splits, the result's shape, and the Markdown report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.classifier import config_from
from models.augmentation import bootstrap_gain, small_fraction
from models.protocol import AUG_ROWS, PAPER_TABLE3, ROWS, report_markdown, run_four_way, split_indices


def patient_data(seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 40, size=25)
    patients = np.repeat([f"p{i:02d}" for i in range(25)], sizes)
    labels = (rng.random(len(patients)) < 0.3).astype(int)
    return patients, labels


def test_patient_split_puts_no_patient_on_both_sides():
    patients, labels = patient_data()
    train, test = split_indices(patients, labels, test_fraction=0.3, by="patient", seed=4)
    assert not set(patients[train]) & set(patients[test])
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))
    assert 0.2 < len(test) / len(labels) < 0.4
    for label in (0, 1):  # the label mix is roughly kept on the test side
        share = (labels[test] == label).sum() / (labels == label).sum()
        assert 0.15 < share < 0.45
    again = split_indices(patients, labels, 0.3, "patient", seed=4)
    assert np.array_equal(again[1], test)
    with pytest.raises(ValueError):
        split_indices(np.zeros(10), labels[:10], by="patient")  # one patient only


def test_patch_split_is_stratified_and_seeded():
    labels = np.array([0] * 40 + [1] * 20)
    train, test = split_indices(None, labels, 0.3, "patch", seed=1)
    assert (labels[test] == 0).sum() == 12 and (labels[test] == 1).sum() == 6
    assert not set(train) & set(test)
    assert not np.array_equal(split_indices(None, labels, 0.3, "patch", seed=2)[1], test)
    with pytest.raises(ValueError):
        split_indices(None, labels, by="patient")


def tiny_sets():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (24, 50, 50, 3), dtype=np.uint8)  # real patches are 50 px
    real_labels = np.arange(24) % 2
    real_patients = np.repeat(["a", "b", "c", "d", "e", "f"], 4)
    synth = rng.integers(0, 256, (20, 64, 64, 3), dtype=np.uint8)  # synthetic ones 64 px
    synth_labels = np.arange(20) % 2
    return real, real_labels, real_patients, synth, synth_labels


@pytest.mark.parametrize("fast_path", [True, False])
def test_four_way_end_to_end_tiny(fast_path):
    real, real_labels, real_patients, synth, synth_labels = tiny_sets()
    cfg = config_from({"weights": "none", "input_size": 32, "epochs": 1, "batch_size": 8, "fast_path": fast_path})
    progress, models = [], []
    result = run_four_way(real, real_labels, real_patients, synth, synth_labels, cfg, split_by="patient", seed=3,
                          progress_fn=lambda c, t, info: progress.append((c, t)),
                          model_fn=lambda row, model: models.append(row))
    assert list(result["rows"]) == list(ROWS) and models == list(ROWS)
    rows = result["rows"]
    assert rows["TRTR"]["n_train"] + rows["TRTR"]["n_test"] == 24
    assert rows["TSTS"]["n_train"] + rows["TSTS"]["n_test"] == 20 and rows["TSTS"]["n_test"] == 6
    assert (rows["TRTS"]["n_train"], rows["TRTS"]["n_test"]) == (24, 20)
    assert (rows["TSTR"]["n_train"], rows["TSTR"]["n_test"]) == (20, 24)
    trtr = rows["TRTR"]["split"]
    assert trtr["by"] == "patient" and not set(trtr["train"]["patients"]) & set(trtr["test"]["patients"])
    for row in ROWS:
        m = rows[row]["metrics"]
        assert {"accuracy", "precision", "recall", "f1", "auc", "confusion_matrix_percent", "roc"} <= set(m)
        assert sum(map(sum, m["confusion_matrix_percent"])) == pytest.approx(100)
        assert len(rows[row]["history"]) == 1
    assert result["fast_path"] is fast_path and result["split_seed"] == 3 and result["config"]["epochs"] == 1
    assert progress[-1][0] == progress[-1][1]
    json.dumps(result, allow_nan=False)

    report = report_markdown(result)
    for row in ROWS:
        assert f"| {row} |" in report and f"**{row}**" in report
    assert "(0.84)" in report and "(0.76)" in report and "%" in report
    assert PAPER_TABLE3["TSTS"]["accuracy"] == 0.99


@pytest.mark.parametrize("fast_path", [True, False])
def test_augmentation_rows_train_on_a_real_fraction_with_and_without_synthetic(fast_path):
    real, real_labels, real_patients, synth, synth_labels = tiny_sets()
    cfg = config_from({"weights": "none", "input_size": 32, "epochs": 1, "batch_size": 8, "fast_path": fast_path})
    result = run_four_way(real, real_labels, real_patients, synth, synth_labels, cfg, split_by="patient", seed=3,
                          augment_fraction=0.5, bootstrap=200)
    rows = result["rows"]
    assert list(rows) == [*ROWS, *AUG_ROWS]
    small = rows["AUG_REAL"]["n_train"]
    assert small == rows["AUG_MIX"]["n_train"] - 20  # the same real patches plus all 20 synthetic
    assert 0 < small < rows["TRTR"]["n_train"]
    assert rows["AUG_REAL"]["n_test"] == rows["AUG_MIX"]["n_test"] == rows["TRTR"]["n_test"]
    aug = result["augmentation"]
    assert aug["n_test_patients"] == len(rows["TRTR"]["split"]["test"]["patients"]) and aug["resamples"] == 200
    for key in ("accuracy", "balanced_accuracy"):
        g = aug[key]
        assert g["gain"] == pytest.approx(g["augmented"] - g["alone"])
        assert g["ci95"][0] <= g["ci95"][1]
    report = report_markdown(result)
    assert "## Does synthetic data help?" in report and "| AUG_MIX |" in report and "**AUG_REAL**" in report
    json.dumps(result, allow_nan=False)


def test_bootstrap_gain_known_cases():
    labels = np.array([0, 1] * 50)
    patients = np.repeat(np.arange(10), 10)
    perfect = labels.astype(float)
    coin = np.where(np.arange(100) % 4 < 2, 1 - perfect, perfect)  # right on half of each patient's patches
    same = bootstrap_gain(labels, patients, perfect, perfect, resamples=300)
    assert same["accuracy"]["gain"] == 0.0 and same["accuracy"]["ci95"] == [0.0, 0.0]
    better = bootstrap_gain(labels, patients, coin, perfect, resamples=300)
    assert better["accuracy"]["alone"] == 0.5 and better["accuracy"]["augmented"] == 1.0
    assert better["accuracy"]["ci95"][0] > 0.3 and better["balanced_accuracy"]["gain"] == pytest.approx(0.5)
    assert better["n_test_patients"] == 10


def test_small_fraction_is_stratified_and_seeded():
    labels = np.array([0] * 80 + [1] * 20)
    idx = np.arange(100)
    pick = small_fraction(labels, idx, 0.1, seed=1)
    assert (labels[pick] == 0).sum() == 8 and (labels[pick] == 1).sum() == 2
    assert np.array_equal(pick, small_fraction(labels, idx, 0.1, seed=1))


@pytest.mark.parametrize("fast_path", [True, False])
def test_reference_row_trains_on_the_reference_and_tests_as_tstr(fast_path):
    from models.protocol import REFERENCE_ROW

    real, real_labels, real_patients, synth, synth_labels = tiny_sets()
    cfg = config_from({"weights": "none", "input_size": 32, "epochs": 1, "batch_size": 8, "fast_path": fast_path})
    # the synthetic set as its own reference: same patches, same init, same batches -> TSTR exactly
    result = run_four_way(real, real_labels, real_patients, synth, synth_labels, cfg, seed=3,
                          reference=(synth, synth_labels))
    rows = result["rows"]
    assert list(rows) == [*ROWS, REFERENCE_ROW]
    assert (rows[REFERENCE_ROW]["n_train"], rows[REFERENCE_ROW]["n_test"]) == (20, 24)
    for key in ("accuracy", "recall", "auc"):
        assert rows[REFERENCE_ROW]["metrics"][key] == rows["TSTR"]["metrics"][key]
    assert result["n_reference"] == 20
    report = report_markdown(result)
    assert "## What TSTR could reach" in report and f"**{REFERENCE_ROW}**" in report
    # another reference (half the real patches, 50 px) trains on its own count
    other = run_four_way(real, real_labels, real_patients, synth, synth_labels, cfg, seed=3,
                         reference=(real[:12], real_labels[:12]))
    assert other["rows"][REFERENCE_ROW]["n_train"] == 12
    with pytest.raises(ValueError, match="both labels"):
        run_four_way(real, real_labels, real_patients, synth, synth_labels, cfg, seed=3,
                     reference=(real[:12], np.zeros(12, int)))
    json.dumps(result, allow_nan=False)
