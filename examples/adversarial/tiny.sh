#!/bin/bash
# Adversarial robustness of early, middle and late audio-visual fusion (after Li et al., ICASSP 2021) on the
# embedded one-event clips: train each fusion with the tiny preset, then attack its audio, its video and both with
# L-inf PGD (20 steps) over a range of eps, and print clean top-1 and the curves (curve.json / curve.png in each
# attack's run dir). About 2 min of training and 5 min of attacks per fusion on one CPU core.
# Run from anywhere: bash examples/adversarial/tiny.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-runs/adversarial-tiny}
PERCLI=${PERCLI:-percli}                 # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
FUSIONS=${FUSIONS:-"early middle late"}
MODALITIES=${MODALITIES:-"audio video both"}
EPS=${EPS:-"[0.005,0.01,0.02,0.04,0.08]"}   # per value, as a fraction of each input's feature range
read -r -a EXTRA <<< "${EXTRA:-}"        # more overrides for the training runs, e.g. EXTRA="train.max_steps=2"
read -r -a ATTACK <<< "${ATTACK:-}"      # more overrides for the attacks, e.g. ATTACK="attack.universal=true"
rm -rf "$WORK"
mkdir -p "$WORK"

for fusion in $FUSIONS; do
    $PERCLI finetune av-fusion model.fusion="$fusion" --run-dir "$WORK/$fusion" "${EXTRA[@]}" --json \
        > "$WORK/$fusion.json"
    for modality in $MODALITIES; do
        $PERCLI eval adversarial checkpoint="$WORK/$fusion" attack.modality="$modality" attack.norm=linf \
            attack.method=pgd "attack.eps=$EPS" --run-dir "$WORK/$fusion-$modality" "${ATTACK[@]}" --json \
            > "$WORK/$fusion-$modality.json"
    done
done

"$PYTHON" - "$WORK" "$FUSIONS" "$MODALITIES" <<'PY'
import json, sys
from pathlib import Path

work, fusions, modalities = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split()
for fusion in fusions:
    train = json.loads((work / f"{fusion}.json").read_text())["metrics"]
    print(f"{fusion}: clean top-1 {train['eval/top1']:.3f}")
    for modality in modalities:
        curve = json.loads((work / f"{fusion}-{modality}.json").read_text())["curve"]
        points = "  ".join(f"{p['eps']:g}: {p[curve['metric']]:.3f}" for p in curve["points"])
        print(f"  {modality:5s} clean {curve['clean']:.3f}  {points}  monotone: {curve['monotone']}")
PY
