"""Real batches for MSG-GAN training: a data order that is a pure function of the seed, and a
loader that prepares the next batches ahead so a GPU never waits on the host.

The order of epoch e is `torch.randperm(n)` drawn from a generator seeded with (seed, e), so
the indices of any future batch are known without touching shared RNG state. That is what
lets a background thread read ahead while a resumed run still sees exactly the batches an
uninterrupted one would: a checkpoint only records (epoch, position) of the batches consumed.
Each epoch drops its ragged tail (a fixed batch shape, as the CUDA-graph step needs).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["epoch_order", "epoch_dihedral", "dihedral", "batch_positions", "BatchLoader", "real_pyramid"]

_EPOCH_SEED_STRIDE = 1_000_003  # a prime: (seed, epoch) pairs never share a generator seed in practice
_DIHEDRAL_SALT = 2 ** 40  # keeps the transforms' generator apart from the order's


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of `n` patches for epoch `epoch` (int64, CPU)."""
    g = torch.Generator().manual_seed((int(seed) * _EPOCH_SEED_STRIDE + int(epoch)) % (2 ** 63))
    return torch.randperm(n, generator=g)


def epoch_dihedral(n: int, seed: int, epoch: int) -> np.ndarray:
    """One of the 8 flips/rotations (0-7) for each position of epoch `epoch`: like the order, a
    pure function of (seed, epoch), so a resumed run sees the same transformed batches."""
    g = torch.Generator().manual_seed((int(seed) * _EPOCH_SEED_STRIDE + int(epoch) + _DIHEDRAL_SALT) % (2 ** 63))
    return torch.randint(0, 8, (n,), generator=g).numpy()


def dihedral(batch: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Patch i of (B, S, S, C) rotated by (codes[i] % 4) quarter turns, then mirrored left-right
    when codes[i] >= 4; in place, one vectorised copy per distinct code."""
    for code in np.unique(codes):
        rows = np.flatnonzero(codes == code)
        moved = np.rot90(batch[rows], k=int(code) % 4, axes=(1, 2))
        batch[rows] = moved[:, :, ::-1] if code >= 4 else moved
    return batch


def batch_positions(n: int, batch_size: int, epoch: int, position: int) -> Iterator[tuple[int, int]]:
    """(epoch, start) of every batch from the consumed state (epoch, position) onwards."""
    while True:
        if position + batch_size > n:  # the ragged tail is dropped: a new epoch starts
            epoch, position = epoch + 1, 0
        yield epoch, position
        position += batch_size


def real_pyramid(batch_u8: np.ndarray | torch.Tensor, resolution: int, depth: int,
                 device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """uint8 (N, H, W, 3) -> [(N,3,4,4), ..., (N,3,res,res)] in [-1, 1], coarsest first.

    Real patches are 50 px, the generator's finest output 64 px (Table 1). They are upscaled
    with bilinear interpolation: smooth, so D cannot tell real from fake by blocky nearest-
    neighbour edges, and it keeps the patch content (no crop). Every coarser scale is the 2x2
    average pool of the one above, the same pyramid MSG-GAN builds for its real images.
    The uint8 batch is moved first (4x fewer bytes than floats) and the pyramid is built on
    `device`; the permute keeps the NHWC memory of the batch, i.e. channels_last.
    """
    x = torch.as_tensor(batch_u8).to(device, non_blocking=True).permute(0, 3, 1, 2)
    x = x.float().mul_(1.0 / 127.5).sub_(1.0)
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    pyramid = [x]
    for _ in range(depth - 1):
        pyramid.append(F.avg_pool2d(pyramid[-1], 2))
    return pyramid[::-1]


class BatchLoader:
    """uint8 (B, H, W, 3) CPU tensors of consecutive batches, in the seeded order.

    `images` is anything with len(), `.shape` and integer-array indexing (an ndarray, a
    np.memmap, app.packed.LabelView). With `ahead > 0` a daemon thread gathers up to `ahead`
    batches in advance (into page-locked memory when `pin`, so the copy to the GPU can run
    asynchronously); with `ahead == 0` each batch is gathered when asked for. Both give the
    same batches. `epoch`/`position` always describe the batches handed out, not those read ahead.
    With `augment_dihedral` each patch comes in the flip/rotation `epoch_dihedral` gives its
    position (square patches only).
    """

    def __init__(self, images, batch_size: int, seed: int, epoch: int = 0, position: int = 0,  # noqa: ANN001
                 ahead: int = 0, pin: bool = False, augment_dihedral: bool = False) -> None:
        self.images, self.batch_size, self.seed = images, int(batch_size), int(seed)
        self.n = len(images)
        if self.n < self.batch_size:
            raise ValueError(f"need at least batch_size={batch_size} images, got {self.n}")
        if augment_dihedral and images.shape[1] != images.shape[2]:
            raise ValueError(f"dihedral augmentation needs square patches, got {images.shape[1]}x{images.shape[2]}")
        self.augment_dihedral = augment_dihedral
        self.epoch, self.position = int(epoch), int(position)
        self.pin = pin and torch.cuda.is_available()
        self._positions = batch_positions(self.n, self.batch_size, self.epoch, self.position)
        self._order_epoch, self._order = -1, torch.empty(0, dtype=torch.long)
        self._codes = np.zeros(0, dtype=np.int64)
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if ahead > 0:
            self._queue = queue.Queue(maxsize=ahead)
            self._thread = threading.Thread(target=self._fill, name="histosynth-gan-batches", daemon=True)
            self._thread.start()

    def _gather(self, epoch: int, start: int) -> torch.Tensor:
        if epoch != self._order_epoch:
            self._order_epoch, self._order = epoch, epoch_order(self.n, self.seed, epoch)
            if self.augment_dihedral:
                self._codes = epoch_dihedral(self.n, self.seed, epoch)
        idx = self._order[start:start + self.batch_size].numpy()
        out = torch.empty((self.batch_size, *self.images.shape[1:]), dtype=torch.uint8, pin_memory=self.pin)
        out.numpy()[...] = self.images[idx]
        if self.augment_dihedral:
            dihedral(out.numpy(), self._codes[start:start + self.batch_size])
        return out

    def _fill(self) -> None:
        assert self._queue is not None
        try:
            for epoch, start in self._positions:
                item = (epoch, start, self._gather(epoch, start))
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._queue.put((-1, -1, exc))

    def next(self) -> torch.Tensor:
        """The next batch; advances (epoch, position) past it."""
        if self._queue is None:
            epoch, start = next(self._positions)
            batch = self._gather(epoch, start)
        else:
            epoch, start, batch = self._queue.get()
            if isinstance(batch, BaseException):
                raise RuntimeError("reading a training batch failed") from batch
        self.epoch, self.position = epoch, start + self.batch_size
        return batch

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
