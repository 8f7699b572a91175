"""ResNet18 over REST: train, promote, predict (with every kind of bad and odd upload), and
the four-way protocol on a real and a synthetic dataset."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import copy_patches
from tests.helpers import png_bytes
from tests.test_service_ingest import assert_problem

pytestmark = pytest.mark.integration
TINY_GAN = {"width": 1 / 32, "latent_dim": 32, "batch_size": 8, "fixed_samples": 4}


@pytest.fixture(scope="module")
def real_dataset(service, shared_data, tmp_path_factory):
    root = copy_patches(shared_data, tmp_path_factory.mktemp("cls_slice"), ["10255", "10273", "10275", "10299"],
                        per_label=40)
    job = service.wait_job(service.client.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(root)}}).json()["id"])
    assert job["state"] == "succeeded", job["error"]
    return job["result"]["dataset_id"], root


@pytest.fixture(scope="module")
def classifier(service, real_dataset):
    params = {"dataset_id": real_dataset[0], "weights": "none", "mode": "finetune", "epochs": 2, "input_size": 32}
    resp = service.client.post("/v1/jobs", json={"kind": "train_classifier", "params": params})
    assert resp.status_code == 202, resp.text
    job = service.wait_job(resp.json()["id"])
    assert job["state"] == "succeeded", job["error"]
    return job


def files(*items):
    return [("files", item) for item in items]


def test_predictions_need_a_promoted_classifier(service, real_dataset):
    resp = service.client.post("/v1/predictions", files=files(("a.png", png_bytes(), "image/png")))
    body = assert_problem(resp, 409, "no classifier")
    assert "promote" in body["detail"]


def batch_metrics(service) -> tuple[float, float]:
    """(count, sum) of the API's histosynth_prediction_batch_size histogram."""
    values = {line.split()[0]: float(line.split()[1]) for line in service.client.get("/metrics").text.splitlines()
              if line.startswith("histosynth_prediction_batch_size_")}
    return values["histosynth_prediction_batch_size_count"], values["histosynth_prediction_batch_size_sum"]


def test_train_promote_predict_real_patches(service, classifier, real_dataset):
    model_id = classifier["result"]["model_id"]
    listed = service.client.get("/v1/models", params={"kind": "classifier"}).json()
    mine = next(m for m in listed["data"] if m["id"] == model_id)
    assert 0.0 <= mine["metrics"]["val"]["accuracy"] <= 1.0 and mine["promoted"] is False
    assert mine["metrics"]["n_train"] + mine["metrics"]["n_val"] == 4 * 40 * 2  # 4 patients, 40 per label
    promoted = service.client.post(f"/v1/models/{model_id}/promote").json()
    assert promoted["promoted"] is True
    root = real_dataset[1]
    pos = next((root / "10273" / "1").glob("*.png"))
    neg = next((root / "10273" / "0").glob("*.png"))
    before = batch_metrics(service)
    resp = service.client.post("/v1/predictions", files=files((pos.name, pos.read_bytes(), "image/png"),
                                                               (neg.name, neg.read_bytes(), "image/png")))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == {"id": model_id, "version": promoted["version"], "precision": "fp32", "starter": False}
    assert [p["filename"] for p in body["predictions"]] == [pos.name, neg.name]
    for p in body["predictions"]:
        assert 0.0 <= p["probability_idc"] <= 1.0
        assert p["label"] == ("IDC+" if p["probability_idc"] >= 0.5 else "IDC-")
    ready = service.client.get("/readyz").json()
    assert ready["classifier"]["loaded"] is True and ready["classifier"]["model_id"] == model_id
    after = batch_metrics(service)
    # One request of two files: one forward pass of two images.
    assert (after[0] - before[0], after[1] - before[1]) == (1.0, 2.0)
    metrics = service.client.get("/metrics").text
    route = 'histosynth_http_requests_total{method="POST",route="/v1/predictions",status="200"}'
    assert any(line.startswith(route) and float(line.split()[-1]) >= 1 for line in metrics.splitlines())


def _bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG of a few bytes that declares a huge canvas."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_bad_uploads_are_problems(service, classifier):
    service.client.post(f"/v1/models/{classifier['result']['model_id']}/promote")
    c = service.client
    assert_problem(c.post("/v1/predictions", files=files(("x.png", b"hello, not an image", "image/png"))), 415, "not a png")
    assert_problem(c.post("/v1/predictions", files=files(("t.png", png_bytes(seed=1)[:60], "image/png"))), 422, "truncated")
    assert_problem(c.post("/v1/predictions", files=files(("e.png", b"", "image/png"))), 422, "empty")
    assert_problem(c.post("/v1/predictions", files=files(("bomb.png", _bomb_png(), "image/png"))), 413, "too large", "pixels")
    small_bomb = _bomb_png(5000, 5000)  # under Pillow's own guard, over HISTOSYNTH_MAX_IMAGE_PIXELS
    assert_problem(c.post("/v1/predictions", files=files(("b2.png", small_bomb, "image/png"))), 413, "5000x5000")
    gif = _encode(Image.new("RGB", (8, 8)), "GIF")
    assert_problem(c.post("/v1/predictions", files=files(("g.gif", gif, "image/gif"))), 415)
    many = files(*[(f"{i}.png", png_bytes(), "image/png") for i in range(9)])
    assert_problem(c.post("/v1/predictions", files=many), 413, "too many files")
    big = files(("big.png", b"\x89PNG" + b"0" * 2_100_000, "image/png"))
    assert_problem(c.post("/v1/predictions", files=big), 413, "too large")
    assert_problem(c.post("/v1/predictions", json={"files": []}), 415)
    assert_problem(c.post("/v1/predictions", files={"other": ("a.png", png_bytes(), "image/png")}), 422, "no files")
    assert_problem(c.post("/v1/models/nope/promote"), 404)


