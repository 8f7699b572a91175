"""The embedded default: `histosynth serve` with no environment runs SQLite + the filesystem
broker + one worker under $HISTOSYNTH_HOME, and stops both processes on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ROOT, copy_patches, free_port, wait_http

pytestmark = pytest.mark.integration


def test_serve_embedded_ingest_and_clean_stop(tmp_path, shared_data):
    slice_root = copy_patches(shared_data, tmp_path / "slice", ["10255", "10290"], per_label=60)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTOSYNTH_")}
    env.update({"HISTOSYNTH_HOME": str(home), "PYTHONPATH": str(ROOT)})
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz")
        ready = httpx.get(url + "/readyz").json()
        assert ready["checks"] == {"database": "ok", "broker": "ok"}
        resp = httpx.post(url + "/v1/jobs", json={"kind": "ingest", "params": {"path": str(slice_root)}})
        assert resp.status_code == 202
        deadline = time.monotonic() + 120
        while (job := httpx.get(url + resp.headers["location"]).json())["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.3)
        assert job["state"] == "succeeded", job["error"]
        # 10255 has 181/91 patches, 10290 has 238/17: 60 + 60 + 60 + 17 copied.
        assert job["result"]["n_patches"] == 197 and job["result"]["by_label"] == {"0": 120, "1": 77}
        assert (home / "histosynth.db").is_file() and (home / "broker" / "queue").is_dir()
        assert (home / "storage" / "datasets" / job["result"]["dataset_id"] / "patches.u8").stat().st_size == 197 * 50 * 50 * 3
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code in (0, 128 + signal.SIGTERM)
    out = subprocess.run(["pgrep", "-f", f"histosynth-{proc.pid}@"], capture_output=True, text=True)
    assert out.stdout.strip() == "", "the embedded worker outlived serve"
