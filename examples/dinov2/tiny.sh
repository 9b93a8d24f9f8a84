#!/bin/bash
# DINOv2's protocol on the embedded images: the tiny preset as a teacher, distilled into a width-32 student and
# compared with the same student trained alone (k-NN), the teacher's dense linear evaluation (segmentation mIoU,
# depth RMSE) against random init, and a high-resolution continuation (32 -> 64 px). The README's DINOv2 figures
# come from these commands (three seeds for the student runs). ~45 min on 2 CPU cores.
# Run from anywhere: bash examples/dinov2/tiny.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-runs/dinov2-tiny}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
TEACHER_STEPS=${TEACHER_STEPS:-1000}
STUDENT_STEPS=${STUDENT_STEPS:-500}
DENSE_STEPS=${DENSE_STEPS:-300}
HIGHRES_STEPS=${HIGHRES_STEPS:-100}
IMAGES=${IMAGES:-2000}          # embedded images (k-NN holds out a quarter)
SCENES=${SCENES:-400}           # embedded dense scenes for the heads (a quarter held out)
SEED=${SEED:-0}
read -r -a EXTRA <<< "${EXTRA:-}"  # more overrides for every pretraining run
rm -rf "$WORK"
mkdir -p "$WORK"
last() { ls -d "$WORK/$1"/checkpoints/step_* | tail -1; }

$PERCLI pretrain dinov2 --run-dir "$WORK/teacher" train.max_steps="$TEACHER_STEPS" data.embedded_size="$IMAGES" \
    "${EXTRA[@]}" --json > "$WORK/teacher.json"
$PERCLI pretrain dinov2 --preset distill-tiny model.teacher="$WORK/teacher" --run-dir "$WORK/distill" \
    train.max_steps="$STUDENT_STEPS" train.seed="$SEED" data.embedded_size="$IMAGES" "${EXTRA[@]}" --json \
    > "$WORK/distill.json"
$PERCLI pretrain dinov2 --run-dir "$WORK/alone" model.kwargs.embed_dim=32 model.kwargs.num_heads=2 \
    train.max_steps="$STUDENT_STEPS" train.seed="$SEED" data.embedded_size="$IMAGES" "${EXTRA[@]}" --json \
    > "$WORK/alone.json"
for run in distill alone; do
    $PERCLI eval knn model.checkpoint="$(last "$run")" data.embedded_size="$IMAGES" --run-dir "$WORK/knn-$run" \
        --json > "$WORK/knn-$run.json"
done

for init in "$WORK/teacher" random; do
    name=$([ "$init" = random ] && echo random || echo teacher)
    $PERCLI eval dense model.checkpoint="$init" train.max_steps="$DENSE_STEPS" data.embedded_size="$SCENES" \
        --run-dir "$WORK/dense-$name" --json > "$WORK/dense-$name.json"
done

$PERCLI pretrain dinov2 --preset highres-tiny model.init="$WORK/teacher" --run-dir "$WORK/highres" \
    train.max_steps="$HIGHRES_STEPS" data.embedded_size="$IMAGES" "${EXTRA[@]}" --json > "$WORK/highres.json"

"$PYTHON" - "$WORK" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
for run in ("distill", "alone"):
    m = json.loads((work / f"knn-{run}.json").read_text())["metrics"]
    print(f"k-NN {run:8s} " + "  ".join(f"k={k} {100 * m[f'k{k}/top1']:.1f}" for k in (10, 20, 100, 200)))
for run in ("teacher", "random"):
    m = json.loads((work / f"dense-{run}.json").read_text())["metrics"]
    print(f"dense {run:8s} mIoU {100 * m['miou']:.1f}  RMSE {m['rmse']:.3f} m  AbsRel {m['abs_rel']:.3f}")
print("highres", json.loads((work / "highres.json").read_text())["status"])
PY
