"""A packed dataset served as a zip of PNGs, encoded while it streams.

Synthetic datasets are exported this way instead of writing a zip during the generate job:
PNG encoding costs about as much CPU as a cpu-small generator forward (bench/generate.py), and
a zip kept beside the packed array would double the storage of every generation.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from app.packed import open_patches, read_index


class _Sink(io.RawIOBase):
    """A write-only, unseekable stream whose bytes are taken out as they come (zipfile then
    writes data descriptors instead of seeking back)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # noqa: ANN001
        self._chunks.append(bytes(b))
        return len(b)

    def take(self) -> bytes:
        out, self._chunks = b"".join(self._chunks), []
        return out


def iter_png_zip(folder: Path, prefix: str) -> Iterator[bytes]:
    patches, index = open_patches(folder), read_index(folder)
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as zf:  # PNGs are compressed already
        for i in range(len(patches)):
            buf = io.BytesIO()
            Image.fromarray(patches[i]).save(buf, format="PNG", compress_level=1)
            zf.writestr(f"{prefix}{int(index['x'][i]):06d}.png", buf.getvalue())
            if i % 64 == 63:
                yield sink.take()
    yield sink.take()
