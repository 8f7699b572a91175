"""ResNet18 patch classifier (IDC- = 0, IDC+ = 1): config, network, weights, the shared
transform and checkpoints.

The paper (Classification section): ResNet18 pre-trained on ImageNet, every layer frozen but a
new 2-output fully connected layer, inputs resized to 224x224x3, CrossEntropyLoss, Adam lr
0.001, batch 32, 150 epochs. Those are the defaults of :class:`ClassifierConfig`.

Training lives in :mod:`models.classifier_training` (plain loop) and :mod:`models.features`
(cached-feature fast path), prediction in :mod:`models.inference`; this module imports none
of them.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import ResNet18_Weights
from torchvision.models.resnet import BasicBlock, ResNet

__all__ = [
    "ClassifierConfig", "config_from", "WeightsUnavailableError", "ResNet18Classifier", "build_resnet18",
    "preprocess", "classifier_state", "load_classifier", "IMAGENET_MEAN", "IMAGENET_STD",
]

# torchvision's ImageNet statistics, the ones the pre-trained weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODES = ("frozen", "finetune")
# Training-time augmentation. "dihedral": each training patch in one of its 8 flips/rotations,
# drawn per patch and per epoch. A tissue patch has no up or left, so each of the 8 is an equally
# real patch. "stain": each patch's H&E stain amounts jittered by `stain_strength`
# (models/stain.py), since slides differ by patient far more in colour than in structure;
# "dihedral+stain" both. Off by default (the paper names no augmentation); whether it helps a
# given recipe is measured with bench/evaluate_again.py (BENCHMARKS.md).
AUGMENTS = ("none", "dihedral", "stain", "dihedral+stain")
CHECKPOINT_FORMAT = "histosynth.classifier/1"


@dataclass
class ClassifierConfig:
    weights: str = "imagenet"  # "imagenet" | "none" (random init) | path to a local .pth state_dict
    mode: str = "frozen"  # "frozen": only the new fc trains (the paper) | "finetune": all layers train
    input_size: int = 224  # the paper resizes patches to 224x224x3
    lr: float = 1e-3  # Adam, the paper
    batch_size: int = 32  # the paper
    epochs: int = 150  # the paper
    seed: int = 0  # fc/random init and the per-epoch shuffle
    num_classes: int = 2
    fast_path: bool = True  # frozen mode: cache backbone features once, train only fc (models.features)
    eval_batch_size: int = 32  # batch for prediction and feature extraction (32 was fastest on CPU)
    augment: str = "none"  # AUGMENTS; the paper names none
    stain_strength: float = 0.05  # "stain": scale in 1 +- this, shift in +- this (optical density)

    def __post_init__(self) -> None:
        if not isinstance(self.weights, str) or not self.weights:
            raise ValueError("weights must be 'imagenet', 'none' or a path to a .pth file")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("input_size", "batch_size", "epochs", "num_classes", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.input_size < 32:  # five stride-2 stages need at least 32 px to leave a 1x1 map
            raise ValueError(f"input_size must be >= 32, got {self.input_size}")
        if self.num_classes < 2:
            raise ValueError("num_classes must be >= 2")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        self.lr = float(self.lr)
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        if isinstance(self.stain_strength, bool) or not isinstance(self.stain_strength, (int, float)) \
                or not 0 <= self.stain_strength <= 0.5:
            raise ValueError(f"stain_strength must be a number in [0, 0.5], got {self.stain_strength!r}")
        self.stain_strength = float(self.stain_strength)
        if not isinstance(self.fast_path, bool):
            raise ValueError(f"fast_path must be true or false, got {self.fast_path!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_from(overrides: dict[str, Any] | None = None) -> ClassifierConfig:
    """The paper's config with `overrides` applied; unknown or invalid fields raise ValueError."""
    overrides = dict(overrides or {})
    known = {f.name for f in fields(ClassifierConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown classifier config field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return ClassifierConfig(**overrides)


class WeightsUnavailableError(RuntimeError):
    """The ImageNet weights are neither cached nor downloadable (e.g. offline)."""


# --------------------------------------------------------------------------------------------
# network


class ResNet18Classifier(ResNet):
    """torchvision's ResNet18 (same state_dict keys) with a `num_classes`-output fc.

    With `frozen_backbone` every layer but fc stays in eval mode even under ``.train()``:
    the paper uses the pre-trained network as a fixed feature extractor, so BatchNorm must keep
    its running statistics instead of re-estimating them from histology batches.
    """

    def __init__(self, num_classes: int = 2, frozen_backbone: bool = False) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        self.frozen_backbone = frozen_backbone

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised -> (N, 512): everything up to avgpool + flatten."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))

    def train(self, mode: bool = True) -> "ResNet18Classifier":
        super().train(mode)
        if self.frozen_backbone:
            for name, child in self.named_children():
                if name != "fc":
                    child.train(False)
        return self


def imagenet_cache_path() -> Path:
    """Where torch.hub keeps (and torchvision looks for) the ImageNet ResNet18 weights."""
    url = ResNet18_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    path = imagenet_cache_path()
    if path.is_file():  # cached: no network at all
        return torch.load(path, map_location="cpu", weights_only=True)
    try:
        return torch.hub.load_state_dict_from_url(
            ResNet18_Weights.IMAGENET1K_V1.url, map_location="cpu", progress=False, check_hash=True, weights_only=True)
    except Exception as exc:  # URLError, timeouts, hash mismatch: all mean "not available here"
        raise WeightsUnavailableError(
            f"ImageNet ResNet18 weights could not be fetched ({type(exc).__name__}: {exc}). "
            f"Put {path.name} (from {ResNet18_Weights.IMAGENET1K_V1.url}) in {path.parent}, "
            f"or use weights='none' (random init) or weights='<path to a local .pth state_dict>'."
        ) from exc


def _local_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"classifier weights file not found: {p} (weights must be 'imagenet', 'none' or the path of a "
            f"ResNet18 state_dict / histosynth classifier checkpoint)")
    payload = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        payload = payload["model"]  # a checkpoint of this project (classifier_state)
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ValueError(f"{p} holds no state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in payload.items()}  # DataParallel-saved files


def _load_backbone(model: ResNet18Classifier, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every layer but fc strictly; fc too when its shape matches (else keep the new one)."""
    own = model.state_dict()
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing = [k for k in own if not k.startswith("fc.") and k not in backbone and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in backbone if k not in own]
    wrong = [k for k in backbone if k in own and backbone[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{source} is not a ResNet18 state_dict: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")
    if state.get("fc.weight") is not None and state["fc.weight"].shape == own["fc.weight"].shape \
            and state.get("fc.bias") is not None and state["fc.bias"].shape == own["fc.bias"].shape:
        backbone["fc.weight"], backbone["fc.bias"] = state["fc.weight"], state["fc.bias"]
    model.load_state_dict(backbone, strict=False)


def set_mode(model: ResNet18Classifier, mode: str) -> None:
    """frozen: only fc requires grad and the backbone stays in eval mode; finetune: all train."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    frozen = mode == "frozen"
    model.frozen_backbone = frozen
    for name, param in model.named_parameters():
        param.requires_grad_(not frozen or name.startswith("fc."))
    model.train(model.training)


def build_resnet18(weights: str = "imagenet", mode: str = "frozen", num_classes: int = 2) -> ResNet18Classifier:
    """ResNet18 with a new `num_classes`-output fc, initialised from `weights`:
    "imagenet" (torchvision IMAGENET1K_V1, from the torch.hub cache or downloaded), "none", or
    a local .pth path (a full ResNet18 state_dict, or a checkpoint dict with key "model").
    The random parts (fc, and all layers for "none") draw from torch's global RNG: seed it first."""
    model = ResNet18Classifier(num_classes=num_classes)
    if weights == "imagenet":
        _load_backbone(model, _imagenet_state_dict(), "the ImageNet weights")
    elif weights != "none":
        _load_backbone(model, _local_state_dict(weights), str(weights))
    set_mode(model, mode)
    return model


# --------------------------------------------------------------------------------------------
# the one transform


def preprocess(batch_uint8_nhwc: torch.Tensor | np.ndarray, input_size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float32 (N, 3, input_size, input_size), ImageNet-normalised.

    The one transform shared by training, evaluation and serving (as torchvision's
    references/classification keeps one preset): scale to [0, 1], resize with bilinear
    interpolation (antialias on, which matters when shrinking; align_corners False), then
    subtract IMAGENET_MEAN and divide by IMAGENET_STD per channel. No crop: a 50 px patch and a
    64 px synthetic patch both become the whole patch at input_size (224 in the paper). It runs
    on the device of its input, so move the uint8 batch first (4x less to copy than floats).
    """
    x = torch.as_tensor(batch_uint8_nhwc)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (input_size, input_size):
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    # The permute leaves NHWC strides; hand back plain contiguous NCHW whatever the path.
    return ((x - mean) / std).contiguous()


# --------------------------------------------------------------------------------------------
# checkpoints


def classifier_state(model: nn.Module, config: ClassifierConfig) -> dict[str, Any]:
    """A checkpoint that torch.load(weights_only=True) can read: tensors + plain config."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "config": config.to_dict(),
    }


def load_classifier(payload: dict[str, Any] | str | Path, device: str | torch.device = "cpu",
                    ) -> tuple[ResNet18Classifier, ClassifierConfig]:
    """(model in eval mode, config) from `classifier_state` output or the path of a file holding it.
    The network is rebuilt with weights="none" (the checkpoint has every weight), so loading
    never touches the network or the ImageNet cache."""
    if isinstance(payload, (str, Path)):
        payload = torch.load(Path(payload), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise ValueError("not a classifier checkpoint: expected a dict with 'model' and 'config'")
    config = config_from(payload["config"])
    model = build_resnet18("none", config.mode, config.num_classes)
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), config
