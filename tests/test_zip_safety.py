"""Zip and upload safety (issue 10, part 3): caps counted while extracting, only the public
layout extracted, the upload route refusing early off the event loop, uploads expiring, and
an ingest's work folder removed when it fails. No service processes: functions and the ASGI app
are called in-process."""

from __future__ import annotations

import asyncio
import functools
import io
import os
import struct
import threading
import time
import zipfile
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from app.job_kinds import IngestParams
from app.migrate import upgrade_head
from app.settings import Settings
from app.storage import Storage
from app.uploads import ZipLimits, check_upload, delete_expired_uploads
from tests.helpers import png_bytes, zip_bytes
from worker.context import UserError
from worker.idc_layout import LayoutError, ZipCapError, safe_extract
from worker.ingest import handle_ingest

MiB = 1024**2
DEFAULTS = ZipLimits.from_settings(Settings(_env_file=None))
PATCH_A = "IDC_regular_ps50_idx5/100/0/100_idx5_x1_y1_class0.png"
PATCH_B = "IDC_regular_ps50_idx5/100/1/100_idx5_x51_y1_class1.png"


# -- building zips, bombs included ---------------------------------------------------------
@functools.lru_cache(maxsize=None)
def deflated_zeros(n: int) -> tuple[bytes, int]:
    """A raw deflate stream of `n` zero bytes and their CRC-32 (made once per size)."""
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    block = bytes(MiB)
    out, crc = [], 0
    for _ in range(n // MiB):
        out.append(comp.compress(block))
        crc = zlib.crc32(block, crc)
    out.append(comp.flush())
    return b"".join(out), crc


def raw_zip(entries: list[tuple[str, bytes, int, int]], *, declared_count: int | None = None) -> bytes:
    """A zip written by hand, so its headers can say anything: entries are (name, deflated
    bytes, crc, declared uncompressed size); `declared_count` overrides the end record's count."""
    out, central = io.BytesIO(), []
    for name, data, crc, size in entries:
        offset, raw_name = out.tell(), name.encode()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size, len(raw_name), 0))
        out.write(raw_name + data)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), size,
                                   len(raw_name), 0, 0, 0, 0, 0, offset) + raw_name)
    cd_start, cd = out.tell(), b"".join(central)
    out.write(cd)
    count = len(entries) if declared_count is None else declared_count
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(cd), cd_start, 0))
    return out.getvalue()


def bomb(n_entries: int = 3, each: int = 200 * MiB, declared: int | None = None) -> bytes:
    """`n_entries` patches of the layout, each `each` zero bytes (~1000:1 deflated)."""
    data, crc = deflated_zeros(each)
    return raw_zip([(f"IDC_regular_ps50_idx5/100/0/100_idx5_x{i}_y1_class0.png", data, crc,
                     each if declared is None else declared) for i in range(n_entries)])


