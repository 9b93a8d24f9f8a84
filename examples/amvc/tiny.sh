#!/bin/bash
# AMVC on the embedded moving-shape clips: labelled studio-style source, unlabelled film-style target, scored on
# held-out film clips; against the source-only baseline (the same model and schedule without the target).
# ~40 min on 2 CPU cores. Run from anywhere: bash examples/amvc/tiny.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-runs/amvc-tiny}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-1000}
read -r -a EXTRA <<< "${EXTRA:-}"  # more overrides for both runs
rm -rf "$WORK"
mkdir -p "$WORK"

$PERCLI finetune amvc --run-dir "$WORK/amvc" train.max_steps="$STEPS" "${EXTRA[@]}" --json > "$WORK/amvc.json"
$PERCLI finetune amvc --run-dir "$WORK/source-only" loss.domain=0 loss.consistency=0 train.max_steps="$STEPS" \
    "${EXTRA[@]}" --json > "$WORK/source-only.json"

"$PYTHON" - "$WORK" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
for run in ("amvc", "source-only"):
    m = json.loads((work / f"{run}.json").read_text())["metrics"]
    print(f"{run:12s} target top-1 {m['eval/top1']:.3f} (EMA teacher {m['eval/teacher_top1']:.3f})")
PY
