"""The real object store the tests use (tests/s3_server.py: SeaweedFS `weed server -s3`),
reached through s3fs as the app reaches it: signed requests, path-style, region us-east-1."""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest
import s3fs

from app.settings import Settings


def filesystem(endpoint, **overrides) -> s3fs.S3FileSystem:
    opts = {"key": endpoint.key, "secret": endpoint.secret,
            "client_kwargs": {"endpoint_url": endpoint.endpoint_url, "region_name": "us-east-1"}}
    opts.update(overrides)
    # A fresh instance each time: s3fs caches instances and listings, which would hide the server.
    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **opts)


@pytest.fixture
def prefix(s3_endpoint) -> str:
    return f"{s3_endpoint.bucket}/t-{uuid.uuid4().hex[:10]}"


def test_5mb_round_trip_list_range_delete(s3_endpoint, prefix):
    fs = filesystem(s3_endpoint)
    data = os.urandom(5 * 1024 * 1024 + 123)  # past s3fs's 5 MiB block and the filer's 4 MiB chunk
    big = f"{prefix}/blobs/big.bin"
    fs.pipe_file(big, data)

    # Read back byte-identical, by a fresh client (nothing served from a local cache).
    again = filesystem(s3_endpoint)
    assert hashlib.sha256(again.cat_file(big)).digest() == hashlib.sha256(data).digest()
    with again.open(big, "rb") as f:
        assert f.read() == data
    assert again.info(big)["size"] == len(data)

    # Listing a prefix shows exactly what is under it.
    for name in ("a.txt", "b.txt", "sub/c.txt"):
        fs.pipe_file(f"{prefix}/list/{name}", name.encode())
    fs.pipe_file(f"{prefix}/listing-not-this.txt", b"x")
    assert sorted(fs.ls(f"{prefix}/list", detail=False)) == [
        f"{prefix}/list/a.txt", f"{prefix}/list/b.txt", f"{prefix}/list/sub"]
    assert sorted(fs.find(f"{prefix}/list")) == [
        f"{prefix}/list/a.txt", f"{prefix}/list/b.txt", f"{prefix}/list/sub/c.txt"]

    # Ranged reads (HTTP Range), across the 4 MiB chunk boundary too.
    boundary = 4 * 1024 * 1024
    assert again.cat_file(big, start=boundary - 100, end=boundary + 100) == data[boundary - 100:boundary + 100]
    assert again.cat_file(big, start=len(data) - 10) == data[-10:]
    with again.open(big, "rb", block_size=64 * 1024) as f:
        f.seek(1_000_003)
        assert f.read(4096) == data[1_000_003:1_000_003 + 4096]

    # Delete: one object, then a whole prefix.
    fs.rm(big)
    assert not filesystem(s3_endpoint).exists(big)
    with pytest.raises(FileNotFoundError):
        filesystem(s3_endpoint).cat_file(big)
    fs.rm(f"{prefix}/list", recursive=True)
    # No object is left. (Unlike AWS, SeaweedFS may still show the emptied folder as a common
    # prefix in delimiter listings for a while, so s3fs can see an empty "directory" there.)
    left = filesystem(s3_endpoint).find(f"{prefix}/list", detail=True)
    assert [name for name, info in left.items() if info["type"] == "file"] == []
    assert filesystem(s3_endpoint).cat_file(f"{prefix}/listing-not-this.txt") == b"x"


@pytest.mark.parametrize("creds", [
    {"secret": "not-the-secret"},
    {"key": "nobody", "secret": "nothing"},
    {"anon": True, "key": None, "secret": None},
], ids=["wrong-secret", "unknown-key", "unsigned"])
def test_wrong_credentials_are_refused(s3_endpoint, prefix, creds):
    good = filesystem(s3_endpoint)
    good.pipe_file(f"{prefix}/secret.txt", b"private")
    bad = filesystem(s3_endpoint, **creds)
    with pytest.raises(PermissionError):
        bad.cat_file(f"{prefix}/secret.txt")
    with pytest.raises(PermissionError):
        bad.pipe_file(f"{prefix}/intruder.txt", b"x")
    with pytest.raises(PermissionError):
        bad.ls(s3_endpoint.bucket)
    assert not good.exists(f"{prefix}/intruder.txt")


def test_storage_env_is_what_settings_read(s3_endpoint, monkeypatch):
    env = s3_endpoint.storage_env("store")
    assert env == {
        "HISTOSYNTH_STORAGE_URL": "s3://histosynth-test/store",
        "HISTOSYNTH_S3_ENDPOINT_URL": s3_endpoint.endpoint_url,
        "HISTOSYNTH_S3_KEY": "histosynth",
        "HISTOSYNTH_S3_SECRET": "histosynth-secret",
        "HISTOSYNTH_S3_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.uses_object_store
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **settings.s3_options())
    path = settings.resolved_storage_url.removeprefix("s3://") + f"/{uuid.uuid4().hex}.txt"
    fs.pipe_file(path, b"from settings")
    assert fs.cat_file(path) == b"from settings"
    fs.rm(path)