def write(tmp_path: Path, name: str, blob: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def limits(**changes) -> ZipLimits:
    return ZipLimits(**{**DEFAULTS.__dict__, **changes})


@pytest.fixture
def decompressed(monkeypatch) -> list[int]:
    """Bytes handed out by zipfile's decompressing reader during the test: proof that a cap
    stops the extraction as it reads, not after unpacking everything."""
    counted = [0]
    read = zipfile.ZipExtFile.read

    def counting_read(self, n=-1):
        data = read(self, n)
        counted[0] += len(data)
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    return counted


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


# -- caps counted while extracting ---------------------------------------------------------
def test_defaults_fit_50px_patches():
    assert DEFAULTS == ZipLimits(8 * 1024**3, 500_000, MiB, 100.0)
    assert Settings(_env_file=None).upload_ttl_seconds == 7 * 24 * 3600


def test_zip_bomb_is_refused_while_extracting_and_nothing_is_left(tmp_path, decompressed):
    path = write(tmp_path, "bomb.zip", bomb())  # 600 MiB of zeros in ~0.6 MiB
    assert path.stat().st_size < 2 * MiB
    target = tmp_path / "out"
    with pytest.raises(ZipCapError, match="per-entry cap of 1048576 bytes .HISTOSYNTH_ZIP_MAX_ENTRY_BYTES"):
        safe_extract(path, target, DEFAULTS)
    assert not target.exists()
    assert decompressed[0] <= MiB + 64 * 1024, "the entry was unpacked beyond its cap before the check"
    # Through the ingest job's helper: a UserError (the job's error) naming the cap, nothing left.
    from worker.ingest import _extract

    with pytest.raises(UserError, match="zip refused: .*HISTOSYNTH_ZIP_MAX_ENTRY_BYTES"):
        _extract(path, target, DEFAULTS)
    assert not target.exists()


def test_total_cap_is_counted_across_entries(tmp_path, decompressed):
    path = write(tmp_path, "bomb.zip", bomb(n_entries=3, each=24 * MiB))
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("was here before")  # only what the extraction wrote is deleted
    cap = limits(max_total_bytes=40 * MiB, max_entry_bytes=1024 * MiB, max_ratio=1e9)
    with pytest.raises(ZipCapError, match="cap of 41943040 bytes .HISTOSYNTH_ZIP_MAX_TOTAL_BYTES"):
        safe_extract(path, target, cap)
    assert [p.name for p in files_under(target)] == ["keep.txt"]
    assert not (target / "IDC_regular_ps50_idx5").exists()
    assert 40 * MiB < decompressed[0] <= 40 * MiB + 64 * 1024
    # The same zip under a total cap it fits extracts (the cap, not something else, refused it).
    report = safe_extract(path, tmp_path / "fits", limits(max_total_bytes=72 * MiB, max_entry_bytes=1024 * MiB,
                                                          max_ratio=1e9))
    assert report.n_extracted == 3 and report.n_bytes == 72 * MiB


def test_per_entry_cap_on_an_incompressible_entry(tmp_path):
    blob = zip_bytes({PATCH_A: png_bytes(), PATCH_B: os.urandom(2 * MiB)})  # stored: ratio 1
    path = write(tmp_path, "big.zip", blob)
    with pytest.raises(ZipCapError, match=f"entry '{PATCH_B}' .*HISTOSYNTH_ZIP_MAX_ENTRY_BYTES"):
        safe_extract(path, tmp_path / "out", DEFAULTS)
    assert not (tmp_path / "out").exists()
    assert safe_extract(path, tmp_path / "ok", limits(max_entry_bytes=3 * MiB)).n_extracted == 2


def test_ratio_cap(tmp_path, decompressed):
    data, crc = deflated_zeros(8 * MiB)  # ~8 KiB: a ratio near 1000
    path = write(tmp_path, "dense.zip", raw_zip([(PATCH_A, data, crc, 8 * MiB)]))
    roomy = dict(max_entry_bytes=64 * MiB)
    with pytest.raises(ZipCapError, match="ratio over the cap of 100 .HISTOSYNTH_ZIP_MAX_RATIO"):
        safe_extract(path, tmp_path / "out", limits(**roomy))
    assert not (tmp_path / "out").exists()
    assert decompressed[0] <= 100 * len(data) + 64 * 1024
    assert safe_extract(path, tmp_path / "ok", limits(max_ratio=5000, **roomy)).n_bytes == 8 * MiB
    # Real patches (PNG is compressed already) are far from the ratio cap.
    assert safe_extract(write(tmp_path, "real.zip", zip_bytes({PATCH_A: png_bytes(seed=1)})), tmp_path / "real",
                        DEFAULTS).n_extracted == 1


def test_entry_cap_counted_even_when_the_end_record_lies(tmp_path):
    entries = {f"100/0/100_idx5_x{i}_y1_class0.png": png_bytes() for i in range(11)}
    honest = write(tmp_path, "many.zip", zip_bytes(entries))
    with pytest.raises(ZipCapError, match="declares 11 entries, more than the cap of 10 .HISTOSYNTH_ZIP_MAX_ENTRIES"):
        safe_extract(honest, tmp_path / "out", limits(max_entries=10))
    # An end record that says 5: the entries are counted as they are read.
    small, crc = zlib.compress(b"x")[2:-4], zlib.crc32(b"x")
    liar = write(tmp_path, "liar.zip", raw_zip([(name, small, crc, 1) for name in entries], declared_count=5))
    with pytest.raises(ZipCapError, match="has at least 11 entries, more than the cap of 10"):
        safe_extract(liar, tmp_path / "out", limits(max_entries=10))
    assert not (tmp_path / "out").exists()
    assert safe_extract(honest, tmp_path / "ok", limits(max_entries=11)).n_extracted == 11


def test_a_header_that_understates_the_size_gets_nothing_through(tmp_path, decompressed):
    """The central directory says 1 KiB for 200 MiB: the early check believes it, the extraction
    stops at the declared size and zipfile's CRC check refuses the entry; nothing is left."""
    path = write(tmp_path, "liar.zip", bomb(n_entries=1, declared=1024))
    assert check_upload(path, DEFAULTS) == 1
    with pytest.raises(zipfile.BadZipFile):
        safe_extract(path, tmp_path / "out", DEFAULTS)
    assert not (tmp_path / "out").exists()
    assert decompressed[0] <= 1024


# -- only the public layout is extracted ---------------------------------------------------
def test_only_layout_names_are_extracted_the_rest_is_skipped_and_counted(tmp_path):
    blob = zip_bytes({
        PATCH_A: png_bytes(seed=1),
        PATCH_B: png_bytes(seed=2),
        "IDC_regular_ps50_idx5/README.md": b"# notes",
        "IDC_regular_ps50_idx5/.DS_Store": b"\0\0\0\1Bud1",
        "IDC_regular_ps50_idx5/100/0/.DS_Store": b"\0",
        "__MACOSX/IDC_regular_ps50_idx5/100/0/._100_idx5_x1_y1_class0.png": b"\0\5\26\7",
        "IDC_regular_ps50_idx5/100/1/readme.png": png_bytes(),
        "IDC_regular_ps50_idx5/100/0/100_idx5_x2_y1_class1.png": png_bytes(),  # class1 in folder 0
        "IDC_regular_ps50_idx5/100/0/101_idx5_x3_y1_class0.png": png_bytes(),  # another patient
        "a/b/100/0/100_idx5_x4_y1_class0.png": png_bytes(),  # too deep
        "notes.txt": b"hello",
    })
    buf = io.BytesIO(blob)
    with zipfile.ZipFile(buf, "a") as zf:  # directory entries
        zf.writestr("IDC_regular_ps50_idx5/100/", b"")
        zf.writestr("__MACOSX/", b"")
    path = write(tmp_path, "mixed.zip", buf.getvalue())
    out = tmp_path / "out"
    report = safe_extract(path, out, DEFAULTS)
    assert sorted(p.relative_to(out).as_posix() for p in files_under(out)) == sorted([PATCH_A, PATCH_B])
    assert not (out / "__MACOSX").exists() and not (out / "a").exists()
    assert report.n_extracted == 2 and len(report.skipped) == 9 and report.n_entries == 13
    reasons = dict(report.skipped)
    assert "name is not" in reasons["IDC_regular_ps50_idx5/100/1/readme.png"]
    assert "class1 in name" in reasons["IDC_regular_ps50_idx5/100/0/100_idx5_x2_y1_class1.png"]
    assert "patient 101 in name" in reasons["IDC_regular_ps50_idx5/100/0/101_idx5_x3_y1_class0.png"]
    assert "macOS" in reasons["IDC_regular_ps50_idx5/.DS_Store"]
    assert "deeper" in reasons["a/b/100/0/100_idx5_x4_y1_class0.png"]
    assert all(r.endswith("(not extracted)") for r in reasons.values())
    # Skipped entries are not refused: their size does not count against the caps either.
    assert check_upload(path, DEFAULTS) == 13


def test_unsafe_names_are_still_refused_before_anything_is_written(tmp_path):
    path = write(tmp_path, "evil.zip", zip_bytes({PATCH_A: png_bytes(), "../100/0/100_idx5_x1_y1_class0.png": b"x"}))
    with pytest.raises(LayoutError, match="outside the target folder"):
        safe_extract(path, tmp_path / "out", DEFAULTS)
    assert not (tmp_path / "out").exists()


# -- the upload route ----------------------------------------------------------------------
def post_uploads(settings: Settings, bodies: list[bytes], monkeypatch) -> tuple[list[httpx.Response], set[int]]:
    """POST each body to /v1/uploads in-process; also the threads check_upload ran on."""
    from app.api.routes import uploads as route
    from app.main import create_app

    threads: set[int] = set()
    real = route.check_upload

    def recording(*args):
        threads.add(threading.get_ident())
        return real(*args)

    monkeypatch.setattr(route, "check_upload", recording)

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.post("/v1/uploads", content=b, headers={"content-type": "application/zip"})
                    for b in bodies]

    return asyncio.run(scenario()), threads


