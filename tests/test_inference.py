"""Serving-time classifier: BatchNorm folding, channels_last, bf16, and the API process's
micro-batching Predictor (in process, SQLite, a real checkpoint)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from models.classifier import build_resnet18, classifier_state, config_from
from models.inference import InferenceModel, fold_batchnorm, predict_proba


@pytest.fixture(scope="module")
def net():
    """A random-init ResNet18 whose BatchNorm layers hold non-trivial running statistics and
    affine parameters (freshly built ones are the identity, which would make folding trivial)."""
    torch.manual_seed(0)
    model = build_resnet18("none", "finetune")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_fold_batchnorm_is_the_same_function_without_batchnorm(net):
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()), "the original must be left intact"
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        ref, out = net(x), folded(x)
    assert out.shape == (4, 2)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (out - ref).abs().max()


def test_fp32_runner_matches_predict_proba_for_mixed_sizes(net):
    sizes = [(50, 50), (50, 50), (64, 64), (37, 50), (50, 50)]
    ims = images(sizes)
    runner = InferenceModel(net, 64, "fp32")
    probs = runner.probabilities([torch.from_numpy(im) for im in ims]).numpy()
    expected = np.array([predict_proba(net, im[None], input_size=64)[0] for im in ims])
    assert probs.shape == (5,) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    # Batched or alone, an image gets the same answer (images are preprocessed per size group).
    alone = runner.probabilities([torch.from_numpy(ims[3])]).numpy()
    np.testing.assert_allclose(alone, probs[3:4], atol=1e-5)


def test_bf16_runner_is_close_to_fp32(net):
    ims = [torch.from_numpy(im) for im in images([(50, 50)] * 8, seed=1)]
    fp32 = InferenceModel(net, 64, "fp32").probabilities(ims)
    bf16 = InferenceModel(net, 64, "bf16").probabilities(ims)
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() < 0.05


def test_unknown_precision_is_refused(net):
    with pytest.raises(ValueError, match="precision"):
        InferenceModel(net, 64, "fp16")


def promoted_home(tmp_path, net, **settings_kw):
    """Settings for an embedded home whose promoted classifier is `net` (input 64), id m1 v3."""
    from app.db import session_scope
    from app.migrate import upgrade_head
    from app.settings import Settings
    from app.tables import ModelVersion
    from worker.models_store import save_state

    settings = Settings(home=tmp_path, **settings_kw)
    upgrade_head(settings.resolved_database_url)
    save_state(settings.resolved_storage_dir / "models" / "m1.pt",
               classifier_state(net, config_from({"weights": "none", "mode": "finetune", "input_size": 64})))
    with session_scope(settings.resolved_database_url) as s:
        s.add(ModelVersion(id="m1", kind="classifier", version=3, key="models/m1.pt", promoted=True))
    return settings


def test_predictor_batches_concurrent_requests(tmp_path, net):
    from app.predictor import Predictor

    settings = promoted_home(tmp_path, net, predict_max_batch=6)
    ims = images([(50, 50)] * 10, seed=2)
    expected = InferenceModel(net, 64, "fp32").probabilities([torch.from_numpy(im) for im in ims]).numpy()

    async def scenario():
        predictor = Predictor(settings)
        loaded, first = await predictor.predict([ims[0]])  # loads the model
        assert (loaded.id, loaded.version, loaded.runner.precision) == ("m1", 3, "fp32")
        singles = await asyncio.gather(*(predictor.predict([im]) for im in ims))
        return list(predictor.batch_sizes), first, np.concatenate([p for _, p in singles])

    batch_sizes, first, probs = asyncio.run(scenario())
    # The first request ran alone (no timer to wait on); the ten concurrent ones were queued
    # before the batcher ran, so they took max_batch (6) and then the remaining 4.
    assert batch_sizes == [1, 6, 4]
    np.testing.assert_allclose(first, expected[:1], atol=1e-5)
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_predictor_without_promoted_model_is_a_409(tmp_path):
    from app.migrate import upgrade_head
    from app.predictor import Predictor
    from app.problems import Problem
    from app.settings import Settings

    settings = Settings(home=tmp_path)
    upgrade_head(settings.resolved_database_url)
    with pytest.raises(Problem) as info:
        asyncio.run(Predictor(settings).predict(images([(50, 50)])))
    assert info.value.status == 409 and "promote" in info.value.detail


def test_predictor_asked_for_a_missing_gpu_is_a_503(tmp_path, net, monkeypatch):
    from app.predictor import Predictor
    from app.problems import Problem

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(Problem) as info:
        asyncio.run(Predictor(promoted_home(tmp_path, net, predict_device="cuda")).predict(images([(50, 50)])))
    assert info.value.status == 503 and "HISTOSYNTH_PREDICT_DEVICE" in info.value.detail
    # auto falls back to the CPU
    loaded, probs = asyncio.run(Predictor(promoted_home(tmp_path / "auto", net)).predict(images([(50, 50)])))
    assert str(loaded.runner.device) == "cpu" and probs.shape == (1,)
