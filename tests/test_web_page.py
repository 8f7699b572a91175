"""The dashboard's server side (issue 11), in process over ASGI on SQLite: the page and its
files are public (and ship as package data) while /v1 still needs a key; the examples grid of a
dataset follows ownership; the page's copy of the paper's Table 3 matches models/protocol.py.
The page itself is driven in a real browser by tests/test_web_browser.py."""

from __future__ import annotations

import asyncio
import io
import json
import re
import tomllib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app import auth
from app.db import session_scope
from app.main import create_app
from app.migrate import upgrade_head
from app.packed import INDEX_DTYPE, PackedWriter
from app.settings import Settings
from app.tables import Dataset
from models.protocol import PAPER_TABLE3

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "app" / "web"


@pytest.fixture
def world(tmp_path):
    settings = Settings(home=tmp_path, auth="keys")
    upgrade_head(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as s:
        alice_key, alice = auth.create_key(s, "alice", "user")
        bob = auth.create_key(s, "bob", "user")[1]
    # a packed dataset of 6 patches: 4 IDC-, 2 IDC+, one of them an edge patch (30 px tall)
    folder = settings.resolved_storage_dir / "datasets" / ("a" * 32)
    writer = PackedWriter(folder, 50)
    patches = np.stack([np.full((50, 50, 3), 40 * i, np.uint8) for i in range(6)])
    index = np.zeros(6, INDEX_DTYPE)
    index["patient"] = "10255"
    index["label"] = [0, 0, 0, 0, 1, 1]
    index["orig_h"], index["orig_w"] = 50, 50
    index["orig_h"][5] = 30
    writer.append(patches, index)
    writer.close()
    with session_scope(settings.resolved_database_url) as s:
        s.add(Dataset(id="a" * 32, name="mine", kind="real", key=f"datasets/{'a' * 32}", n_patches=6, patch_size=50,
                      n_patients=1, n_edge_patches=1, counts={"by_label": {"0": 4, "1": 2}}, created_by=alice_key.id))
    return settings, {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}


def call(settings, requests):
    async def main():  # noqa: ANN202
        transport = httpx.ASGITransport(app=create_app(settings), client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.get(url, headers=headers or {}) for url, headers in requests]
    return asyncio.run(main())


def test_page_and_files_are_public_and_v1_is_not(world):
    settings, alice, _ = world
    page, js, css, jobs, missing = call(settings, [("/", None), ("/static/js/main.js", None), ("/static/style.css", None),
                                                   ("/v1/jobs", None), ("/static/nope.js", None)])
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert '<script type="module" src="/static/js/main.js">' in page.text
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert jobs.status_code == 401  # the page is public; the data is not
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"


def test_page_has_no_outside_urls_and_every_import_resolves():
    files = [p for p in WEB.rglob("*") if p.is_file()]
    for path in files:
        text = path.read_text()
        assert not re.search(r"(src|href)=[\"']https?:", text), f"{path}: no CDN, works offline"
        assert "innerHTML" not in text or path.name in ("markdown.js", "dom.js"), f"{path}: text only"
        for target in re.findall(r"""(?:import|from)\s+["'](\.[^"']+)["']""", text):
            assert (path.parent / target).resolve().is_file(), f"{path}: import {target}"
        for target in re.findall(r"""(?:src|href)="(/static/[^"]+)\"""", text):
            assert (WEB / target.removeprefix("/static/")).is_file(), f"{path}: {target}"


def test_every_page_file_ships_as_package_data():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["app"]
    app_dir = ROOT / "app"
    shipped = {p for g in globs for p in app_dir.glob(g) if p.is_file()}
    assert {p for p in WEB.rglob("*") if p.is_file()} <= shipped


def test_paper_table_on_the_page_is_the_papers():
    text = (WEB / "js" / "paper.js").read_text()
    block = re.search(r"PAPER_TABLE3 = (\{.*?\n\});", text, re.S).group(1)
    assert json.loads(block) == PAPER_TABLE3


def test_examples_grid_follows_ownership_and_filters(world):
    settings, alice, bob = world
    base = f"/v1/datasets/{'a' * 32}/examples.png"
    r_all, r_pos, r_edge, r_bob, r_none, r_bad, r_nokey = call(settings, [
        (f"{base}?n=4&columns=2", alice), (f"{base}?label=1", alice), (f"{base}?edge=true", alice),
        (base, bob), (f"{base}?edge=true&label=0", alice), (f"{base}?n=0", alice), (base, None)])
    assert r_all.status_code == 200 and r_all.headers["content-type"] == "image/png"
    assert r_all.headers["x-matching-patches"] == "6" and r_all.headers["x-patches-shown"] == "4"
    assert Image.open(io.BytesIO(r_all.content)).size == (2 + 2 * 52, 2 + 2 * 52)
    img = np.asarray(Image.open(io.BytesIO(r_pos.content)))
    assert r_pos.headers["x-matching-patches"] == "2" and img.shape == (54, 106, 3)
    assert img[2, 2, 0] == 160 and img[2, 54, 0] == 200  # patches 4 and 5, in dataset order
    assert r_edge.headers["x-matching-patches"] == "1"
    assert r_bob.status_code == 404  # another key's dataset is missing, as everywhere
    assert r_none.status_code == 404 and r_none.json()["title"] == "No matching patches"
    assert r_bad.status_code == 422 and r_nokey.status_code == 401
