"""Memorization: planted copies of training patches are found, independent real patients are not."""

import numpy as np
import pytest
import torch

from models.memorization import binomial_sf, dihedral_nearest, memorization, pixel_vectors, tissue_fraction
from worker.idc_layout import decode_chunk, scan


@pytest.fixture(scope="module")
def three_patient_groups(shared_data):
    """uint8 patches of three disjoint patient groups of the shared data."""
    by_patient: dict[str, list[str]] = {}
    for c in scan(shared_data)[0]:
        by_patient.setdefault(c.patient, []).append(c.path)
    patients = [sorted(by_patient)[i] for i in np.random.default_rng(5).permutation(len(by_patient))]
    groups = []
    for chunk in (patients[0:34], patients[34:68], patients[68:102]):
        paths = [p for pid in chunk for p in by_patient[pid]]
        paths = [paths[i] for i in np.random.default_rng(0).permutation(len(paths))[:1500]]
        groups.append(decode_chunk(paths)[0])
    return groups


def colour_features(u8: np.ndarray) -> torch.Tensor:
    """A cheap stand-in feature: 8x8 colour layout (the audit uses a trained ResNet18)."""
    return pixel_vectors(u8, 8)


def test_planted_and_flipped_copies_are_flagged_and_real_patients_are_not(three_patient_groups):
    train, holdout, independent = three_patient_groups
    rng = np.random.default_rng(1)
    tissue = np.flatnonzero(tissue_fraction(train).numpy() >= 0.25)
    picks = rng.choice(tissue, 60, replace=False)
    copies = train[picks[:30]]
    flipped = np.stack([np.rot90(train[i], k=1 + j % 3)[:, ::-1 if j % 2 else 1] for j, i in enumerate(picks[30:])])
    synthetic = np.concatenate([independent[:1000], copies, np.ascontiguousarray(flipped)])
    result = memorization(colour_features(synthetic), colour_features(train), colour_features(holdout),
                          synthetic, train, holdout)
    flagged = result.flagged.numpy()
    planted = flagged[1000:]
    assert planted.mean() >= 0.95, planted
    assert flagged[:1000].mean() <= 0.02
    s = result.summary
    assert s["spaces"]["pixels"]["flagged"] >= 57 and s["binomial_p_value"] < 1e-6
    assert sum(s["flagged_by_symmetry"].values()) == s["spaces"]["pixels"]["flagged"]
    assert s["flagged_by_symmetry"]["0"] >= 28  # the exact copies need no symmetry

    clean = memorization(colour_features(independent), colour_features(train), colour_features(holdout),
                         independent, train, holdout)
    # Real patients the generator never saw: at most 2% flagged. (Not exactly 1%: another patient
    # group is a little closer to the training patients than the holdout group is; the binomial
    # test is sensitive to that at n = 1,500, so the report shows the fraction beside it.)
    assert clean.summary["flagged_fraction"] <= 0.02
    assert 0.3 < clean.summary["closer_to_train_share"] < 0.7


def test_dihedral_search_finds_every_symmetry():
    g = np.random.default_rng(0)
    ref = g.integers(0, 256, (20, 50, 50, 3), dtype=np.uint8)
    queries = np.stack([np.rot90(ref[t], k=t % 4)[:, ::-1] if t >= 4 else np.rot90(ref[t], k=t % 4) for t in range(8)])
    d, idx, sym = dihedral_nearest(np.ascontiguousarray(queries), pixel_vectors(ref, 16), 16)
    assert idx.tolist() == list(range(8)) and float(d.max()) < 1e-4
    assert len(set(sym.tolist())) == 8


def test_tissue_fraction_counts_white_background():
    patch = np.full((2, 10, 10, 3), 240, np.uint8)
    patch[1, :5] = (150, 60, 140)  # H&E purple on half of it
    torch.testing.assert_close(tissue_fraction(patch), torch.tensor([0.0, 0.5]))


def test_binomial_tail_is_exact():
    assert binomial_sf(0, 10, 0.1) == 1.0
    assert binomial_sf(11, 10, 0.1) == 0.0
    assert binomial_sf(10, 10, 0.5) == pytest.approx(0.5 ** 10)
    assert binomial_sf(1, 100, 0.01) == pytest.approx(1 - 0.99 ** 100)
