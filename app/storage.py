"""Where datasets, models, checkpoints, artifacts and uploads live: one `Storage` over fsspec,
addressed by keys relative to its root, never by absolute paths.

Backends (HISTOSYNTH_STORAGE_URL):
- a local folder (the embedded default, ``$HISTOSYNTH_HOME/storage``): a key is a file under
  it; writes are atomic (temp file, fsync, rename) and reads use the file in place;
- ``s3://bucket/prefix`` on any S3-compatible store (AWS S3, MinIO, SeaweedFS): a PUT is
  atomic by S3's semantics; files that must be memory-mapped or loaded by path (datasets,
  models, uploads) are fetched into a local, size-bounded cache keyed by the object's ETag,
  so a worker reads the data locally once it has it.

Keys: ``datasets/<id>/<file>``, ``models/<id>.pt``, ``jobs/<job>/checkpoints/<name>-step<n>.pt``,
``artifacts/<job>/<id>``, ``uploads/<id>.zip``. Rows store keys, so moving the storage root
or the database to another machine breaks nothing. Clients only ever see opaque ids.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import fsspec

if TYPE_CHECKING:
    from app.settings import Settings

CHUNK = 1 << 20


class StorageError(Exception):
    """A key that is not there, or a store that cannot be reached."""


def check_key(key: str) -> str:
    """Keys are relative, '/'-separated, without '..' or empty parts (they come from ids the
    service made, but a key is never trusted to stay inside the root)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise ValueError(f"invalid storage key {key!r}")
    return key


