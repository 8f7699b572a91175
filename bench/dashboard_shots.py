"""Screenshots of the dashboard over a real run, for the README.

    python bench/dashboard_shots.py --home <HISTOSYNTH_HOME of a finished bench/experiment_cpu.py run>

Serves that home (open mode, loopback, no worker), opens the page in Debian's chromium
(Playwright) at 1280x800 and saves, under docs/: the jobs view (`dashboard_jobs.png`), the
experiment's train_gan job in the training view with its sample grids (`dashboard_training.png`)
and its evaluate job in the results view (`dashboard_results.png`).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("HISTOSYNTH_TEST_CHROMIUM", "/usr/bin/chromium")


def settle(page) -> None:  # noqa: ANN001
    """Every image of the view scrolled into sight (they load lazily) and loaded."""
    page.wait_for_timeout(1500)
    for img in page.locator("main img").all():
        img.scroll_into_view_if_needed()
    page.wait_for_function("() => [...document.querySelectorAll('main img')].every(i => i.complete && i.naturalWidth > 0)",
                           timeout=120_000)
    page.evaluate("() => window.scrollTo(0, 0)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTOSYNTH_")}
    env |= {"HISTOSYNTH_HOME": str(args.home), "HISTOSYNTH_STARTER_MODELS": "false", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--no-worker"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(url + "/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.3)
        jobs = httpx.get(url + "/v1/jobs", params={"limit": 100}).json()["data"]
        experiment = next(j for j in jobs if j["kind"] == "experiment" and j["state"] == "succeeded")
        kids = {k["kind"]: k["id"] for k in experiment["children"]}
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM,
                                        args=["--no-sandbox", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(60_000)
            for name, route in (("jobs", "#/jobs"), ("training", f"#/training/{kids['train_gan']}"),
                                ("results", f"#/results/{kids['evaluate']}")):
                page.goto(f"{url}/{route}")
                page.locator("main h1").wait_for()
                settle(page)
                page.screenshot(path=str(args.out / f"dashboard_{name}.png"), full_page=name != "jobs")
                print(f"docs/dashboard_{name}.png")
            browser.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


if __name__ == "__main__":
    main()