def test_upload_route_refuses_declared_excess_early_off_the_event_loop(tmp_path, monkeypatch):
    settings = Settings(_env_file=None, home=tmp_path / "home", zip_max_entries=5, zip_max_total_bytes=100 * MiB)
    upgrade_head(settings.resolved_database_url)  # the route records whose upload it is
    good = zip_bytes({PATCH_A: png_bytes(seed=1), PATCH_B: png_bytes(seed=2), "README.md": b"x" * 5 * MiB})
    many = zip_bytes({f"100/0/100_idx5_x{i}_y1_class0.png": png_bytes() for i in range(6)})
    (ok, too_many, bombed), threads = post_uploads(settings, [good, many, bomb()], monkeypatch)
    assert ok.status_code == 201, ok.text
    assert ok.json()["n_entries"] == 3
    store = Storage.from_settings(settings)
    assert store.list("uploads") == [Storage.upload_key(ok.json()["upload_id"])]
    for resp, words in ((too_many, "declares 6 entries, more than the cap of 5 (HISTOSYNTH_ZIP_MAX_ENTRIES)"),
                        (bombed, "HISTOSYNTH_ZIP_MAX_TOTAL_BYTES")):
        assert resp.status_code == 422, resp.text
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert resp.json()["title"] == "Zip refused" and words in resp.json()["detail"]
    assert "HISTOSYNTH_ZIP_MAX_ENTRY_BYTES" in " ".join(bombed.json()["problems"])
    assert files_under(store.scratch_root) == []  # refused uploads leave nothing
    assert len(threads) == 1 and threading.get_ident() not in threads, "the zip was parsed on the event loop"


