"""Feature extractors for fidelity and memorization metrics. Every number computed on their
features is stored with the extractor's `identity` (name, checkpoint id or sha256, dimension,
input size), so a reader knows what made it.

- `domain`: the penultimate 512-d features (after global average pooling) of a ResNet18
  classifier trained by this service on real patches: always available offline, and tuned to
  what distinguishes these patches. BatchNorm is folded for speed (the same function).
- `inception`: torchvision's Inception-v3 ImageNet weights, 2048-d pool features at 299 px,
  from a local file (nothing is downloaded); a clear error names the file when it is missing.
  These are torchvision's weights, not the TF-ported "FID Inception" of the FID paper, so FID
  values are comparable within this service, not with published FIDs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.classifier import ResNet18Classifier, preprocess
from models.features import inference_backbone

__all__ = ["FeatureExtractor", "domain_extractor", "inception_extractor", "INCEPTION_FILE",
           "FeatureWeightsMissingError"]

INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"  # torchvision's Inception_V3_Weights.IMAGENET1K_V1


class FeatureWeightsMissingError(FileNotFoundError):
    """The weights an extractor needs are not on this machine."""


@dataclass
class FeatureExtractor:
    name: str
    dim: int
    input_size: int
    identity: dict[str, Any]
    net: nn.Module
    embed: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (net, preprocessed batch) -> (b, dim)
    cache: dict = field(default_factory=dict)

    @torch.inference_mode()
    def __call__(self, images_u8: Any, batch_size: int = 64, device: str | torch.device = "cpu") -> torch.Tensor:
        """uint8 (N, H, W, 3) (memmap fine, read in blocks) -> float32 (N, dim) on the CPU."""
        net = self.net.to(device)
        out = torch.empty(len(images_u8), self.dim)
        for start in range(0, len(images_u8), batch_size):
            block = torch.from_numpy(np.ascontiguousarray(images_u8[start:start + batch_size])).to(device)
            x = preprocess(block, self.input_size).contiguous(memory_format=torch.channels_last)
            out[start:start + len(block)] = self.embed(net, x).float().cpu()
        return out


def domain_extractor(model: ResNet18Classifier, input_size: int, identity: dict[str, Any]) -> FeatureExtractor:
    """The classifier's penultimate features; `identity` names the checkpoint (model id, sha256)."""
    net = inference_backbone(model).eval()
    return FeatureExtractor("domain", model.fc.in_features, input_size,
                            {"name": "domain", "dim": model.fc.in_features, "input_size": input_size, **identity},
                            net, lambda n, x: n.forward_features(x))


def inception_extractor(weights: str | Path | None, search: list[Path] | None = None) -> FeatureExtractor:
    """torchvision Inception-v3 from `weights` (a file) or the first of `search` that holds
    INCEPTION_FILE; FeatureWeightsMissingError names the file and the places looked in."""
    from torchvision.models import inception_v3

    candidates = [Path(weights).expanduser()] if weights else [Path(p) / INCEPTION_FILE for p in (search or [])]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        where = ", ".join(str(p) for p in candidates) or "(no path configured)"
        raise FeatureWeightsMissingError(
            f"Inception-v3 weights not found: looked for {where}. Put torchvision's {INCEPTION_FILE} there "
            f"(https://download.pytorch.org/models/{INCEPTION_FILE}) or set HISTOSYNTH_INCEPTION_WEIGHTS to its path; "
            f"or use features='domain'.")
    net = inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net.fc = nn.Identity()
    net.eval().requires_grad_(False)
    return FeatureExtractor("inception", 2048, 299, {"name": "inception", "dim": 2048, "input_size": 299,
                                                      "weights_file": path.name}, net, lambda n, x: n(x))
