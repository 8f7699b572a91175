"""A lazy view of an array by row indices, shared by the trainers and the jobs.

One class serves every "these rows of that array" need (a per-label subset of a packed
dataset, a train or test side of the four-way protocol): batches index through to the base
array, so a ``np.memmap`` stays on disk and a subset is never copied into memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["RowView"]


class RowView:
    """`base[rows]` without copying: indexing with an integer array reads only those rows of
    `base` (in file order, then restored to the requested order), so trainers index batches
    from it exactly as from the memmap. Supports len(), .shape/.dtype/.ndim, integer,
    slice and integer-array indexing, and np.asarray (which reads every row)."""

    def __init__(self, base: Any, rows: np.ndarray) -> None:
        self._base, self._rows = base, np.asarray(rows, dtype=np.int64)
        self.shape = (len(self._rows), *base.shape[1:])
        self.dtype, self.ndim = base.dtype, len(self.shape)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, idx: Any) -> np.ndarray:
        rows = self._rows[idx]
        if isinstance(rows, np.ndarray):
            order = np.argsort(rows, kind="stable")  # read the memmap in file order, then restore
            out = np.empty((len(rows), *self.shape[1:]), self.dtype)
            out[order] = self._base[rows[order]]
            return out
        return self._base[rows]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)
