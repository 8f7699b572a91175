"""models/stain.py: H&E stain jitter. Identity at scale 1 / shift 0, more haematoxylin is darker
and bluer, the draw is seeded and bounded; the classifier's "stain" augment uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.stain import HED_FROM_RGB, RGB_FROM_HED, draw_stain_jitter, hed_jitter


def patches(n: int = 4, size: int = 8, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def test_matrices_are_inverse_and_unit_rows():
    assert torch.allclose(RGB_FROM_HED @ HED_FROM_RGB, torch.eye(3), atol=1e-5)
    assert torch.allclose(RGB_FROM_HED.norm(dim=1), torch.ones(3), atol=1e-6)


def test_no_jitter_gives_the_patches_back_within_a_grey_level():
    x = patches()
    out = hed_jitter(x, torch.ones(4, 3), torch.zeros(4, 3))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert (out.int() - x.int()).abs().max() <= 1


def test_more_haematoxylin_is_darker_and_bluer():
    pink = torch.full((1, 4, 4, 3), 0, dtype=torch.uint8)
    pink[..., 0], pink[..., 1], pink[..., 2] = 230, 150, 200  # an eosin-pink stroma colour
    more_h = hed_jitter(pink, torch.ones(1, 3), torch.tensor([[0.3, 0.0, 0.0]])).float()[0, 0, 0]
    base = pink.float()[0, 0, 0]
    assert more_h.sum() < base.sum()  # darker
    # haematoxylin absorbs red most: red falls more than blue does
    assert (base[0] - more_h[0]) > (base[2] - more_h[2])
    # each patch gets its own draw: a shift on patch 1 leaves patch 0 alone
    two = torch.cat([pink, pink])
    out = hed_jitter(two, torch.ones(2, 3), torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.3, 0.0]]))
    assert (out[0].int() - pink[0].int()).abs().max() <= 1 and not torch.equal(out[1], out[0])


def test_draws_are_seeded_and_bounded():
    a = draw_stain_jitter(500, 0.05, torch.Generator().manual_seed(3))
    b = draw_stain_jitter(500, 0.05, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    scale, shift = a
    assert scale.shape == shift.shape == (500, 3)
    assert scale.min() >= 0.95 and scale.max() <= 1.05 and shift.abs().max() <= 0.05
    assert scale.std() > 0.02  # spread over the range, not a constant
    with pytest.raises(ValueError, match="strength"):
        draw_stain_jitter(2, -0.1, torch.Generator())
    with pytest.raises(ValueError, match="uint8"):
        hed_jitter(torch.zeros(1, 4, 4, 3), torch.ones(1, 3), torch.zeros(1, 3))


def test_classifier_stain_augment_jitters_colour_and_keeps_the_shuffle(monkeypatch):
    from models.classifier import config_from
    from tests.test_classifier import _seen_batches, tiny_config, tiny_data

    images, labels = tiny_data(n=8, size=32)
    plain = _seen_batches(monkeypatch, tiny_config(mode="finetune"), images, labels)
    stained = _seen_batches(monkeypatch, tiny_config(mode="finetune", augment="stain"), images, labels)
    again = _seen_batches(monkeypatch, tiny_config(mode="finetune", augment="stain"), images, labels)
    assert stained.shape == plain.shape and np.array_equal(stained, again)  # seeded
    diff = np.abs(stained.astype(int) - plain.astype(int))
    # the same patch at each place (same shuffle), a few grey levels away, never a different patch
    assert 0 < diff.mean() < 20 and (diff.reshape(len(diff), -1).mean(axis=1) > 0).all()
    both = _seen_batches(monkeypatch, tiny_config(mode="finetune", augment="dihedral+stain"), images, labels)
    assert both.shape == plain.shape and not np.array_equal(both, stained)
    with pytest.raises(ValueError, match="stain_strength"):
        config_from({"stain_strength": 0.9})