def test_unusual_but_valid_images_are_predicted(service, classifier):
    service.client.post(f"/v1/models/{classifier['result']['model_id']}/promote")
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    sixteen = Image.fromarray(np.arange(50 * 50, dtype=np.uint16).reshape(50, 50) * 20)
    assert sixteen.mode == "I;16"
    uploads = {
        "grey.png": _encode(rgb.convert("L")),
        "rgba.png": _encode(rgb.convert("RGBA")),
        "palette.png": _encode(rgb.convert("P")),
        "sixteen.png": _encode(sixteen),
        "rotated.jpg": _encode(rgb, "JPEG", exif=exif),
        "odd_size.png": _encode(rgb),
    }
    resp = service.client.post("/v1/predictions", files=files(*[(n, b, "application/octet-stream") for n, b in uploads.items()]))
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert [p["filename"] for p in preds] == list(uploads)
    assert all(0 <= p["probability_idc"] <= 1 for p in preds)


def test_evaluate_four_way_on_real_and_synthetic(service, real_dataset):
    c = service.client
    train = c.post("/v1/jobs", json={"kind": "train_gan", "params": {
        "dataset_id": real_dataset[0], "label": "both", "steps": 3, "checkpoint_every": 0, "sample_every": 0,
        "overrides": TINY_GAN}}).json()
    train = service.wait_job(train["id"])
    assert train["state"] == "succeeded", train["error"]
    synth = []
    for label, model_id in train["result"]["model_ids"].items():
        gen = service.wait_job(c.post("/v1/generations", json={"label": int(label), "n": 40, "model_id": model_id,
                                                               "size": 50}).json()["id"])
        assert gen["state"] == "succeeded", gen["error"]
        synth.append(gen["result"]["dataset_id"])
    params = {"real_dataset_id": real_dataset[0], "synthetic_dataset_ids": synth, "weights": "none",
              "mode": "frozen", "epochs": 2, "input_size": 32}
    assert_problem(c.post("/v1/jobs", json={"kind": "evaluate", "params": dict(params, synthetic_dataset_ids=synth[:1])}),
                   422, "both labels")
    assert_problem(c.post("/v1/jobs", json={"kind": "evaluate", "params": dict(params, weights="/no/such.pth")}), 422)
    assert_problem(c.post("/v1/jobs", json={"kind": "evaluate", "params": dict(params, reference_dataset_id=synth[0])}),
                   422, "reference_dataset_id")
    assert_problem(c.post("/v1/jobs", json={"kind": "evaluate", "params": dict(params, reference_dataset_id="nope")}), 422)
    # the generators' training dataset as the reference: the GRTR row
    params["reference_dataset_id"] = real_dataset[0]
    job = service.wait_job(c.post("/v1/jobs", json={"kind": "evaluate", "params": params}).json()["id"])
    assert job["state"] == "succeeded", job["error"]
    assert set(job["result"]["table"]) == {"TRTR", "TSTS", "TRTS", "TSTR", "AUG_REAL", "AUG_MIX", "GRTR"}
    gain = job["result"]["augmentation"]["accuracy"]
    assert gain["gain"] == pytest.approx(gain["augmented"] - gain["alone"]) and len(gain["ci95"]) == 2
    names = {a["name"]: a for a in job["artifacts"]}
    for row in ("TRTR", "TSTS", "TRTS", "TSTR"):
        png = c.get(names[f"roc_{row}.png"]["url"])
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    report = c.get(names["report.md"]["url"]).text
    for row in ("TRTR", "TSTS", "TRTS", "TSTR", "AUG_REAL", "AUG_MIX"):
        assert row in report
    assert "Does synthetic data help?" in report and "## What TSTR could reach" in report
    full = c.get(names["report.json"]["url"]).json()
    assert full["datasets"]["reference"] == real_dataset[0] and full["n_reference"] == full["n_real"]
    assert full["rows"]["GRTR"]["n_test"] == full["rows"]["TSTR"]["n_test"] == full["n_real"]
    trtr = full["rows"]["TRTR"]["split"]
    assert not set(trtr["train"].get("patients", [])) & set(trtr["test"].get("patients", []))
    cm = full["rows"]["TSTR"]["metrics"]["confusion_matrix_percent"]
    assert abs(sum(sum(r) for r in cm) - 100.0) < 1e-6
