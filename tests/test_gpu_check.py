"""bench/gpu_check.sh --dry-run: the GPU check's every step, on CPU at a tiny size, so the script
is known to work before a GPU session spends its minutes on it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_produces_every_figure(tmp_path, shared_data):
    out = tmp_path / "check"
    env = {"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out), "--dry-run"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["dry_run"] is True
    assert all(rc == 0 for rc in summary["exit_codes"].values()), summary["exit_codes"]
    assert set(summary["exit_codes"]) >= {"env", "tests", "gan_step", "generate", "predict", "classifier",
                                          "train", "estimate"}
    assert summary["gan_step"]["same_math"]["project_vs_baseline_fp32"] < 1e-3
    assert summary["generate"]["project_images_per_s"] > 0 and summary["predict"]["rps_16"] > 0
    assert summary["train"]["finite"] and summary["train"]["steps"] > 0
    est = summary["estimate"]["by_gan_epochs"]["50"]
    assert est["gan_steps_per_generator"] == 125_000 and est["total_frozen_hours"] > est["gan_hours"]
    for png in ("train_samples.png", "train_losses.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