class Storage:
    """A store rooted at `url` (a local folder or s3://bucket/prefix)."""

    def __init__(self, url: str | Path, *, cache_dir: Path | None = None, cache_max_bytes: int = 20 * 1024**3,
                 scratch_dir: Path | None = None, s3_options: dict | None = None) -> None:
        text = str(url)
        self.is_local = "://" not in text or text.startswith("file://")
        if self.is_local:
            self.root = Path(text.removeprefix("file://")).expanduser().resolve()
            self.fs = fsspec.filesystem("file")
            self.base = str(self.root)
            self.url = str(self.root)
        else:
            protocol, _, rest = text.partition("://")
            self.root = None
            self.fs = fsspec.filesystem(protocol, **(s3_options or {}))
            self.base = rest.rstrip("/")
            self.url = f"{protocol}://{self.base}"
        home = Path(tempfile.gettempdir()) / "histosynth"
        self.cache_dir = Path(cache_dir or home / "cache")
        self.cache_max_bytes = int(cache_max_bytes)
        self.scratch_root = Path(scratch_dir or (self.root / ".scratch" if self.root else home / "scratch"))
        self._cache_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        url = settings.resolved_storage_url
        remote = "://" in url and not url.startswith("file://")
        return cls(url, cache_dir=settings.resolved_home / "cache", cache_max_bytes=settings.cache_max_bytes,
                   scratch_dir=settings.resolved_home / "scratch" if remote else None,
                   s3_options=settings.s3_options() if remote else None)

    def _full(self, key: str) -> str:
        return f"{self.base}/{check_key(key)}"

    # -- writing ---------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> int:
        if self.is_local:
            return write_bytes_atomic(self.root / check_key(key), data)
        with self.fs.open(self._full(key), "wb") as fh:
            fh.write(data)
        return len(data)

    def put_file(self, key: str, path: Path) -> int:
        """Copy a local file to `key` (atomically: readers see the old object or the new one)."""
        path = Path(path)
        if self.is_local:
            target = self.root / check_key(key)
            with open(path, "rb") as src, atomic_writer(target) as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            return path.stat().st_size
        self.fs.put_file(str(path), self._full(key))
        return path.stat().st_size

    def move_file(self, key: str, path: Path) -> int:
        """Publish a complete local scratch file under `key` and drop the local one (a rename
        for a local store, whose scratch folder is on the same file system)."""
        path = Path(path)
        size = path.stat().st_size
        if self.is_local:
            target = self.root / check_key(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(path, target)
            fsync_dir(target.parent)
            return size
        self.fs.put_file(str(path), self._full(key))
        path.unlink(missing_ok=True)
        return size

    def put_tree(self, prefix: str, folder: Path) -> int:
        """Publish a fully written local folder under `prefix`, replacing what was there.

        Local: one rename (the folder must be on the same file system; `scratch` is). S3: every
        file, then nothing else under the prefix (its readers look for meta.json, written last).
        Returns the bytes published."""
        folder = Path(folder)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        total = sum(p.stat().st_size for p in files)
        if self.is_local:
            replace_dir_atomic(folder, self.root / check_key(prefix))
            return total
        self.delete_prefix(prefix)
        last = [p for p in files if p.name == "meta.json"]
        for p in [p for p in files if p.name != "meta.json"] + last:
            self.put_file(f"{prefix}/{p.relative_to(folder).as_posix()}", p)
        return total

    @contextmanager
    def scratch(self, *parts: str) -> Iterator[Path]:
        """A local folder for work in progress, removed afterwards (kept on the same file system
        as a local store so `put_tree` is a rename)."""
        path = self.scratch_root.joinpath(*parts)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    # -- reading ---------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.fs.exists(self._full(key))

    def size(self, key: str) -> int:
        try:
            return int(self.fs.size(self._full(key)))
        except FileNotFoundError as exc:
            raise StorageError(f"no object {key!r} in {self.url}") from exc

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self._full(key))
        except FileNotFoundError as exc:
            raise StorageError(f"no object {key!r} in {self.url}") from exc

    def open(self, key: str) -> BinaryIO:
        try:
            return self.fs.open(self._full(key), "rb")
        except FileNotFoundError as exc:
            raise StorageError(f"no object {key!r} in {self.url}") from exc

    def iter_bytes(self, key: str, chunk: int = CHUNK) -> Iterator[bytes]:
        with self.open(key) as fh:
            while block := fh.read(chunk):
                yield block

    def list(self, prefix: str) -> list[str]:
        """Keys of the objects under `prefix` (recursively), sorted."""
        try:
            found = self.fs.find(self._full(prefix))
        except FileNotFoundError:
            return []
        # fsspec answers paths without the protocol: "/root/..." (local), "bucket/prefix/..." (s3)
        start = len(self.base.rstrip("/")) + 1
        return sorted(f[start:] for f in found)

    def list_modified(self, prefix: str) -> dict[str, datetime]:
        """Keys of the objects under `prefix` with their last modification time (aware, UTC):
        the file's mtime in a local folder, LastModified on S3 (one listing, no request per key)."""
        try:
            infos = self.fs.find(self._full(prefix), detail=True)
        except FileNotFoundError:
            return {}
        start = len(self.base.rstrip("/")) + 1
        return {full[start:]: _modified(info) or self.fs.modified(full)
                for full, info in sorted(infos.items()) if info.get("type", "file") != "directory"}

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._full(key))
        except FileNotFoundError:
            pass

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix):
            self.delete(key)
        if self.is_local:
            shutil.rmtree(self.root / check_key(prefix), ignore_errors=True)

    # -- local copies for memmap and torch.load --------------------------------------------
    def local_path(self, key: str) -> Path:
        """A local file with the object's bytes: the file itself for a local store, else a
        cached copy (fetched once per ETag; the cache is trimmed to its size bound)."""
        if self.is_local:
            path = self.root / check_key(key)
            if not path.is_file():
                raise StorageError(f"no object {key!r} in {self.url}")
            return path
        try:
            info = self.fs.info(self._full(key))
        except FileNotFoundError as exc:
            raise StorageError(f"no object {key!r} in {self.url}") from exc
        entry = self._fetch(f"{key}@{_etag(info)}", {Path(key).name: key})
        return entry / Path(key).name

    def local_tree(self, prefix: str) -> Path:
        """A local folder with every object under `prefix` (a dataset, for np.memmap)."""
        if self.is_local:
            path = self.root / check_key(prefix)
            if not path.is_dir():
                raise StorageError(f"no folder {prefix!r} in {self.url}")
            return path
        try:
            infos = self.fs.find(self._full(prefix), detail=True)
        except FileNotFoundError:
            infos = {}
        start = len(self.base.rstrip("/")) + 1
        keys = {full[start:]: info for full, info in infos.items() if info.get("type", "file") != "directory"}
        if not keys:
            raise StorageError(f"no folder {prefix!r} in {self.url}")
        tag = ",".join(f"{k}@{_etag(i)}" for k, i in sorted(keys.items()))
        return self._fetch(tag, {k[len(prefix) + 1:]: k for k in keys})

    def _fetch(self, tag: str, files: dict[str, str]) -> Path:
        """The cache entry for `tag` (content identity: keys and ETags) holding `files`
        (relative name -> key), downloaded into a temp folder and renamed into place once."""
        entry = self.cache_dir / hashlib.sha256(f"{self.url}|{tag}".encode()).hexdigest()[:32]
        with self._cache_lock:
            if (entry / ".complete").is_file():
                os.utime(entry)  # recently used: trimmed last
                return entry
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".fetch.", dir=self.cache_dir))
            try:
                for name, key in files.items():
                    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                    self.fs.get_file(self._full(key), str(tmp / name))
                (tmp / ".complete").touch()
                if entry.exists():
                    shutil.rmtree(entry)
                os.replace(tmp, entry)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            self._trim_cache(keep=entry)
        return entry

    def _trim_cache(self, keep: Path) -> None:
        """Drop least recently used entries until the cache fits its bound. A memmap still open
        on a dropped file keeps its bytes until it is closed (POSIX unlink semantics)."""
        entries = [d for d in self.cache_dir.iterdir() if d.is_dir() and not d.name.startswith(".fetch.")]
        sizes = {d: sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) for d in entries}
        total = sum(sizes.values())
        for d in sorted(entries, key=lambda d: d.stat().st_mtime):
            if total <= self.cache_max_bytes:
                break
            if d != keep:
                shutil.rmtree(d, ignore_errors=True)
                total -= sizes[d]

    # -- key makers ------------------------------------------------------------------------
    @staticmethod
    def dataset_key(dataset_id: str) -> str:
        return f"datasets/{dataset_id}"

    @staticmethod
    def model_key(model_id: str) -> str:
        return f"models/{model_id}.pt"

    @staticmethod
    def checkpoint_prefix(job_id: str) -> str:
        return f"jobs/{job_id}/checkpoints"

    @staticmethod
    def artifact_key(job_id: str, artifact_id: str) -> str:
        return f"artifacts/{job_id}/{artifact_id}"

    @staticmethod
    def upload_key(upload_id: str) -> str:
        return f"uploads/{upload_id}.zip"


def _modified(info: dict) -> datetime | None:
    """An fsspec info's modification time as an aware UTC datetime (None when it has none)."""
    when = info.get("LastModified") or info.get("mtime")
    if isinstance(when, datetime):
        return when.astimezone(timezone.utc) if when.tzinfo else when.replace(tzinfo=timezone.utc)
    if isinstance(when, (int, float)):
        return datetime.fromtimestamp(when, tz=timezone.utc)
    return None


def _etag(info: dict) -> str:
    """An object's content identity: its ETag (S3), else size and mtime."""
    tag = info.get("ETag") or info.get("etag")
    return str(tag).strip('"') if tag else f"{info.get('size')}-{info.get('LastModified') or info.get('mtime')}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Open a temp file beside `path`; on clean exit fsync it and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> int:
    with atomic_writer(path) as fh:
        fh.write(data)
    return len(data)


def replace_dir_atomic(staging: Path, final: Path) -> None:
    """Move a fully written staging folder to its final name (replacing a stale one)."""
    for file in staging.rglob("*"):
        if file.is_file():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, final)
    fsync_dir(final.parent)
