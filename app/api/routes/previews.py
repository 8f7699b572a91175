"""/v1/datasets/{id}/examples.png: a grid of a dataset's patches (the dashboard's examples, its
edge patches and the preview of a generation), drawn from the packed dataset, never written."""

from __future__ import annotations

import io
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Response
from PIL import Image

from app.api.deps import PrincipalDep, SessionDep, StorageDep
from app.ownership import get_readable
from app.packed import open_patches, read_index, read_meta
from app.problems import Problem
from app.storage import StorageError
from app.tables import Dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
PAD = 2
PAD_VALUE = 255  # the padding between tiles is white, like the slides' background


@router.get("/{dataset_id}/examples.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "a PNG grid, row by row"}})
def dataset_examples(
    dataset_id: str, session: SessionDep, storage: StorageDep, principal: PrincipalDep,
    n: Annotated[int, Query(ge=1, le=64, description="patches in the grid")] = 16,
    label: Annotated[int | None, Query(ge=0, le=1, description="only this label (0: IDC-, 1: IDC+)")] = None,
    edge: Annotated[bool, Query(description="only edge patches (narrower than the patch size, padded white)")] = False,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    columns: Annotated[int, Query(ge=1, le=16)] = 8,
) -> Response:
    """Up to `n` patches drawn without replacement (seeded) from those that match, in dataset
    order. `X-Matching-Patches` says how many matched; none matching is a 404 problem."""
    dataset = get_readable(session, Dataset, dataset_id, "dataset", principal)
    try:
        folder = storage.local_tree(dataset.key)
        meta, index = read_meta(folder), read_index(folder)
    except (StorageError, OSError) as exc:
        raise Problem(410, "Dataset files are gone", f"Dataset {dataset_id} is recorded but its files were removed.") from exc
    size = int(meta["size"])
    mask = np.ones(len(index), dtype=bool)
    if label is not None:
        mask &= index["label"] == label
    if edge:
        mask &= (index["orig_h"] < size) | (index["orig_w"] < size)
    rows = np.flatnonzero(mask)
    if len(rows) == 0:
        what = " edge" if edge else ""
        raise Problem(404, "No matching patches", f"Dataset {dataset_id} has no{what} patches"
                      + ("" if label is None else f" with label {label}") + ".")
    if len(rows) > n:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))
    tiles = np.asarray(open_patches(folder)[rows])
    cols = min(columns, len(tiles))
    n_rows = -(-len(tiles) // cols)
    cell = size + PAD
    grid = np.full((PAD + n_rows * cell, PAD + cols * cell, 3), PAD_VALUE, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[PAD + r * cell:PAD + r * cell + size, PAD + c * cell:PAD + c * cell + size] = tile
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png",
                    headers={"X-Matching-Patches": str(int(mask.sum())), "X-Patches-Shown": str(len(tiles)),
                             "Cache-Control": "private, max-age=3600"})