# -- expiry --------------------------------------------------------------------------------
def test_expired_uploads_are_deleted_fresh_ones_kept(tmp_path):
    store = Storage(tmp_path / "store")
    for name in ("old", "fresh"):
        store.put_bytes(f"uploads/{name}.zip", zip_bytes({PATCH_A: png_bytes()}))
    store.put_bytes("datasets/d1/meta.json", b"{}")
    eight_days_ago = time.time() - 8 * 24 * 3600
    for key in ("uploads/old.zip", "datasets/d1/meta.json"):
        os.utime(store.root / key, (eight_days_ago, eight_days_ago))
    modified = store.list_modified("uploads")
    assert set(modified) == {"uploads/old.zip", "uploads/fresh.zip"}
    assert abs(modified["uploads/old.zip"].timestamp() - eight_days_ago) < 2
    assert modified["uploads/fresh.zip"].tzinfo is not None
    assert store.list_modified("nothing-here") == {}

    assert delete_expired_uploads(store, 7 * 24 * 3600) == ["uploads/old.zip"]
    assert store.list("uploads") == ["uploads/fresh.zip"]
    assert store.exists("datasets/d1/meta.json")  # only uploads expire
    assert delete_expired_uploads(store, 7 * 24 * 3600) == []
    later = datetime.now(timezone.utc) + timedelta(days=8)
    assert delete_expired_uploads(store, 7 * 24 * 3600, now=later) == ["uploads/fresh.zip"]
    assert store.list("uploads") == []


def test_the_worker_sweep_uses_the_ttl_setting(tmp_path):
    from worker.tasks import expire_uploads_once, upload_sweep_seconds

    settings = Settings(_env_file=None, home=tmp_path / "home", upload_ttl_seconds=60)
    store = Storage.from_settings(settings)
    store.put_bytes("uploads/a.zip", b"PK")
    store.put_bytes("uploads/b.zip", b"PK")
    two_minutes_ago = time.time() - 120
    os.utime(store.root / "uploads/a.zip", (two_minutes_ago, two_minutes_ago))
    assert expire_uploads_once(settings) == ["uploads/a.zip"]
    assert store.list("uploads") == ["uploads/b.zip"]
    assert upload_sweep_seconds(settings) == 15
    assert upload_sweep_seconds(Settings(_env_file=None)) == 600


# -- the ingest job: its work folder goes whatever happens ---------------------------------
class FakeContext:
    """What handle_ingest uses of a JobContext, without a database."""

    def __init__(self, settings: Settings, **params) -> None:
        self.settings, self.storage = settings, Storage.from_settings(settings)
        self.p = IngestParams(**params)
        self.job_id, self.attempt = "job-under-test", 1
        self.artifacts: dict[str, bytes] = {}

    def progress(self, *args, **kwargs) -> None:
        pass

    def should_abort(self) -> bool:
        return False

    def add_artifact(self, name: str, media_type: str, data: bytes) -> str:
        self.artifacts[name] = data
        return "artifact-" + name

    def work_folder(self) -> Path:
        return self.storage.scratch_root / "jobs" / self.job_id / f"attempt-{self.attempt}"


