"""The audit on real patches: numbers, the real floor, and the report's sections."""

import numpy as np
import pytest
import torch

from models.audit import audit_markdown, run_audit, sample_rows
from models.classifier import build_resnet18
from models.feature_extractors import FeatureWeightsMissingError, domain_extractor, inception_extractor
from worker.idc_layout import decode_chunk, scan


@pytest.fixture(scope="module")
def groups(shared_data):
    by_patient: dict[str, list[str]] = {}
    for c in scan(shared_data)[0]:
        if c.label == 1:
            by_patient.setdefault(c.patient, []).append(c.path)
    patients = sorted(by_patient)
    out = []
    for chunk in (patients[0::3], patients[1::3], patients[2::3]):
        paths = [p for pid in chunk for p in by_patient[pid]][:600]
        out.append(decode_chunk(paths)[0])
    return out


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    return domain_extractor(build_resnet18("none", "frozen"), 64, {"model_id": "random-test", "sha256": "0" * 64})


def test_audit_of_real_against_real_sits_at_the_floor_and_copies_are_caught(groups, extractor):
    train, holdout, other = groups
    result = run_audit(other[:300], train, holdout, extractor, max_samples=300, seed=0)
    s = result.summary
    assert s["counts"] == {"synthetic": 300, "train": 600, "holdout": 300}
    assert s["features"]["name"] == "domain" and s["features"]["model_id"] == "random-test"
    assert s["small_sample"] is True
    for key in ("fid", "kid", "precision", "recall", "density", "coverage"):
        assert key in s["fidelity"] and key in s["real_floor"]
    # real patients against real patients: close to the floor, far from a copied set's privacy alarm
    assert s["fidelity"]["fid"] < 3 * s["real_floor"]["fid"] + 1.0
    assert s["memorization"]["flagged_fraction"] <= 0.03

    copied = run_audit(train[:300], train, holdout, extractor, max_samples=300, seed=0)
    assert copied.summary["memorization"]["flagged_fraction"] >= 0.95
    assert copied.summary["memorization"]["closer_to_train_share"] >= 0.95
    report = audit_markdown(copied.summary, context={"generator": "g1"})
    for section in ("## Fidelity", "## Memorization", "real floor", "flagged_fraction", "- generator: g1", "FID is biased"):
        assert section in report


def test_sample_rows_is_seeded_sorted_and_capped():
    a, b = sample_rows(100, 10, 3), sample_rows(100, 10, 3)
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0) and len(a) == 10
    assert np.array_equal(sample_rows(5, 10, 0), np.arange(5))


def test_inception_weights_missing_names_the_file(tmp_path):
    with pytest.raises(FeatureWeightsMissingError, match="inception_v3_google-0cc3c7bd.pth"):
        inception_extractor(None, search=[tmp_path])
    with pytest.raises(FeatureWeightsMissingError, match=str(tmp_path / "nope.pth")):
        inception_extractor(tmp_path / "nope.pth")
