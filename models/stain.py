"""H&E stain jitter: each patch's haematoxylin, eosin and DAB amounts scaled and shifted a little.

Patients' slides differ in stain strength and hue far more than in tissue structure, so a
classifier that reads colour learns the slides it was trained on. Colour deconvolution
(Ruifrok & Johnston, "Quantification of histochemical staining by color deconvolution", Anal.
Quant. Cytol. Histol. 2001) turns RGB into the optical density of each stain; perturbing those
densities and turning them back into RGB is the "HED" augmentation that Tellez et al. found the
best single colour augmentation across pathology tasks ("Quantifying the effects of data
augmentation and stain color normalization in convolutional neural networks for computational
pathology", Medical Image Analysis 2019, https://arxiv.org/abs/1902.06543).

The stain vectors are Ruifrok & Johnston's published H&E-DAB matrix (rows: haematoxylin,
eosin, DAB; each normalised to unit length).
"""

from __future__ import annotations

import torch

_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29],
                              [0.07, 0.99, 0.11],
                              [0.27, 0.57, 0.78]], dtype=torch.float64)
RGB_FROM_HED = (_RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)).float()
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED.double()).float()
# The darkest optical density a uint8 pixel can hold: 1/255 of full intensity. Clamping there
# keeps log() finite on black pixels.
_MIN_INTENSITY = 1.0 / 255.0


def draw_stain_jitter(n: int, strength: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch and stain, a scale in [1 - strength, 1 + strength] and a shift in
    [-strength, strength] (optical density units): ((n, 3), (n, 3)) on the CPU."""
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength!r}")
    scale = 1.0 + (torch.rand(n, 3, generator=generator) * 2 - 1) * strength
    shift = (torch.rand(n, 3, generator=generator) * 2 - 1) * strength
    return scale, shift


def hed_jitter(batch_uint8_nhwc: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> uint8, each patch's stain densities times `scale[i]` plus
    `shift[i]` (both (N, 3): haematoxylin, eosin, DAB). Scale 1 and shift 0 give the input back
    up to one grey level of rounding."""
    if batch_uint8_nhwc.dtype != torch.uint8 or batch_uint8_nhwc.ndim != 4 or batch_uint8_nhwc.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3), got {batch_uint8_nhwc.dtype} {tuple(batch_uint8_nhwc.shape)}")
    device = batch_uint8_nhwc.device
    x = batch_uint8_nhwc.float().div_(255.0).clamp_(min=_MIN_INTENSITY)
    density = -torch.log(x)  # optical density per RGB channel (Beer-Lambert)
    stains = density @ HED_FROM_RGB.to(device)  # (N, H, W, 3): H, E, DAB amounts
    stains = stains * scale.to(device).view(-1, 1, 1, 3) + shift.to(device).view(-1, 1, 1, 3)
    rgb = torch.exp(-(stains @ RGB_FROM_HED.to(device)))
    return rgb.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
