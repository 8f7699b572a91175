"""The module boundaries of docs/architecture.md, checked from the imports themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    # pyproject.toml [tool.importlinter]: worker > app > models layers, models/ pure, no circles.
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 kept, 0 broken" in out.stdout


def test_every_job_kind_has_a_handler_and_no_handler_lacks_a_kind():
    from app.job_kinds import KINDS
    from worker.handlers import HANDLERS

    assert set(KINDS) == set(HANDLERS)


def test_the_api_process_never_imports_the_worker():
    code = ("import sys; from app.main import create_app; import app.cli, app.submit, app.queue; "
            "print(sorted(m for m in sys.modules if m == 'worker' or m.startswith('worker.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
