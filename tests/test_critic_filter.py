"""models/critic_filter.py: the kept patches are the critic's best, in the sampler's order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.critic_filter import candidate_count, critic_filtered
from models.msggan import GanConfig
from models.sampling import iter_samples


class BrightnessCritic(torch.nn.Module):
    """Scores a batch of scale lists by the finest image's mean value: brighter is 'more real'."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, scales: list[torch.Tensor]) -> torch.Tensor:
        self.batches.append(len(scales[-1]))
        return scales[-1].mean(dim=(1, 2, 3)).unsqueeze(1)


def tiny_generator() -> torch.nn.Module:
    torch.manual_seed(0)
    return GanConfig(latent_dim=16, width=1 / 64, depth=3).make_generator()


def test_candidate_count_and_bounds():
    assert candidate_count(100, 1.0) == 100
    assert candidate_count(100, 0.5) == 200
    assert candidate_count(100, 0.3) == 334  # rounded up: never fewer than n / keep
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="keep"):
            candidate_count(10, bad)


def test_keep_one_is_the_plain_samples():
    G = tiny_generator()
    plain = np.concatenate(list(iter_samples(G, 40, seed=3, size=16)))
    kept, scores = critic_filtered(G, BrightnessCritic(), 40, 1.0, seed=3, size=16)
    assert kept.shape == (40, 16, 16, 3) and kept.dtype == np.uint8
    assert scores.shape == (40,)
    np.testing.assert_array_equal(kept, plain)


def test_kept_are_the_best_scored_in_stream_order():
    G = tiny_generator()
    critic = BrightnessCritic()
    kept, scores = critic_filtered(G, critic, 30, 0.25, seed=5, size=16, critic_batch=8)
    candidates = np.concatenate(list(iter_samples(G, 120, seed=5, size=16)))
    assert scores.shape == (120,)
    # scored in batches of the training batch size (the critic's minibatch stddev couples them)
    assert critic.batches == [8] * 15
    best = np.sort(np.argsort(-scores, kind="stable")[:30])
    np.testing.assert_array_equal(kept, candidates[best])
    dropped = np.setdiff1d(np.arange(120), best)
    assert scores[best].min() >= scores[dropped].max()
    # the brightness critic's choice is visible in the pixels
    assert kept.mean() > candidates.mean()
