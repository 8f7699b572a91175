"""Prediction with a trained ResNet18 classifier: `predict_proba` / `evaluate_images` on uint8
arrays (the plain network, batch by batch; the reference), and `InferenceModel`, the same
function prepared for serving and computed faster.

InferenceModel takes two steps, both measured on 2 CPU cores at input 224 (BENCHMARKS.md,
predictions):
- BatchNorm folded into the convolution before it (eval-mode BN is an affine map, so
  conv -> BN is one conv with rescaled weights and a bias). Exact up to float rounding
  (max |logit difference| ~2e-6 in the test).
- channels_last (NHWC) memory format, the layout oneDNN and cuDNN tensor cores prefer.
Together: 22.8 -> 17.0 ms per image at batch 1, 19.1 -> 12.7 ms per image at batch 16.

`precision="bf16"` also runs under bfloat16 autocast. On CPUs with AMX (or CUDA GPUs) that is
several times faster, and batches gain far more from it than single images do. It moves
probabilities a little (bench/precision.py on 2,000 held-out real patches: mean |dP| 0.0006,
max 0.0045, 1 label flipped), so it is an opt-in, never the default.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from models.classifier import ClassifierConfig, ResNet18Classifier, preprocess
from models.classifier_steps import take_batch, val_metrics
from models.device import exact_fp32

__all__ = ["PRECISIONS", "predict_proba", "evaluate_images", "fold_batchnorm", "InferenceModel"]

PRECISIONS = ("fp32", "bf16")


@torch.inference_mode()
def _logits(model: nn.Module, images: Any, input_size: int, batch_size: int,
            device: str | torch.device) -> torch.Tensor:
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        idx = np.arange(start, min(start + batch_size, len(images)))
        out.append(model(preprocess(take_batch(images, idx, device), input_size)))
    return torch.cat(out) if out else torch.zeros(0, model.fc.out_features, device=device)


def evaluate_images(model: nn.Module, images: Any, labels: np.ndarray, config: ClassifierConfig,
                    device: str | torch.device) -> dict[str, float]:
    """val_loss / val_acc of `model` on uint8 images (model is left in eval mode)."""
    logits = _logits(model, images, config.input_size, config.eval_batch_size, device)
    return val_metrics(logits, torch.as_tensor(np.asarray(labels), dtype=torch.long, device=logits.device))


def predict_proba(model: nn.Module, images_uint8: Any, input_size: int = 224, batch_size: int = 32,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """P(IDC+) = softmax(logits)[:, 1] for uint8 (N, H, W, 3) images, as float64 (N,)."""
    if len(images_uint8) == 0:
        return np.zeros(0)
    logits = _logits(model, images_uint8, input_size, batch_size, device)
    return torch.softmax(logits.float(), dim=1)[:, 1].double().cpu().numpy()


def fold_batchnorm(model: ResNet18Classifier) -> ResNet18Classifier:
    """A copy of `model` (eval mode) with every BatchNorm folded into its conv and replaced by
    Identity. Valid for inference only: the folded network has no batch statistics to update."""
    folded = copy.deepcopy(model).eval()
    folded.conv1 = fuse_conv_bn_eval(folded.conv1, folded.bn1)
    folded.bn1 = nn.Identity()
    for layer in (folded.layer1, folded.layer2, folded.layer3, folded.layer4):
        for block in layer:
            block.conv1, block.bn1 = fuse_conv_bn_eval(block.conv1, block.bn1), nn.Identity()
            block.conv2, block.bn2 = fuse_conv_bn_eval(block.conv2, block.bn2), nn.Identity()
            if block.downsample is not None:
                conv, bn = block.downsample[0], block.downsample[1]
                block.downsample = nn.Sequential(fuse_conv_bn_eval(conv, bn))
    return folded


class InferenceModel:
    """P(IDC+) for batches of uint8 images with the training transform (`preprocess`)."""

    def __init__(self, model: ResNet18Classifier, input_size: int, precision: str = "fp32",
                 device: str | torch.device = "cpu") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.input_size, self.precision, self.device = input_size, precision, torch.device(device)
        self.model = fold_batchnorm(model).to(self.device, memory_format=torch.channels_last)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.device.type == "cuda":
            return exact_fp32()
        return contextlib.nullcontext()

    @torch.inference_mode()
    def probabilities(self, images_uint8_nhwc: list[torch.Tensor]) -> torch.Tensor:
        """float32 (N,) P(IDC+) for N uint8 (H, W, 3) images of any sizes. Images of one size are
        preprocessed together (one resize call), then the whole batch runs as one forward."""
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images_uint8_nhwc):
            by_shape.setdefault(tuple(im.shape), []).append(i)
        x = torch.empty(len(images_uint8_nhwc), 3, self.input_size, self.input_size, device=self.device,
                        memory_format=torch.channels_last)  # filled in place: no layout copy afterwards
        for idx in by_shape.values():
            batch = torch.stack([images_uint8_nhwc[i] for i in idx]).to(self.device)
            x[idx] = preprocess(batch, self.input_size)
        with self._autocast():
            logits = self.model(x)
        return torch.softmax(logits.float(), dim=1)[:, 1].cpu()
