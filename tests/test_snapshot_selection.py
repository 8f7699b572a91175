"""Best-snapshot selection (models/snapshot_selection.py): which steps are scored, which
snapshot is kept, its state through a checkpoint, and that the score ranks a generator by how
close its samples are to the reference."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.msggan import GanConfig
from models.snapshot_selection import SnapshotSelection, scored_steps, snapshot_fid


@pytest.mark.parametrize("start, every, steps, expected", [
    (0, 250, 1000, [250, 500, 750, 1000]),
    (2000, 250, 3000, [2000, 2250, 2500, 2750, 3000]),
    (2100, 250, 3000, [2250, 2500, 2750, 3000]),
    (0, 300, 1000, [300, 600, 900, 1000]),  # the last step is always scored
    (5000, 250, 1000, [1000]),
    (0, 0, 1000, []),  # off
])
def test_scored_steps(start, every, steps, expected):
    assert scored_steps(start, every, steps) == expected


def state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 2), value)}


def test_the_lowest_score_is_kept_and_ties_keep_the_earlier():
    sel = SnapshotSelection()
    assert sel.observe(10, 30.0, state(1)) and sel.best_step == 10
    assert sel.observe(20, 12.5, state(2)) and sel.best_step == 20
    assert not sel.observe(30, 12.5, state(3))  # a tie keeps the earlier snapshot
    assert not sel.observe(40, float("nan"), state(4))  # a failed score never wins
    assert not sel.observe(50, 40.0, state(5))
    assert sel.best_step == 20 and sel.best_fid == 12.5 and torch.equal(sel.best_state["w"], state(2)["w"])
    assert [s for s, _ in sel.history] == [10, 20, 30, 40, 50]


def test_the_kept_state_is_a_copy():
    live = state(1.0)
    sel = SnapshotSelection()
    sel.observe(10, 5.0, live)
    live["w"].add_(100)  # training goes on changing the live weights
    assert float(sel.best_state["w"][0, 0]) == 1.0


def test_a_rescored_step_replaces_its_entry():
    sel = SnapshotSelection()
    sel.observe(10, 9.0, state(1))
    sel.observe(10, 9.0, state(1))
    assert sel.history == [(10, 9.0)]


def test_the_selection_round_trips_through_a_weights_only_checkpoint():
    sel = SnapshotSelection()
    for step, fid in ((10, 8.0), (20, 3.0), (30, 4.0)):
        sel.observe(step, fid, state(step))
    buf = io.BytesIO()
    torch.save({"selection": sel.state_dict()}, buf)
    buf.seek(0)
    back = SnapshotSelection.from_state(torch.load(buf, weights_only=True)["selection"])
    assert back.history == sel.history and back.best_step == 20 and back.best_fid == 3.0
    assert torch.equal(back.best_state["w"], sel.best_state["w"])
    empty = SnapshotSelection.from_state(SnapshotSelection().state_dict())
    assert empty.best_step is None and empty.history == [] and math.isinf(empty.best_fid)
    with pytest.raises(ValueError, match="not a"):
        SnapshotSelection.from_state({"format": "other"})


def colour_features(images_u8: np.ndarray) -> torch.Tensor:
    """A 12-d stand-in extractor: the mean colour of each 2x2 quarter of a patch."""
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float() / 255
    return F.adaptive_avg_pool2d(x, 2).flatten(1)


def test_the_score_is_low_against_the_generators_own_samples_and_high_against_other_images():
    torch.manual_seed(0)
    G = GanConfig(latent_dim=16, width=1 / 32, depth=3).make_generator().eval()
    from models.sampling import iter_samples

    own = colour_features(np.concatenate(list(iter_samples(G, 400, seed=99, size=16))))
    other = colour_features(np.random.default_rng(0).integers(0, 256, (400, 16, 16, 3), dtype=np.uint8))
    near = snapshot_fid(G, colour_features, own, n=400, seed=1, size=16)
    far = snapshot_fid(G, colour_features, other, n=400, seed=1, size=16)
    assert 0 <= near < 0.1 * far
    assert snapshot_fid(G, colour_features, own, n=400, seed=1, size=16) == near  # seeded: the same score again
