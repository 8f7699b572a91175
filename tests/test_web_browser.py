"""The dashboard in a real browser (issue 11): Playwright drives Debian's chromium against the
real service (API process + Celery worker on Postgres and Redis) in keys mode. One key ingests
a zip and watches the progress bar reach done, trains a tiny GAN and sees its sample grids,
trains a classifier (promoted with the admin key), predicts uploaded patches, generates patches
and downloads the zip, evaluates, starts and cancels an experiment; a second key sees none of
it. Every view is checked with axe-core (no serious or critical violations), at 1280x800 and at
phone width; any console error fails the test. Screenshots go to var/screenshots/ (and to docs/
with HISTOSYNTH_DOCS_SCREENSHOTS=1)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT, Service, copy_patches, fresh_database, service_env

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("HISTOSYNTH_TEST_CHROMIUM", "/usr/bin/chromium")
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
SCREENSHOTS = ROOT / "var" / "screenshots"
TINY_GAN = {"width": 1 / 32, "latent_dim": 32, "batch_size": 8, "fixed_samples": 4}
PATIENTS = ["10255", "10273", "10275", "10299"]


@pytest.fixture(scope="module")
def keyed_service(tmp_path_factory, redis_url) -> Iterator[tuple[Service, dict[str, str]]]:
    """The service with HISTOSYNTH_AUTH=keys and three keys: an admin, alice and bob (users)."""
    from app import auth
    from app.db import session_scope
    from app.migrate import upgrade_head

    with fresh_database() as url:
        upgrade_head(url)
        with session_scope(url) as s:
            keys = {name: auth.create_key(s, name, role)[1]
                    for name, role in (("admin", "admin"), ("alice", "user"), ("bob", "user"))}
        home = tmp_path_factory.mktemp("web")
        # One torch thread per process: on a 2-core box beside a benchmark, OpenMP's spin-waits
        # made a tiny GAN step take seconds instead of a fraction of one.
        svc = Service(service_env(home, url, redis_url, HISTOSYNTH_AUTH="keys", OMP_NUM_THREADS="1",
                                  MKL_NUM_THREADS="1"), home)
        svc.start_api()
        svc.start_worker()
        try:
            yield svc, keys
        finally:
            svc.stop()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium (apt-get install -y chromium; "
                    ".ci/run installs it)", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'", pytrace=False)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def upload_zip(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    """A zip of a small real slice in the public layout (4 patients, up to 20 patches per label)."""
    root = copy_patches(shared_data, tmp_path_factory.mktemp("web_slice"), PATIENTS, per_label=20)
    out = root.parent / "slice.zip"
    with zipfile.ZipFile(out, "w") as zf:
        for f in sorted(root.rglob("*.png")):
            zf.write(f, f.relative_to(root).as_posix())
    return out, root


class Console:
    """Console errors and page errors; `expecting(pattern)` allows the ones a step provokes on purpose."""

    def __init__(self, page) -> None:  # noqa: ANN001
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    @contextmanager
    def expecting(self, pattern: str):
        before = len(self.errors)
        yield
        new = self.errors[before:]
        matching = [e for e in new if re.search(pattern, e)]
        assert matching, f"expected a console error matching {pattern!r}, got {new}"
        self.errors[before:] = [e for e in new if not re.search(pattern, e)]


def axe_check(page, where: str, report: dict) -> None:  # noqa: ANN001
    """Run axe-core on the page (WCAG 2.x A/AA and best practices); serious or critical violations fail."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text())
    result = page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                       nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
    }""")
    report[where] = result
    bad = [v for v in result if v["impact"] in ("serious", "critical")]
    assert not bad, f"axe on {where}: {json.dumps(bad, indent=1)}"


def shot(page, name: str, docs: str | None = None, full_page: bool = True) -> Path:  # noqa: ANN001
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    if docs and os.environ.get("HISTOSYNTH_DOCS_SCREENSHOTS") == "1":
        shutil.copy(path, ROOT / "docs" / docs)
    return path


def use_key(page, secret: str) -> None:  # noqa: ANN001
    page.get_by_label("API key").fill(secret)
    page.get_by_role("button", name="Use key").click()
    from playwright.sync_api import expect

    expect(page.locator("#key-status")).to_contain_text(f"…{secret[-4:]} kept for this tab")


def go(page, section: str) -> None:  # noqa: ANN001
    page.get_by_role("navigation", name="Sections").get_by_role("link", name=section, exact=True).click()
    from playwright.sync_api import expect

    expect(page.locator("main h1")).to_be_visible()


def show_all_images(page) -> None:  # noqa: ANN001
    """Scroll every image of the view into sight (they load lazily) and wait until all have loaded."""
    for img in page.locator("main img").all():
        img.scroll_into_view_if_needed()
    page.wait_for_function("() => [...document.querySelectorAll('main img')].every(i => i.complete && i.naturalWidth > 0)")
    page.evaluate("() => window.scrollTo(0, 0)")


def pick_result(page, kind: str) -> None:  # noqa: ANN001
    """Choose the newest `kind` job in the Results selector."""
    label = page.locator("select[name=job] option", has_text=kind).first.text_content()
    page.get_by_label("Results of").select_option(label=label)
    expect_url = re.compile(r"#/results/[0-9a-f]{32}$")
    from playwright.sync_api import expect

    expect(page).to_have_url(expect_url)
    expect(page.locator(".results .note a")).to_contain_text(f"{kind} job")


def wait_state(page, state: str, timeout: float = 120) -> None:  # noqa: ANN001
    """On a job's page: wait for its state badge."""
    from playwright.sync_api import expect

    expect(page.locator("dl.facts .state")).to_contain_text(state, timeout=timeout * 1000)


