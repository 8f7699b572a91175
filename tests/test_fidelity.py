"""Fidelity metrics on constructed feature sets, where the right answer is known."""

import pytest
import torch

from models import all_metrics
from models.fidelity import density_coverage, fid, kid, kth_neighbour_radius, precision_recall


def gauss(n: int, d: int = 16, seed: int = 0, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) + shift


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise():
    x = gauss(2000)
    assert fid(x, x)["fid"] == pytest.approx(0.0, abs=1e-6)
    noise = gauss(2000, seed=1)
    values = [fid(x, x + s * noise)["fid"] for s in (0.1, 0.3, 0.6, 1.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    result = fid(x, gauss(2000, seed=2))
    assert result["n_real"] == result["n_fake"] == 2000 and result["small_sample"] is True


def test_kid_of_equal_distributions_is_near_zero_and_positive_when_shifted():
    same = kid(gauss(1500), gauss(1500, seed=1), subset_size=500)
    shifted = kid(gauss(1500), gauss(1500, seed=1, shift=1.0), subset_size=500)
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-3
    assert shifted["kid"] > 10 * max(abs(same["kid"]), same["kid_std"])
    assert kid(gauss(50), gauss(40, seed=1))["kid_subset_size"] == 40  # capped by the smaller set


def test_precision_recall_density_coverage_of_identical_sets():
    x = gauss(500)
    pr, dc = precision_recall(x, x), density_coverage(x, x)
    assert pr["precision"] == pr["recall"] == 1.0
    # each real ball holds its centre and its k nearest neighbours: sum of counts = N (k+1)
    assert dc["coverage"] == 1.0 and dc["density"] == pytest.approx(1.0 + 1 / 5, abs=1e-6)


def test_disjoint_far_sets_score_zero():
    a, b = gauss(400), gauss(400, seed=1, shift=100.0)
    pr, dc = precision_recall(a, b), density_coverage(a, b)
    assert pr["precision"] == pr["recall"] == dc["density"] == dc["coverage"] == 0.0


def test_a_subset_is_precise_but_covers_half():
    """Real = two far-apart clusters; fake = one of them exactly: every fake is on the real
    manifold, half of the real manifold is missed."""
    cluster_a, cluster_b = gauss(500), gauss(500, seed=1, shift=50.0)
    real = torch.cat([cluster_a, cluster_b])
    pr, dc = precision_recall(real, cluster_a), density_coverage(real, cluster_a)
    assert pr["precision"] == 1.0 and pr["recall"] == 0.5
    assert dc["coverage"] == 0.5 and dc["density"] == pytest.approx(1.2, abs=1e-6)


def test_kth_radius_is_batched_and_exact():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    torch.testing.assert_close(kth_neighbour_radius(x, 1), torch.tensor([1.0, 1.0, 2.0, 4.0]))
    with pytest.raises(ValueError):
        kth_neighbour_radius(x, 4)


def test_registry_runs_metrics_by_name_and_rejects_unknown_ones():
    assert {"fid", "kid", "precision_recall", "density_coverage"} <= set(all_metrics.names("features"))
    assert all_metrics.names("classification") == ["classification"]
    out = all_metrics.compute(["fid", "density_coverage"], real=gauss(300), fake=gauss(300, seed=1))
    assert set(out) == {"fid", "density_coverage"} and out["fid"]["fid"] > 0
    with pytest.raises(ValueError, match="unknown metric"):
        all_metrics.compute(["nope"], real=gauss(10), fake=gauss(10))
    with pytest.raises(ValueError):
        fid(gauss(10, d=3), gauss(10, d=4))
