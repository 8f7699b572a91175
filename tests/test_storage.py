"""app.storage.Storage on both backends: a local folder and a real S3-compatible server."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from app.storage import Storage, StorageError, check_key


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Storage:
    if request.param == "local":
        return Storage(tmp_path / "store", cache_dir=tmp_path / "cache")
    ep = request.getfixturevalue("s3_endpoint")
    options = {"key": ep.key, "secret": ep.secret, "client_kwargs": {"endpoint_url": ep.endpoint_url,
                                                                     "region_name": "us-east-1"}}
    return Storage(f"s3://{ep.bucket}/t-{uuid.uuid4().hex[:8]}", cache_dir=tmp_path / "cache",
                   cache_max_bytes=3_000_000, scratch_dir=tmp_path / "scratch", s3_options=options)


def test_bytes_round_trip_list_and_delete(store):
    assert store.put_bytes("artifacts/j1/a", b"hello") == 5
    store.put_bytes("artifacts/j1/b", b"x" * 70_000)
    store.put_bytes("artifacts/j2/c", b"other job")
    assert store.read_bytes("artifacts/j1/a") == b"hello"
    assert store.size("artifacts/j1/b") == 70_000
    assert b"".join(store.iter_bytes("artifacts/j1/b", chunk=4096)) == b"x" * 70_000
    assert store.list("artifacts/j1") == ["artifacts/j1/a", "artifacts/j1/b"]
    assert store.exists("artifacts/j2/c")
    store.put_bytes("artifacts/j1/a", b"replaced")  # overwrite is whole: old bytes or new, never mixed
    assert store.read_bytes("artifacts/j1/a") == b"replaced"
    store.delete("artifacts/j1/a")
    store.delete("artifacts/j1/a")  # deleting twice is fine
    assert not store.exists("artifacts/j1/a")
    assert store.list("artifacts/none") == []
    with pytest.raises(StorageError, match="no object"):
        store.read_bytes("artifacts/j1/a")


def test_a_published_tree_is_memmappable_from_a_local_path(store, tmp_path):
    data = np.arange(50 * 50 * 3 * 4, dtype=np.uint8).reshape(4, 50, 50, 3)
    with store.scratch("jobs", "j9", "staging") as staging:
        data.tofile(staging / "patches.u8")
        (staging / "meta.json").write_text('{"n": 4}')
        published = store.put_tree("datasets/d1", staging)
    assert published == data.nbytes + len('{"n": 4}')
    assert store.list("datasets/d1") == ["datasets/d1/meta.json", "datasets/d1/patches.u8"]
    folder = store.local_tree("datasets/d1")
    mm = np.memmap(folder / "patches.u8", dtype=np.uint8, mode="r", shape=data.shape)
    assert np.array_equal(mm, data)
    assert store.local_tree("datasets/d1") == folder  # the second call reuses the copy


def test_the_cache_is_bounded_and_refetches_a_replaced_object(store):
    if store.is_local:
        pytest.skip("a local store reads files in place; it has no cache")
    for i in range(4):
        store.put_bytes(f"models/m{i}.pt", bytes([i]) * 1_000_000)
        assert store.local_path(f"models/m{i}.pt").read_bytes() == bytes([i]) * 1_000_000
    cached = sum(f.stat().st_size for f in store.cache_dir.rglob("*") if f.is_file())
    assert cached <= 3_000_000
    store.put_bytes("models/m3.pt", b"new" * 10)  # a new ETag: a new copy, not the stale one
    assert store.local_path("models/m3.pt").read_bytes() == b"new" * 10


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "a//b", "a/../../b", "a\\b", "a/./b"])
def test_keys_stay_inside_the_root(key):
    with pytest.raises(ValueError, match="invalid storage key"):
        check_key(key)


def test_a_missing_folder_is_a_clear_error(tmp_path):
    store = Storage(tmp_path / "s")
    with pytest.raises(StorageError, match="datasets/nope"):
        store.local_tree("datasets/nope")
    with pytest.raises(StorageError, match="models/x.pt"):
        store.local_path("models/x.pt")
    assert Path(store.root) == (tmp_path / "s").resolve()
