#!/bin/bash
# STMT on the embedded animated figures: self-supervised pretraining (masked vertex modelling + future frame
# prediction) on 800 unlabelled sequences, then fine-tuning on few labels (LABELS sequences, 8 motions) from that
# run and from random weights, both scored on 400 held-out sequences. ~1 h on 2 CPU cores.
# Run from anywhere: bash examples/stmt/tiny.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-runs/stmt-tiny}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-800}             # pretraining steps
FT_STEPS=${FT_STEPS:-300}
LABELS=${LABELS:-80}            # labelled training sequences for fine-tuning
read -r -a EXTRA <<< "${EXTRA:-}"  # more overrides for every run
rm -rf "$WORK"
mkdir -p "$WORK"

$PERCLI pretrain stmt --run-dir "$WORK/pretrain" train.max_steps="$STEPS" "${EXTRA[@]}" --json > "$WORK/pretrain.json"
for init in pretrained scratch; do
    ckpt=()
    [ "$init" = pretrained ] && ckpt=(model.checkpoint="$WORK/pretrain")
    $PERCLI finetune stmt --run-dir "$WORK/ft-$init" "${ckpt[@]}" train.max_steps="$FT_STEPS" \
        data.embedded_size="$LABELS" data.embedded_val_size=400 "${EXTRA[@]}" --json > "$WORK/ft-$init.json"
done

"$PYTHON" - "$WORK" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
m = json.loads((work / "pretrain.json").read_text())["metrics"]
print(f"pretraining held-out  mvm {m['eval/mvm']:.4f}  ffp {m['eval/ffp']:.4f}")
for run in ("ft-pretrained", "ft-scratch"):
    m = json.loads((work / f"{run}.json").read_text())["metrics"]
    print(f"{run:14s} top-1 {m['eval/top1']:.3f}  top-5 {m['eval/top5']:.3f}")
PY
