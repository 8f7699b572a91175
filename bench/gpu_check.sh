#!/usr/bin/env bash
# The GPU worker, measured: one prepared run on a GPU machine (issue: "The GPU worker, measured
# on a real GPU"). Writes JSON lines, logs and PNGs into OUT and prints one JSON line at the end.
#
#   bench/gpu_check.sh OUT                  # on the GPU machine (under 8 minutes)
#   bench/gpu_check.sh OUT --dry-run        # every step on CPU at a tiny size (CI runs this)
#   bench/gpu_check.sh OUT --only predict,generate
#
# Needs .gpu_data/ (bench/pack_gpu_data.py) for the training phase; on a machine without this
# project's web packages, .whl/ (wheels, see BENCHMARKS.md) is installed into /tmp/site first.
# Phases: env tests gan_step generate predict classifier train compile estimate. Each runs under
# its own time limit; a failed phase is recorded and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/gpu_check.sh OUT [--dry-run] [--only a,b]}
shift
DRY=0
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --only) ONLY=",$2,"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1
START=$(date +%s)

if [ -d .whl ] && ! $PY -c "import fastapi, sqlalchemy, pydantic_settings, alembic, uvicorn" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

want() { [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]]; }
rm -f "$OUT"/.rc_*
phase() {  # phase NAME LIMIT_S CMD...: stdout+stderr to NAME.log, the last JSON line to NAME.json
  local name=$1 limit=$2; shift 2
  want "$name" || return 0
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  grep '^{' "$OUT/$name.log" | tail -1 >"$OUT/$name.json" || true
  [ -s "$OUT/$name.json" ] || rm -f "$OUT/$name.json"
  echo "== $name: rc=$rc in $(( $(date +%s) - t0 )) s"
  echo "$rc" >"$OUT/.rc_$name"  # a file, not a variable: the dry run's phases run in subshells
}

if [ $DRY = 1 ]; then
  DEV=cpu
  DATA="$OUT/dry_data/idc_label1.npz"
  if want train; then
    $PY bench/pack_gpu_data.py --limit 64 --out "$OUT/dry_data" >/dev/null || $PY - "$OUT/dry_data" <<'PY'
import sys, pathlib, numpy as np
d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True)
np.savez_compressed(d / "idc_label1.npz", patches=np.random.default_rng(0).integers(0, 256, (64, 50, 50, 3), dtype=np.uint8))
PY
  fi
  # Two lanes at once: each dry phase is mostly a Python start-up and a torch import on one
  # core, so on a 2-core CI machine two lanes take about half the time of one (one OpenMP
  # thread each: two lanes of two threads oversubscribe the cores).
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  {
    phase env 60 $PY -c "import json, torch, os; print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(), 'cpus': os.cpu_count()}))"
    phase gan_step 300 $PY bench/gan_step.py --device cpu --width 0.03 --warmup 1 --steps 2 --check --json
    phase predict 300 $PY bench/predict.py --device cpu --input-size 64 --precision fp32 --rounds 1 --seconds 0.5 --requests 10 --json
  } &
  {
    phase tests 300 $PY -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py
    phase generate 300 $PY bench/generate.py --device cpu --preset cpu-small --n 64 --batch 32 --rounds 1 --rss-n --json
    phase classifier 300 $PY bench/classifier_speed.py --device cpu --input-size 64 --n 64 --steps 2 --json
    phase train 300 $PY bench/gpu_train.py --device cpu --preset cpu-small --data "$DATA" --seconds 3 --out "$OUT" --name train
  } &
  wait
else
  DEV=cuda
  [ -f .gpu_data/idc_label1.npz ] || echo "no .gpu_data/idc_label1.npz: run bench/pack_gpu_data.py and carry .gpu_data" >&2
  phase env 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader; $PY -c \"import json, torch, os; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'gpu': torch.cuda.get_device_name(), 'cpus': os.cpu_count()}))\""
  phase tests 150 $PY -m pytest -q -s -p no:cacheprovider -m cuda tests/test_cuda.py
  phase gan_step 150 $PY bench/gan_step.py --device cuda --check --json
  phase generate 100 $PY bench/generate.py --device cuda --rounds 2 --json
  phase predict 120 $PY bench/predict.py --device cuda --precision fp32 bf16 --rounds 2 --seconds 3 --requests 300 --png .gpu_data/sample.png --json
  phase classifier 90 $PY bench/classifier_speed.py --device cuda --json
  phase train 200 $PY bench/gpu_train.py --device cuda --preset paper --data .gpu_data/idc_label1.npz --seconds 140 --out "$OUT" --name train
  phase compile 90 $PY bench/gan_step.py --device cuda --variants graph-bf16,graph-bf16-compile --baselines fp32 --warmup 6 --steps 40 --json
fi
if want estimate && [ -f "$OUT/gan_step.json" ] && [ -f "$OUT/generate.json" ] && [ -f "$OUT/classifier.json" ]; then
  phase estimate 30 $PY bench/paper_estimate.py "$OUT"
fi

# One JSON line with every figure: each phase's JSON under its name, plus the exit codes.
STATUS=""
for f in "$OUT"/.rc_*; do [ -e "$f" ] && STATUS="$STATUS\"${f##*/.rc_}\": $(cat "$f"), "; done
$PY - "$OUT" "$DRY" "$(( $(date +%s) - START ))" "{${STATUS%, }}" <<'PY'
import json, pathlib, sys
out, dry, seconds, status = pathlib.Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), json.loads(sys.argv[4])
summary = {"gpu_check": True, "dry_run": dry, "seconds": seconds, "exit_codes": status}
for f in sorted(out.glob("*.json")):
    if f.name in ("summary.json", "train_history.json", "paper_estimate.json"):
        continue
    try:
        summary[f.stem] = json.loads(f.read_text().strip().splitlines()[-1])
    except (ValueError, IndexError):
        summary[f.stem] = {"unreadable": True}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary))
PY
