"""Small builders of test inputs (PNG bytes, zips, odd folders)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(w: int = 50, h: int = 50, mode: str = "RGB", color=(200, 100, 150), seed: int | None = None) -> bytes:
    if seed is not None:
        arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(arr).convert(mode)
    else:
        img = Image.new("RGB", (w, h), color).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_patch(root: Path, patient: str, label: int, x: int, y: int, data: bytes | None = None, name: str | None = None) -> Path:
    folder = root / patient / str(label)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{patient}_idx5_x{x}_y{y}_class{label}.png")
    path.write_bytes(data if data is not None else png_bytes(seed=x * 1000 + y))
    return path


def zip_bytes(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # S_IFLNK
            zf.writestr(info, target)
    return buf.getvalue()
