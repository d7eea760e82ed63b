#!/usr/bin/env bash
# The converged image grid (issue 12): pool students at 64 kB (both formats: pool-w16-d3, 30x) and 36 kB (pool-w20-d2, 79x),
# 15 epochs for every method, tuned on a 12,000-image subset (same for every method), 1 thread per process.
# Each cell checkpoints every epoch in runs/converged-grid/: a cell cut off by a session's end continues there.
#   grid.sh prokt [SEEDS] [OUT]   ProKT cells (tuning first, kept in OUT once done)
#   grid.sh base                  scratch and KD cells
#   grid.sh small [SEEDS]         the three methods at 64 kB on the tuning subset (12,000 training images) instead of the
#                                 full split, with the settings the grid's tuning chose (its tuning runs are copied in):
#                                 does distillation's gain depend on how much data the student has? (docs/results.md)
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
COMMON=(--budgets 64KB,36KB --epochs 15 --tune --tune-set data.max_train_samples=12000
        --teacher-checkpoint shipped:fashion-mnist-vgg-w32 --set 'budget.formats=[onnx, openvino]' --threads 1 --resume
        --work-dir runs/converged-grid)
case "$1" in
  prokt) exec $PY benchmarks/quality.py "${COMMON[@]}" --seeds "${2:-0,1,2}" --methods prokt --out "${3:-benchmarks/results/quality-converged-prokt.json}" ;;
  base)  exec $PY benchmarks/quality.py "${COMMON[@]}" --seeds 0,1,2 --methods scratch,kd --out benchmarks/results/quality-converged-base.json ;;
  small)
    OUT=benchmarks/results/quality-small-data.json
    [ -f "$OUT" ] || $PY - "$OUT" benchmarks/results/quality-converged-{base,prokt}.json <<'PYEOF' || exit 1
import json, sys
tune = [r for f in sys.argv[2:] for r in json.load(open(f)) if r.get("phase", "grid") == "tune"]
json.dump(tune, open(sys.argv[1], "w"), indent=1)
PYEOF
    # its own --work-dir: its cells have the grid's names (another data size), and may run beside the grid
    exec $PY benchmarks/quality.py "${COMMON[@]}" --work-dir runs/converged-grid-small --budgets 64KB --max-train-samples 12000 \
      --seeds "${2:-0,1,2}" --methods scratch,kd,prokt --out "$OUT" ;;
  mobile)
    # issue 36: the mobile family at the default recipe's 64 kB, ONNX only (no mobile candidate's OpenVINO int8 IR fits
    # 64 kB: docs/results.md), the same schedule, tuning budget and teacher as the grid; one method per process:
    #   grid.sh mobile scratch & grid.sh mobile prokt
    M="${2:?usage: $0 mobile scratch|prokt [SEEDS]}"
    exec $PY benchmarks/quality.py --budgets 64KB --epochs 15 --tune --tune-set data.max_train_samples=12000 \
      --teacher-checkpoint shipped:fashion-mnist-vgg-w32 --set 'budget.formats=[onnx]' --set student.family=mobile --threads 1 \
      --resume --work-dir runs/mobile-grid --seeds "${3:-0,1,2}" --methods "$M" --out "benchmarks/results/quality-mobile-$M.json" ;;
  pool-onnx)
    # the level comparison for the mobile rows: the pool family planned for the same formats (ONNX only) at 64 kB,
    # where its capacity rule picks a larger pool student than the two-format grid's pool-w16-d3
    M="${2:?usage: $0 pool-onnx scratch|prokt [SEEDS]}"
    exec $PY benchmarks/quality.py --budgets 64KB --epochs 15 --tune --tune-set data.max_train_samples=12000 \
      --teacher-checkpoint shipped:fashion-mnist-vgg-w32 --set 'budget.formats=[onnx]' --set student.family=pool --threads 1 \
      --resume --work-dir runs/pool-onnx-grid --seeds "${3:-0,1,2}" --methods "$M" --out "benchmarks/results/quality-pool-onnx-$M.json" ;;
  *) echo "usage: $0 prokt [SEEDS] [OUT] | base | small [SEEDS] | mobile scratch|prokt [SEEDS] | pool-onnx scratch|prokt [SEEDS]" >&2; exit 2 ;;
esac
