"""models/label_filter.py: the kept patches are exactly the candidates the classifier puts on the
label, in the sampler's stream order, at the positions plain sampling draws them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.label_filter import FilterExhausted, FilterTally, candidate_budget, label_filtered
from models.msggan import GanConfig
from models.sampling import iter_samples


class BrightnessClassifier(torch.nn.Module):
    """Two logits whose softmax gives P(IDC+) = sigmoid(gain * (mean pixel - offset)): brighter
    patches are 'more IDC+'. Inputs are `preprocess`ed (ImageNet-normalised), so the mean of the
    normalised tensor stands in for brightness."""

    def __init__(self, gain: float = 20.0, offset: float = 0.0) -> None:
        super().__init__()
        self.gain, self.offset = gain, offset
        self.fc = torch.nn.Linear(1, 2)  # predict_proba reads fc.out_features for empty input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.gain * (x.mean(dim=(1, 2, 3)) - self.offset)
        return torch.stack([torch.zeros_like(score), score], dim=1)


def tiny_generator() -> torch.nn.Module:
    torch.manual_seed(0)
    return GanConfig(latent_dim=16, width=1 / 64, depth=3).make_generator()


def p_idc(classifier: BrightnessClassifier, patches: np.ndarray) -> np.ndarray:
    from models.inference import predict_proba

    return predict_proba(classifier, patches, input_size=16, batch_size=len(patches))


def drain(*args, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    batches = list(label_filtered(*args, **kwargs))
    return np.concatenate([b for b, _ in batches]), np.concatenate([pos for _, pos in batches])


def test_candidate_budget_bounds():
    assert candidate_budget(100, 1.0) == 100
    assert candidate_budget(100, 2.5) == 250
    with pytest.raises(ValueError, match="max_draw"):
        candidate_budget(10, 0.5)


@pytest.mark.parametrize("label", [0, 1])
def test_kept_are_the_candidates_on_the_label_in_stream_order(label):
    from models.classifier import preprocess

    G = tiny_generator()
    candidates = np.concatenate(list(iter_samples(G, 400, seed=7, size=16, batch_size=32)))
    # centred on this stream's median brightness, so the classifier splits it about in half
    brightness = preprocess(torch.from_numpy(candidates), 16).mean(dim=(1, 2, 3))
    clf = BrightnessClassifier(gain=200.0, offset=float(brightness.median()))
    probs = p_idc(clf, candidates)
    p_label = probs if label == 1 else 1 - probs
    on_label = np.flatnonzero(p_label >= 0.6)
    assert 30 <= len(on_label) <= 370, "the brightness classifier must split this stream"  # the test's premise
    tally = FilterTally()
    kept, positions = drain(G, clf, 16, label, 25, seed=7, min_prob=0.6, max_draw=16, size=16, batch_size=32,
                            tally=tally)
    assert kept.shape == (25, 16, 16, 3) and kept.dtype == np.uint8
    np.testing.assert_array_equal(positions, on_label[:25])
    np.testing.assert_array_equal(kept, candidates[on_label[:25]])
    # it stops at the batch that fills n: every candidate it scored is counted, no more
    last_batch_end = (on_label[24] // 32 + 1) * 32
    assert tally.kept == 25 and tally.candidates == last_batch_end
    summary = tally.summary()
    assert summary["acceptance"] == round(25 / last_batch_end, 4)
    assert summary["agreement"] == round(float((p_label[:last_batch_end] >= 0.5).mean()), 4)
    np.testing.assert_allclose(np.concatenate(tally.probs), p_label[:last_batch_end], atol=1e-6)


def test_a_classifier_that_agrees_with_every_sample_keeps_the_plain_samples():
    G = tiny_generator()
    plain = np.concatenate(list(iter_samples(G, 40, seed=3, size=16)))
    kept, positions = drain(G, BrightnessClassifier(gain=0.0), 16, 1, 40, seed=3, min_prob=0.5, size=16)
    np.testing.assert_array_equal(kept, plain)
    np.testing.assert_array_equal(positions, np.arange(40))


def test_too_strict_a_threshold_runs_out_of_candidates_with_a_clear_error():
    G = tiny_generator()
    tally = FilterTally()
    with pytest.raises(FilterExhausted, match=r"only \d+ of 60 candidates had P\(label 1\) >= 0.99"):
        drain(G, BrightnessClassifier(gain=0.0), 16, 1, 30, seed=3, min_prob=0.99, max_draw=2, size=16,
              batch_size=16, tally=tally)
    assert tally.candidates == 60 and tally.kept == 0  # P = 0.5 everywhere: none passes 0.99


def test_bad_arguments():
    G, clf = tiny_generator(), BrightnessClassifier()
    with pytest.raises(ValueError, match="label"):
        drain(G, clf, 16, 2, 5, seed=0, min_prob=0.5, size=16)
    with pytest.raises(ValueError, match="min_prob"):
        drain(G, clf, 16, 1, 5, seed=0, min_prob=1.0, size=16)