def upload(settings: Settings, blob: bytes, upload_id: str) -> str:
    Storage.from_settings(settings).put_bytes(Storage.upload_key(upload_id), blob)
    return upload_id


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(_env_file=None, home=tmp_path / "home")


def test_failed_ingests_remove_their_work_folder(settings):
    bomb_id = upload(settings, bomb(), "a" * 32)
    ctx = FakeContext(settings, upload_id=bomb_id)
    with pytest.raises(UserError, match="zip refused: .*HISTOSYNTH_ZIP_MAX_ENTRY_BYTES"):
        handle_ingest(ctx)
    assert not ctx.work_folder().exists() and files_under(ctx.storage.scratch_root) == []

    # Extracted, then decoded: every patch unreadable; the staging files go too.
    garbage = upload(settings, zip_bytes({PATCH_A: b"\x89PNG\r\n\x1a\nbroken", PATCH_B: b"not a png"}), "b" * 32)
    ctx = FakeContext(settings, upload_id=garbage)
    with pytest.raises(UserError, match="no readable patches found .2 bad files"):
        handle_ingest(ctx)
    assert not ctx.work_folder().exists() and files_under(ctx.storage.scratch_root) == []

    junk = upload(settings, zip_bytes({"README.md": b"x", "__MACOSX/._a": b"\0"}), "c" * 32)
    with pytest.raises(UserError, match="no patch of the public layout .*2 entries skipped"):
        handle_ingest(FakeContext(settings, upload_id=junk))
    assert files_under(ctx.storage.scratch_root) == []

    # An upload that expired (or was deleted) before its ingest ran.
    assert delete_expired_uploads(ctx.storage, 1, now=datetime.now(timezone.utc) + timedelta(seconds=5))
    ctx = FakeContext(settings, upload_id=bomb_id)
    with pytest.raises(UserError, match=f"upload {bomb_id} no longer exists"):
        handle_ingest(ctx)
    assert files_under(ctx.storage.scratch_root) == []


def test_ingest_of_an_upload_lists_skipped_entries_as_bad_files(settings):
    blob = zip_bytes({PATCH_A: png_bytes(seed=1), PATCH_B: png_bytes(seed=2),
                      "IDC_regular_ps50_idx5/100/1/readme.png": png_bytes(), "__MACOSX/._x": b"\0"})
    ctx = FakeContext(settings, upload_id=upload(settings, blob, "d" * 32))
    outcome = handle_ingest(ctx)
    result = outcome.result
    assert result["n_patches"] == 2 and result["n_zip_entries_skipped"] == 2 and result["n_bad_files"] == 2
    files = {b["file"]: b["reason"] for b in result["bad_files"]}
    assert "name is not" in files["100/1/readme.png"]  # relative to the layout's root, like the scanner's
    assert "macOS" in files["__MACOSX/._x"]
    assert files_under(ctx.storage.scratch_root) == []


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Storage:
    """Both backends, as in tests/test_storage.py (s3: the SeaweedFS server of conftest)."""
    if request.param == "local":
        return Storage(tmp_path / "store")
    import uuid

    ep = request.getfixturevalue("s3_endpoint")
    options = {"key": ep.key, "secret": ep.secret, "client_kwargs": {"endpoint_url": ep.endpoint_url,
                                                                     "region_name": "us-east-1"}}
    return Storage(f"s3://{ep.bucket}/t-{uuid.uuid4().hex[:8]}", cache_dir=tmp_path / "cache",
                   scratch_dir=tmp_path / "scratch", s3_options=options)


def test_expiry_reads_modification_times_on_both_backends(store):
    store.put_bytes("uploads/old.zip", b"PK old")
    old = store.list_modified("uploads")["uploads/old.zip"]
    time.sleep(1.1)  # S3's LastModified has one-second resolution
    store.put_bytes("uploads/fresh.zip", b"PK fresh")
    modified = store.list_modified("uploads")
    assert set(modified) == {"uploads/old.zip", "uploads/fresh.zip"}
    assert all(t.tzinfo is not None for t in modified.values())
    assert modified["uploads/old.zip"] == old < modified["uploads/fresh.zip"]
    assert abs((datetime.now(timezone.utc) - old).total_seconds()) < 60
    # The cutoff falls between the two: the older one goes.
    assert delete_expired_uploads(store, 1000, now=old + timedelta(seconds=1000.5)) == ["uploads/old.zip"]
    assert store.list("uploads") == ["uploads/fresh.zip"]
