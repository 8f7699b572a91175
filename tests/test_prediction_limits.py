"""/v1/predictions under hostile input (issue 10, part 2), in process over ASGI: the image bomb
is refused from its header, pixels are budgeted per request, big images are shrunk before any
float copy, decoding runs off the event loop, and the process holds a bounded amount of work
(503) and a client a bounded rate (429), both with Retry-After."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from app import model_registry
from app.db import session_scope
from app.images import decode_upload
from app.main import create_app
from app.migrate import upgrade_head
from app.problems import Problem
from app.settings import Settings
from app.storage import Storage
from app.tables import ModelVersion
from tests.helpers import png_bytes

PROBLEM = "application/problem+json"


def _promote_tiny_classifier(settings: Settings) -> None:
    import torch

    from models.classifier import build_resnet18, classifier_state, config_from

    cfg = config_from({"weights": "none", "mode": "finetune", "input_size": 32})
    torch.manual_seed(0)
    payload = classifier_state(build_resnet18("none", "finetune"), cfg)
    buf = io.BytesIO()
    torch.save(payload, buf)
    Storage.from_settings(settings).put_bytes("models/tiny.pt", buf.getvalue())
    with session_scope(settings.resolved_database_url) as s:
        row = model_registry.register(s, ModelVersion(kind="classifier", label=None, key="models/tiny.pt",
                                                      config=cfg.to_dict(), metrics={}))
        model_registry.promote(s, s.get(ModelVersion, row.id))


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = Settings(home=tmp_path, max_image_pixels=512 * 512, max_request_pixels=4 * 512 * 512,
                 predict_max_side=128, predict_max_inflight_images=8, rate_prediction_images_per_minute=40)
    upgrade_head(s.resolved_database_url)
    _promote_tiny_classifier(s)
    return s


def _files(*blobs: bytes) -> list:
    return [("files", (f"p{i}.png", b, "image/png")) for i, b in enumerate(blobs)]


def _problem(resp: httpx.Response, status: int, *words: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    text = (body["title"] + " " + body.get("detail", "")).lower()
    assert all(w.lower() in text for w in words), body
    assert "Traceback" not in resp.text
    return body


def _blank_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (255, 255, 255)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _run(settings: Settings, scenario):  # noqa: ANN001, ANN202
    async def main():  # noqa: ANN202
        app = create_app(settings)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                     timeout=60) as client:
            return await scenario(client, app)
    return asyncio.run(main())


def test_the_bomb_request_is_refused_from_the_headers(settings):
    # The review's request: 64 blank 4096x4096 PNGs, ~3 MB on the wire, several GB decoded.
    bomb = _blank_png(4096)
    assert len(bomb) < 100_000

    async def scenario(client, app):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        resp = await client.post("/v1/predictions", files=_files(*[bomb] * 4))
        return resp, time.perf_counter() - t0
    resp, seconds = _run(settings, scenario)
    _problem(resp, 413, "4096x4096", "HISTOSYNTH_MAX_IMAGE_PIXELS")
    assert seconds < 5  # nothing was decoded


def test_pixels_are_budgeted_per_request(settings):
    ok = png_bytes(512, 512, seed=1)  # each at the per-image cap, 4 of them fill the request budget

    async def scenario(client, app):  # noqa: ANN001, ANN202
        return (await client.post("/v1/predictions", files=_files(*[ok] * 5)),
                await client.post("/v1/predictions", files=_files(*[ok] * 4)))
    too_many, fine = _run(settings, scenario)
    _problem(too_many, 413, "pixels", "HISTOSYNTH_MAX_REQUEST_PIXELS")
    assert fine.status_code == 200, fine.text
    probs = [p["probability_idc"] for p in fine.json()["predictions"]]
    assert len(probs) == 4 and all(0.0 <= p <= 1.0 for p in probs) and len(set(probs)) == 1  # same image


def test_large_images_are_shrunk_on_uint8_before_any_float_copy():
    arr = decode_upload(png_bytes(400, 300, seed=2), "big.png", max_pixels=10**6, max_side=100)
    assert arr.dtype == np.uint8 and arr.shape == (75, 100, 3)
    small = decode_upload(png_bytes(50, 50, seed=3), "patch.png", max_pixels=10**6, max_side=100)
    assert small.shape == (50, 50, 3)  # patches are untouched: serving equals evaluation
    buf = io.BytesIO()
    Image.new("RGB", (800, 800), (10, 200, 30)).save(buf, format="JPEG")
    jpeg = decode_upload(buf.getvalue(), "big.jpg", max_pixels=10**6, max_side=100)
    assert jpeg.shape == (100, 100, 3) and abs(int(jpeg[50, 50, 1]) - 200) < 8
    with pytest.raises(Problem) as err:
        decode_upload(png_bytes(1100, 1000), "huge.png", max_pixels=10**6, max_side=100)
    assert err.value.status == 413


def test_the_event_loop_answers_while_images_decode(settings, monkeypatch):
    # Decoding is made slow; /healthz must still answer at once, because decoding runs on
    # worker threads (and at most predict_decode_threads of them at once).
    import app.api.routes.predictions as route

    running, peak, lock = [0], [0], threading.Lock()
    real = route.decode_upload

    def slow_decode(*args):  # noqa: ANN001, ANN202
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.5)
        with lock:
            running[0] -= 1
        return real(*args)
    monkeypatch.setattr(route, "decode_upload", slow_decode)

    async def scenario(client, app):  # noqa: ANN001, ANN202
        predict = asyncio.create_task(client.post("/v1/predictions", files=_files(*[png_bytes(seed=i) for i in range(4)])))
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        health = await client.get("/healthz")
        health_s = time.perf_counter() - t0
        return await predict, health, health_s
    resp, health, health_s = _run(settings, scenario)
    assert resp.status_code == 200 and len(resp.json()["predictions"]) == 4
    assert health.status_code == 200 and health_s < 0.3
    assert peak[0] == settings.predict_decode_threads  # parallel, and bounded


def test_too_much_work_in_flight_is_503_with_retry_after(settings, monkeypatch):
    import app.api.routes.predictions as route

    real = route.decode_upload
    monkeypatch.setattr(route, "decode_upload", lambda *a: (time.sleep(0.3), real(*a))[1])

    async def scenario(client, app):  # noqa: ANN001, ANN202
        first = asyncio.create_task(client.post("/v1/predictions", files=_files(*[png_bytes(seed=i) for i in range(6)])))
        await asyncio.sleep(0.1)
        second = await client.post("/v1/predictions", files=_files(*[png_bytes(seed=9)] * 3))  # 6 + 3 > 8
        third = await client.post("/v1/predictions", files=_files(png_bytes(seed=9)))  # 6 + 1 fits
        return await first, second, third, app.state.prediction_gate.current
    first, second, third, left = _run(settings, scenario)
    assert first.status_code == 200 and third.status_code == 200
    _problem(second, 503, "busy")
    assert second.headers["retry-after"] == "1"
    assert left == 0  # every admission was released


def test_a_client_past_its_rate_gets_429_with_retry_after(settings):
    img = png_bytes(seed=5)

    async def scenario(client, app):  # noqa: ANN001, ANN202
        answers = [await client.post("/v1/predictions", files=_files(*[img] * 8)) for _ in range(6)]
        over_gate = await client.post("/v1/predictions", files=_files(*[img] * 9))
        return answers, over_gate
    answers, over_gate = _run(settings, scenario)
    assert [a.status_code for a in answers] == [200] * 5 + [429]  # 40 images a minute: the 6th 8 are over
    body = _problem(answers[5], 429, "40 images per minute")
    wait = int(answers[5].headers["retry-after"])
    assert 1 <= wait <= 60 and f"{wait} s" in body["detail"]
    # More than the process ever admits at once can never pass: 413, not a Retry-After that lies.
    _problem(over_gate, 413, "HISTOSYNTH_PREDICT_MAX_INFLIGHT_IMAGES")


def test_job_creation_is_rate_limited_per_client(tmp_path):
    settings = Settings(home=tmp_path, rate_jobs_per_minute=3)
    upgrade_head(settings.resolved_database_url)

    async def scenario(client, app):  # noqa: ANN001, ANN202
        return [await client.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(tmp_path / f"nope{i}")}})
                for i in range(4)]
    answers = _run(settings, scenario)
    # The first three are judged on their merits (a missing path: 422); the fourth is refused first.
    assert [a.status_code for a in answers] == [422, 422, 422, 429]
    assert int(answers[3].headers["retry-after"]) >= 1
