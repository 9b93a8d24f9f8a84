#!/bin/bash
# CiT against its baselines on the embedded pool (40 % off-task captions): a seed CLIP, then the same
# 600 steps with online curation (CiT), with one curation by the seed's text tower (offline), and on
# the whole pool. Compare eval/zero_shot_top1 in each summary.json and curation/on_task in metrics.jsonl.
# CPU, about 8 minutes. Run from anywhere: bash examples/curation/cit_in_training.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-runs/cit-example}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
SEED_STEPS=${SEED_STEPS:-200} STEPS=${STEPS:-600} EVERY=${EVERY:-100} SMALL=${SMALL:-}  # smoke run: shorter
THRESHOLD=${THRESHOLD:-0.93}  # from the seed's score distribution (on-task median 0.965, off-task 0.90)
$PERCLI pretrain clip train.max_steps=$SEED_STEPS $SMALL --run-dir "$WORK/seed" --overwrite
for mode in online offline none; do
  $PERCLI pretrain cit model.checkpoint="$WORK/seed/checkpoints/step_$(printf %07d "$SEED_STEPS")" vision=head \
      curation.mode=$mode curation.every=$EVERY curation.threshold=$THRESHOLD train.max_steps=$STEPS $SMALL \
      --run-dir "$WORK/$mode" --overwrite --json \
      | "$PYTHON" -c "import json, sys; m = json.load(sys.stdin)['metrics']; print('$mode', m['eval/zero_shot_top1'])"
done
