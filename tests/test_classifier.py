"""ResNet18 classifier: config, weights loading (offline), frozen semantics, the shared
transform, training (plain and cached-feature paths), prediction and checkpoints."""

from __future__ import annotations

import io
import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from models import classifier as C
from models.classifier import (
    ClassifierConfig, WeightsUnavailableError, build_resnet18, classifier_state, config_from, load_classifier,
    preprocess,
)
from models.classifier_steps import TrainingAborted
from models.classifier_training import train_classifier
from models.data_view import RowView
from models.inference import predict_proba

CACHE_NAME = "resnet18-f37072fd.pth"


def tiny_data(n=16, size=40, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    images[labels == 1, :, :, 0] = 255  # a learnable signal: IDC+ images are red
    return images, labels


def tiny_config(**kw):
    return config_from({"weights": "none", "input_size": 32, "epochs": 2, "batch_size": 4, **kw})


# -- config ---------------------------------------------------------------------------------

def test_defaults_are_the_papers():
    cfg = ClassifierConfig()
    assert (cfg.weights, cfg.mode, cfg.input_size, cfg.lr, cfg.batch_size, cfg.epochs) == \
        ("imagenet", "frozen", 224, 1e-3, 32, 150)


def test_config_from_rejects_unknown_fields_by_name():
    with pytest.raises(ValueError, match="bogus.*learning_rate|learning_rate.*bogus"):
        config_from({"bogus": 1, "learning_rate": 0.1, "epochs": 3})
    with pytest.raises(ValueError, match="mode"):
        config_from({"mode": "half"})
    with pytest.raises(ValueError, match="epochs"):
        config_from({"epochs": 0})
    assert config_from({"epochs": 3, "lr": 1}).lr == 1.0


# -- weights --------------------------------------------------------------------------------

@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    return tmp_path, calls


def test_imagenet_offline_raises_a_clear_error(hub_dir):
    tmp_path, calls = hub_dir
    with pytest.raises(WeightsUnavailableError) as info:
        build_resnet18("imagenet")
    message = str(info.value)
    assert CACHE_NAME in message and str(tmp_path / "checkpoints") in message
    assert "weights='none'" in message and "local" in message
    assert isinstance(info.value, RuntimeError) and calls


def test_imagenet_loads_from_the_cache_without_network(hub_dir):
    tmp_path, calls = hub_dir
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()  # stands in for the ImageNet file (1000-class fc)
    (tmp_path / "checkpoints").mkdir()
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / CACHE_NAME)
    model = build_resnet18("imagenet", "frozen")
    assert not calls
    assert torch.equal(model.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    assert torch.equal(model.bn1.running_var, reference.bn1.running_var)
    assert model.fc.out_features == 2


def test_local_weights_full_state_dict_and_project_checkpoint(tmp_path):
    torch.manual_seed(2)
    reference = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    model = build_resnet18(str(path), "finetune")
    assert torch.equal(model.conv1.weight, reference.conv1.weight) and model.fc.out_features == 2

    torch.manual_seed(3)
    trained = build_resnet18("none")
    ckpt = tmp_path / "clf.pth"
    torch.save(classifier_state(trained, tiny_config()), ckpt)
    again = build_resnet18(str(ckpt))
    assert torch.equal(again.fc.weight, trained.fc.weight)  # 2-output fc matches: kept
    assert torch.equal(again.layer1[0].conv1.weight, trained.layer1[0].conv1.weight)

    with pytest.raises(FileNotFoundError, match="not found"):
        build_resnet18(str(tmp_path / "missing.pth"))


def test_frozen_keeps_backbone_in_eval_and_without_grad():
    model = build_resnet18("none", "frozen").train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    assert model.training and model.fc.training
    assert not model.bn1.training and not model.layer4[1].bn2.training
    before = model.bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32))
    assert torch.equal(model.bn1.running_mean, before)  # BatchNorm stats frozen

    tuned = build_resnet18("none", "finetune").train()
    assert all(p.requires_grad for p in tuned.parameters()) and tuned.bn1.training


# -- transform ------------------------------------------------------------------------------

def test_preprocess_resizes_and_normalises():
    mean_pixel = np.round(np.array(C.IMAGENET_MEAN) * 255).astype(np.uint8)
    batch = np.broadcast_to(mean_pixel, (2, 50, 50, 3)).copy()
    x = preprocess(torch.from_numpy(batch), 32)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()
    assert x.abs().max() < 0.01  # the ImageNet mean maps to ~0
    white = preprocess(np.full((1, 64, 64, 3), 255, np.uint8), 48)
    expected = (1 - torch.tensor(C.IMAGENET_MEAN)) / torch.tensor(C.IMAGENET_STD)
    assert torch.allclose(white[0, :, 10, 10], expected, atol=1e-5)
    with pytest.raises(ValueError):
        preprocess(torch.zeros(1, 3, 8, 8), 32)


# -- training -------------------------------------------------------------------------------

