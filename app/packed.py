"""The packed dataset format shared by ingest, generate and every job that reads patches.

A dataset folder holds:
- ``patches.u8``: raw uint8 pixels, shape (n, size, size, 3), C order; open it with
  :func:`open_patches` as a read-only ``np.memmap`` so nothing is loaded until indexed;
- ``index.npy``: one structured record per patch (patient, x, y, label, orig_h, orig_w);
- ``meta.json``: n, size, counts and how edge patches were treated.

Writing streams: :class:`PackedWriter` appends patches as they come, so memory does not
grow with the dataset (the full public set has 277,524 patches).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from models.data_view import RowView

INDEX_DTYPE = np.dtype(
    [("patient", "U16"), ("x", "<i4"), ("y", "<i4"), ("label", "i1"), ("orig_h", "<i2"), ("orig_w", "<i2")]
)
PATCHES_FILE = "patches.u8"
INDEX_FILE = "index.npy"
META_FILE = "meta.json"


class PackedWriter:
    """Append-only writer of a packed dataset into `folder` (a staging folder)."""

    def __init__(self, folder: Path, size: int) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.size = size
        self._fh = open(self.folder / PATCHES_FILE, "wb")
        self._records: list[np.ndarray] = []
        self.n = 0

    def append(self, patches: np.ndarray, records: np.ndarray) -> None:
        """patches: uint8 (b, size, size, 3); records: INDEX_DTYPE array of length b."""
        if patches.dtype != np.uint8 or patches.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"expected uint8 (b, {self.size}, {self.size}, 3), got {patches.dtype} {patches.shape}")
        if len(records) != len(patches):
            raise ValueError("one index record per patch")
        self._fh.write(np.ascontiguousarray(patches).tobytes())
        self._records.append(np.asarray(records, dtype=INDEX_DTYPE))
        self.n += len(patches)

    def close(self, extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
        self._fh.close()
        index = np.concatenate(self._records) if self._records else np.zeros(0, INDEX_DTYPE)
        return write_index(self.folder, self.size, index, extra_meta)


def write_index(folder: Path, size: int, index: np.ndarray, extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write index.npy and meta.json beside a complete patches.u8 of len(index) patches."""
    folder = Path(folder)
    np.save(folder / INDEX_FILE, index)
    meta = {"format": 1, "n": int(len(index)), "size": size, **summarize(index), **(extra_meta or {})}
    (folder / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return meta


def summarize(index: np.ndarray) -> dict[str, Any]:
    """Counts per label and per patient (one pass of np.unique + bincount: a per-patient
    string comparison was ~0.3 s of a 19k-patch ingest)."""
    labels, label_inv = np.unique(index["label"], return_inverse=True)
    patients, patient_inv = np.unique(index["patient"], return_inverse=True)
    grid = np.bincount(patient_inv * len(labels) + label_inv, minlength=len(patients) * len(labels))
    grid = grid.reshape(len(patients), len(labels))
    by_patient = {str(p): {str(int(lab)): int(c) for lab, c in zip(labels, row) if c}
                  for p, row in zip(patients, grid)}
    return {
        "by_label": {str(int(lab)): int(c) for lab, c in zip(labels, grid.sum(axis=0))},
        "by_patient": by_patient,
        "n_patients": int(len(patients)),
    }


def write_subset(source: Path, rows: np.ndarray, dest: Path, extra_meta: dict[str, Any] | None = None,
                 chunk: int = 4096) -> dict[str, Any]:
    """A new packed dataset at `dest` (a staging folder) holding `rows` of the one at `source`,
    copied in chunks (memory stays flat)."""
    patches, index = open_patches(source), read_index(source)
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    writer = PackedWriter(dest, int(read_meta(source)["size"]))
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        writer.append(np.asarray(patches[part]), index[part])
    return writer.close(extra_meta)


def open_patches(folder: Path) -> np.memmap:
    meta = read_meta(folder)
    n, size = meta["n"], meta["size"]
    if n == 0:
        return np.zeros((0, size, size, 3), np.uint8)  # np.memmap refuses empty files
    return np.memmap(Path(folder) / PATCHES_FILE, dtype=np.uint8, mode="r", shape=(n, size, size, 3))


def read_index(folder: Path) -> np.ndarray:
    return np.load(Path(folder) / INDEX_FILE)


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / META_FILE).read_text())


# Rows of a packed array selected by `rows`, indexed lazily: trainers index batches from it
# exactly as from the memmap, so a per-label subset is never copied into memory. The one
# lazy row view of the project (models.data_view), under the name the jobs use.
LabelView = RowView


class ConcatView:
    """Several packed arrays of one patch size seen as one, indexed lazily (e.g. the IDC- and
    IDC+ synthetic datasets of two generate jobs as one synthetic set)."""

    def __init__(self, parts: list) -> None:  # noqa: ANN001
        sizes = {p.shape[1:] for p in parts}
        if len(sizes) != 1:
            raise ValueError(f"datasets of different patch sizes cannot be combined: {sorted(sizes)}")
        self._parts = parts
        self._offsets = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self._offsets[-1]), *parts[0].shape[1:])
        self.dtype, self.ndim = parts[0].dtype, parts[0].ndim

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx):  # noqa: ANN001, ANN204
        idx = np.atleast_1d(np.arange(len(self))[idx])
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        part = np.searchsorted(self._offsets, idx, side="right") - 1
        for k in np.unique(part):
            sel = part == k
            out[sel] = self._parts[k][idx[sel] - self._offsets[k]]
        return out

    def __array__(self, dtype=None, copy=None):  # noqa: ANN001, ANN204
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)