def wider_than(page, what: str) -> list[str]:
    """Elements that stick out of the window (what="window") or of their enclosing <figure>
    (what="figure"): tag, class and the overhang in px; empty when everything fits."""
    return page.evaluate("""what => {
      const out = [];
      for (const el of document.querySelectorAll("main *")) {
        const r = el.getBoundingClientRect();
        if (!r.width) continue;
        const box = what === "window" ? { right: document.documentElement.clientWidth } : el.parentElement.closest("figure")?.getBoundingClientRect();
        if (box && r.right > box.right + 1) out.push(`${el.tagName.toLowerCase()}.${el.className} +${Math.round(r.right - box.right)}px`);
      }
      return out;
    }""", what)


def test_dashboard_end_to_end(keyed_service, browser, upload_zip, tmp_path):
    from playwright.sync_api import expect

    svc, keys = keyed_service
    zip_path, slice_root = upload_zip
    started = time.monotonic()
    axe: dict[str, list] = {}
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    console = Console(page)
    requests: list[tuple[str, str | None]] = []
    page.on("request", lambda r: requests.append((r.url, r.headers.get("authorization"))))

    try:
        # -- no key: the API's problem is shown (title and detail), and the key form asks for one
        with console.expecting(r"status of 401"):
            page.goto(svc.url + "/")
            expect(page.locator("#global-alert .problem-title")).to_contain_text("Authentication required")
        expect(page.locator("#key-status")).to_contain_text("needs an API key")
        axe_check(page, "no key", axe)
        # the page's own Markdown renderer (reports) escapes HTML first: no element comes from the text
        parts = page.evaluate("""async () => {
            const {renderMarkdown} = await import('/static/js/markdown.js');
            const div = document.createElement('div');
            div.innerHTML = renderMarkdown('# T <script>alert(1)</script>\\n\\n"><img src=x onerror=alert(1)> '
                + '[a](javascript:alert(1)) [b](/v1/jobs/x) **bold**\\n\\n| row | v |\\n|---|---|\\n| TRTR | <b>1</b> |');
            return {unsafe: div.querySelectorAll('script, img, b').length, links: [...div.querySelectorAll('a')].map(a => a.getAttribute('href')),
                    strong: div.querySelectorAll('strong').length, cells: div.querySelectorAll('td').length};
        }""")
        assert parts == {"unsafe": 0, "links": ["/v1/jobs/x"], "strong": 1, "cells": 2}, parts

        # -- alice's key, kept in sessionStorage only
        use_key(page, keys["alice"])
        assert page.evaluate("() => sessionStorage.getItem('histosynth.apiKey')") == keys["alice"]
        expect(page.locator("#global-alert")).to_be_empty()

        # -- ingest: upload a zip, then watch the job's progress bar reach done
        go(page, "Datasets")
        page.get_by_label("Zip of patches").set_input_files(str(zip_path))
        page.get_by_role("button", name="Upload and ingest").click()
        expect(page).to_have_url(re.compile(r"#/jobs$"), timeout=30_000)
        row = page.locator("tr[data-kind=ingest]")
        expect(row.locator(".progress-text")).to_contain_text("done", timeout=90_000)
        expect(row.locator("progress")).to_have_js_property("value", 1)
        expect(row.locator(".state")).to_contain_text("succeeded")
        axe_check(page, "jobs", axe)
        go(page, "Datasets")
        page.locator("table a").first.click()
        expect(page.locator("main h1")).to_contain_text("Dataset")
        expect(page.get_by_role("region", name=re.compile("4 patients"))).to_be_visible()  # owners see patients
        grid = page.get_by_role("img", name=re.compile("Grid of example patches"))
        expect(grid).to_have_attribute("src", re.compile("^blob:"))
        axe_check(page, "dataset", axe)
        show_all_images(page)
        shot(page, "dataset")

        # -- a tiny GAN (both labels, 11 steps: grids at steps 10 and 11): the sample grids appear
        go(page, "Training")
        form = page.locator("#train-form")
        form.get_by_label("Label").select_option("both")
        form.get_by_label("Steps").fill("11")
        form.get_by_label("Sample grid every").fill("10")
        form.get_by_label("Checkpoint every").fill("0")
        form.get_by_label("Holdout fraction").fill("0.34")  # two patients the audit can use
        form.get_by_label("Overrides (JSON, optional)").fill(json.dumps(TINY_GAN))
        form.get_by_role("button", name="Start training").click()
        expect(page).to_have_url(re.compile(r"#/training/[0-9a-f]{32}$"), timeout=30_000)
        first = page.locator("img[data-role=sample-grid][data-label='1']")
        expect(first).to_have_attribute("src", re.compile("^blob:"), timeout=120_000)
        assert first.evaluate("img => img.decode().then(() => img.naturalWidth)") > 0
        # both labels' loss curves are drawn when the training ends
        expect(page.get_by_role("img", name=re.compile("loss_curves_label1.png"))).to_have_attribute("src", re.compile("^blob:"), timeout=120_000)
        expect(page.get_by_role("img", name=re.compile("loss_curves_label0.png"))).to_have_attribute("src", re.compile("^blob:"))
        slider = page.locator("[data-label='1'] input[type=range]")
        expect(slider).to_be_enabled()
        expect(page.locator("[data-label='1'] output")).to_contain_text("step 11 (2 of 2)")
        slider.focus()
        page.keyboard.press("Home")  # the slider works from the keyboard
        expect(page.locator("[data-label='1'] output")).to_contain_text("step 10 (1 of 2)")
        expect(first).to_have_attribute("alt", re.compile("at step 10"))
        page.keyboard.press("End")
        expect(first).to_have_attribute("alt", re.compile("at step 11"))
        show_all_images(page)
        axe_check(page, "training", axe)
        shot(page, "training", "dashboard_training.png")

        # -- a tiny classifier; promoting it needs an admin key (the problem is shown), then the admin promotes it
        go(page, "Models")
        page.locator("summary", has_text="Train a ResNet18 classifier").click()
        cform = page.locator("#classifier-form")
        cform.get_by_label("Weights").select_option("none")
        cform.get_by_label("Mode").select_option("finetune")
        cform.get_by_label("Epochs").fill("1")
        cform.get_by_label("Input size").fill("32")
        cform.get_by_role("button", name="Train classifier").click()
        expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f]{32}$"), timeout=30_000)
        wait_state(page, "succeeded")
        go(page, "Models")
        promote = page.get_by_role("button", name=re.compile("^Promote classifier"))
        with console.expecting(r"status of 403"):
            promote.click()
            expect(page.locator(".problem-title")).to_contain_text("Admin key required")
            expect(page.locator(".problem-detail")).to_contain_text("promote")
        axe_check(page, "models", axe)
        use_key(page, keys["admin"])  # typed over the old one: no moment without a key
        page.get_by_role("button", name=re.compile("^Promote classifier")).click()
        expect(page.locator("tr[data-kind=classifier]")).to_contain_text("★ promoted")
        shot(page, "models")
        use_key(page, keys["alice"])

        # -- predict: upload two patches, see each label and probability beside its image
        go(page, "Predict")
        pos = sorted((slice_root / "10273" / "1").glob("*.png"))[0]
        neg = sorted((slice_root / "10273" / "0").glob("*.png"))[0]
        page.locator("#predict-files").set_input_files([str(pos), str(neg)])
        items = page.locator("li.prediction")
        expect(items).to_have_count(2)
        for item, f in zip(items.all(), (pos, neg)):
            expect(item).to_contain_text(f.name)
            expect(item.locator(".label")).to_have_text(re.compile("^IDC[+-]$"))
            expect(item).to_contain_text(re.compile(r"P\(IDC\+\) = [01]\.\d{3}"))
            assert item.locator("img").evaluate("img => img.decode().then(() => img.naturalWidth)") == 50
        axe_check(page, "predict", axe)
        shot(page, "predict")

        # -- generate: progress, then a preview grid and the zip download; then IDC- for the evaluation
        go(page, "Generate")
        gform = page.locator("#generate-form")
        gform.get_by_label("Label").select_option("1")
        gform.get_by_label("How many (n)").fill("16")
        gform.get_by_label("Seed").fill("1")
        gform.get_by_role("button", name="Generate").click()
        expect(page).to_have_url(re.compile(r"#/generate/[0-9a-f]{32}$"), timeout=30_000)
        preview = page.locator("img[data-role=generation-preview]")
        expect(preview).to_have_attribute("src", re.compile("^blob:"), timeout=60_000)
        expect(page.get_by_role("region", name=re.compile("^Generation")).locator(".progress-text")).to_contain_text("done")
        with page.expect_download() as info:
            page.get_by_role("button", name=re.compile("^Download zip")).click()
        synthetic_pos = page.get_by_role("link", name="the synthetic dataset").get_attribute("href").rsplit("/", 1)[1]
        saved = tmp_path / "generated.zip"
        info.value.save_as(saved)
        with zipfile.ZipFile(saved) as zf:
            names = zf.namelist()
            assert len(names) == 16
            assert Image.open(io.BytesIO(zf.read(names[0]))).size == (64, 64)
        axe_check(page, "generate", axe)
        shot(page, "generate")
        gform = page.locator("#generate-form")
        gform.get_by_label("Label").select_option("0")
        gform.get_by_label("How many (n)").fill("16")
        first_generation = page.url
        gform.get_by_role("button", name="Generate").click()
        expect(page).not_to_have_url(first_generation)
        expect(page).to_have_url(re.compile(r"#/generate/[0-9a-f]{32}$"), timeout=30_000)
        expect(page.locator("img[data-role=generation-preview]")).to_have_attribute("src", re.compile("^blob:"), timeout=60_000)

        # -- evaluate (the four-way protocol); while it runs, an experiment is started and cancelled
        go(page, "Results")
        page.locator("summary", has_text="Start an evaluation").click()
        eform = page.locator("#evaluate-form")
        for box in eform.locator("input[type=checkbox]").all():
            box.check()
        eform.get_by_label("Weights").select_option("none")
        eform.get_by_label("Epochs").fill("1")
        eform.get_by_label("Input size").fill("32")
        eform.get_by_label("Bootstrap resamples").fill("10")
        eform.get_by_role("button", name="Evaluate").click()
        expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f]{32}$"), timeout=30_000)
        evaluate_url = page.url

        go(page, "Experiment")
        axe_check(page, "experiment", axe)
        xform = page.locator("#experiment-form")
        xform.get_by_label("Steps per generator").fill("10")
        xform.get_by_label("Epochs", exact=True).fill("1")
        xform.get_by_role("button", name="Start the experiment").click()
        expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f]{32}$"), timeout=30_000)
        expect(page.locator("main h1")).to_contain_text("experiment job")
        page.get_by_role("button", name=re.compile("^Cancel experiment")).click()
        wait_state(page, "cancelled", timeout=60)
        axe_check(page, "job detail", axe)

        # an audit of the IDC+ set, from the Results page's audit form
        go(page, "Results")
        page.locator("summary", has_text="Start an audit").click()
        aform = page.locator("#audit-form")
        aform.get_by_label("Synthetic dataset").select_option(value=synthetic_pos)
        aform.get_by_label("Samples at most").fill("16")
        aform.get_by_role("button", name="Audit").click()
        expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f]{32}$"), timeout=30_000)
        expect(page.locator("main h1")).to_contain_text("audit job")
        audit_url = page.url

        go(page, "Jobs")
        expect(page.locator("tr[data-kind=experiment] .state")).to_contain_text("cancelled")
        expect(page.locator("tr[data-kind=audit]")).to_be_visible()
        shot(page, "jobs", "dashboard_jobs.png", full_page=False)

        page.goto(evaluate_url)
        wait_state(page, "succeeded", timeout=180)
        show_all_images(page)
        expect(page.get_by_role("img", name="confusion_TRTR.png")).to_have_attribute("src", re.compile("^blob:"))
        expect(page.locator(".markdown").first).to_contain_text("Four-way")
        axe_check(page, "evaluate job", axe)
        go(page, "Results")
        pick_result(page, "evaluate")  # the audit may have finished too: newest first
        table = page.locator("table.table3")
        for row, paper in (("TRTR", "0.84"), ("TSTS", "0.99"), ("TRTS", "0.81"), ("TSTR", "0.76")):
            expect(table.locator(f"tr[data-row={row}]")).to_contain_text(paper)
        show_all_images(page)
        for name in ("confusion_TSTR.png", "roc_TSTR.png"):
            expect(page.get_by_role("img", name=name)).to_have_attribute("src", re.compile("^blob:"))
        axe_check(page, "results", axe)
        shot(page, "results", "dashboard_results.png")

        # the audit's numbers beside the real floor, and its figures
        page.goto(audit_url)
        wait_state(page, "succeeded", timeout=120)
        go(page, "Results")
        pick_result(page, "audit")
        expect(page.get_by_role("region", name=re.compile("^Audit: synthetic against held-out"))).to_contain_text("FID")
        for name in ("distances_pixels.png", "distances_features.png", "closest_pairs.png"):
            expect(page.get_by_role("img", name=name)).to_be_attached()
        show_all_images(page)
        axe_check(page, "results, audit", axe)
        shot(page, "results_audit")

        # -- a phone-width window: nothing wider than the screen, still accessible
        page.set_viewport_size({"width": 390, "height": 844})
        go(page, "Jobs")
        expect(page.locator("tr[data-kind=ingest]")).to_be_visible()
        assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
        axe_check(page, "jobs, phone width", axe)
        shot(page, "jobs_phone", full_page=False)
        go(page, "Training")
        expect(page.locator("img[data-role=sample-grid]").first).to_have_attribute("src", re.compile("^blob:"), timeout=30_000)
        page.locator("img[data-role=sample-grid]").first.evaluate("img => img.decode()")
        assert not wider_than(page, "window"), wider_than(page, "window")
        page.set_viewport_size({"width": 1280, "height": 800})
        assert not wider_than(page, "figure"), wider_than(page, "figure")  # the grids fit their cards

        # -- the key never travelled in a URL, and every /v1 call carried it
        for url, authorization in requests:
            assert not any(k in url for k in keys.values()), url
            if "/v1/" in url and authorization is None:
                assert url.endswith("/v1/jobs?limit=50"), f"{url} went without a key"  # only the first, keyless load

        # -- a second key sees none of the first key's jobs (nor its datasets)
        use_key(page, keys["bob"])
        go(page, "Jobs")
        expect(page.locator("#jobs-summary")).to_contain_text("0 jobs")
        expect(page.get_by_text("No jobs yet")).to_be_visible()
        expect(page.locator("tbody tr")).to_have_count(0)
        go(page, "Datasets")
        expect(page.get_by_text("No datasets yet")).to_be_visible()

        # -- forgetting the key empties the session; the API's refusal is shown again
        with console.expecting(r"status of 401"):
            page.get_by_role("button", name="Forget key").click()
            expect(page.locator("#global-alert .problem-title")).to_contain_text("Authentication required")
        assert page.evaluate("() => sessionStorage.getItem('histosynth.apiKey')") is None

    except Exception:
        shot(page, "failure")  # what the page showed when a step failed
        print("console errors:", console.errors)
        raise
    assert console.errors == [], console.errors
    context.close()
    (SCREENSHOTS / "axe.json").write_text(json.dumps(axe, indent=1))
    print(f"browser test: {time.monotonic() - started:.1f} s; axe (minor/moderate only): "
          f"{sorted({v['id'] for vs in axe.values() for v in vs})}")