def test_train_on_memmap_predict_and_history(tmp_path):
    images, labels = tiny_data()
    mm = np.memmap(tmp_path / "p.u8", dtype=np.uint8, mode="w+", shape=images.shape)
    mm[:] = images
    mm.flush()
    ro = np.memmap(tmp_path / "p.u8", dtype=np.uint8, mode="r", shape=images.shape)
    seen = []
    model, history = train_classifier(tiny_config(fast_path=False), ro, labels,
                                      progress_fn=lambda c, t, info: seen.append((c, t)), val=(images[:6], labels[:6]))
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(history[0])
    assert seen[-1] == (2, 2)
    probs = predict_proba(model, ro, input_size=32, batch_size=5)
    assert probs.shape == (16,) and ((probs >= 0) & (probs <= 1)).all()
    sub = predict_proba(model, RowView(ro, np.array([3, 1])), input_size=32)
    assert np.allclose(sub, probs[[3, 1]], atol=1e-6)


def test_fast_path_matches_plain_loop():
    """Same fc init, same Adam, same batches: the two paths differ only in float summation
    order (the cached pass runs the backbone in other batch sizes, with BatchNorm folded into
    the convs and channels_last), so fc agrees to ~1e-7 here; 1e-5 leaves headroom."""
    images, labels = tiny_data(n=20)
    fast_model, fast_hist = train_classifier(tiny_config(epochs=3), images, labels, val=(images[:6], labels[:6]))
    plain_model, plain_hist = train_classifier(tiny_config(epochs=3, fast_path=False), images, labels,
                                               val=(images[:6], labels[:6]))
    assert torch.allclose(fast_model.fc.weight, plain_model.fc.weight, atol=1e-5)
    assert torch.allclose(fast_model.fc.bias, plain_model.fc.bias, atol=1e-5)
    assert not torch.equal(fast_model.fc.weight, build_resnet18("none").fc.weight)  # it did train
    for f, p in zip(fast_hist, plain_hist):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert f[key] == pytest.approx(p[key], abs=1e-5)
    assert np.allclose(predict_proba(fast_model, images, 32), predict_proba(plain_model, images, 32), atol=1e-5)


def _seen_batches(monkeypatch, config, images, labels):
    """The uint8 batches the plain loop hands to preprocess, in order."""
    import models.classifier_training as T

    seen = []

    def spy(batch, size):
        seen.append(batch.clone())
        return C.preprocess(batch, size)

    monkeypatch.setattr(T, "preprocess", spy)
    train_classifier(config, images, labels)
    return torch.cat(seen).numpy()


def test_dihedral_augment_shows_each_patch_in_one_of_its_8_orientations(monkeypatch):
    from models.classifier_training import uses_fast_path

    images, labels = tiny_data(n=8, size=32)
    plain = _seen_batches(monkeypatch, tiny_config(mode="finetune"), images, labels)
    augmented = _seen_batches(monkeypatch, tiny_config(mode="finetune", augment="dihedral"), images, labels)
    again = _seen_batches(monkeypatch, tiny_config(mode="finetune", augment="dihedral"), images, labels)
    assert plain.shape == augmented.shape == (16, 32, 32, 3)  # 2 epochs x 8 patches
    assert np.array_equal(augmented, again)  # seeded
    orientations = []
    for original, shown in zip(plain, augmented):  # same shuffle with and without augmentation
        views = [np.rot90(original, k, axes=(0, 1)) for k in range(4)]
        views += [v[:, ::-1] for v in views]
        matches = [i for i, v in enumerate(views) if np.array_equal(v, shown)]
        assert matches, "an augmented patch is not a flip/rotation of the patch at its place"
        orientations.append(matches[0])
    assert len(set(orientations)) >= 4  # 16 draws of 8: not the identity every time
    assert uses_fast_path(tiny_config()) and not uses_fast_path(tiny_config(augment="dihedral"))
    with pytest.raises(ValueError, match="augment"):
        config_from({"augment": "colour"})
    with pytest.raises(ValueError, match="square patches, got 32x40"):
        train_classifier(tiny_config(mode="finetune", augment="dihedral"), np.zeros((8, 32, 40, 3), np.uint8), labels)


def test_abort_raises():
    images, labels = tiny_data(n=8)
    for fast in (True, False):
        with pytest.raises(TrainingAborted):
            train_classifier(tiny_config(fast_path=fast), images, labels, abort_fn=lambda: True)


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    images, labels = tiny_data(n=8)
    cfg = tiny_config(epochs=1)
    model, _ = train_classifier(cfg, images, labels)
    buf = io.BytesIO()
    torch.save(classifier_state(model, cfg), buf)
    buf.seek(0)
    payload = torch.load(buf, weights_only=True)
    loaded, loaded_cfg = load_classifier(payload)
    assert loaded_cfg == cfg and not loaded.training
    assert np.allclose(predict_proba(loaded, images, 32), predict_proba(model, images, 32))
