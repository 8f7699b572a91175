"""Keep the synthetic patches the trained critic scores as most real.

Discriminator rejection sampling (Azadi et al., "Discriminator Rejection Sampling", ICLR 2019,
https://arxiv.org/abs/1810.06758) uses the discriminator that training leaves behind to drop
the generator's worst samples. A WGAN critic's output is an unnormalised realness score, not a
probability, so this is the simple form of the idea: draw n / keep candidates, score each with
the critic, keep the n highest in their drawn order.

Candidates are the sampler's own latent stream (models/sampling.py), so `keep=1` returns the
plain samples of that seed. The critic's minibatch-stddev layer (Table 2) couples the images
of a batch, so candidates are scored in consecutive batches of `critic_batch` (the training
batch size), as training scores fakes: a sample's score depends on the fixed neighbours it
was drawn with.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from models.msggan import Discriminator, Generator
from models.sampling import LATENT_BLOCK, latent_blocks, to_uint8_tensor

DRAW_BATCH = 256


def candidate_count(n: int, keep: float) -> int:
    """How many candidates give n kept ones at this keep fraction."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep!r}")
    return max(n, math.ceil(n / keep))


@torch.no_grad()
def critic_filtered(generator: Generator, critic: Discriminator, n: int, keep: float, seed: int,
                    size: int = 64, critic_batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (n, size, size, 3) patches, float (m,) scores of all m candidates).

    The kept patches are the n best-scored of the first m = n / keep latents of `seed`'s
    stream, in stream order."""
    m = candidate_count(n, keep)
    blocks = latent_blocks(generator.latent_dim, seed)
    latents = torch.cat([next(blocks) for _ in range(math.ceil(m / LATENT_BLOCK))])[:m]
    images, scores = [], []
    for z in latents.split(DRAW_BATCH):
        scales = generator(z)  # unclamped, as the critic saw fakes in training
        scores += [critic([x[i:i + critic_batch] for x in scales]).flatten().float()
                   for i in range(0, len(z), critic_batch)]
        images.append(to_uint8_tensor(scales[-1], size))
    all_scores = torch.cat(scores)
    kept = torch.sort(torch.topk(all_scores, n).indices).values
    return torch.cat(images)[kept].numpy(), all_scores.numpy()
