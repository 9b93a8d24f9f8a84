#!/bin/bash
# MoDE data experts end to end on an image-text pool: cluster the captions, write each expert's shard,
# train a seed CLIP on everything, branch one expert per cluster from it, ensemble them zero-shot.
# The pool here is the embedded captioned shapes written as PNG + JSONL (2,000 pairs); with your own
# pool.jsonl ({"image": PATH, "text": CAPTION} per line) start at step 2. CPU, about 8 minutes.
# Run from anywhere: bash examples/curation/mode_experts.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-runs/mode-experts-example}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
POOL=${POOL:-2000} SEED_STEPS=${SEED_STEPS:-300} EXPERT_STEPS=${EXPERT_STEPS:-200} SMALL=${SMALL:-}  # smoke run: shorter, smaller
mkdir -p "$WORK/pool/img"

# 1. The pool and the task's class names.
"$PYTHON" - "$WORK/pool" "$POOL" <<'PY'
import json, sys
from pathlib import Path
from PIL import Image
from percli.core.data.captioned import CLASS_NAMES, CaptionedShapesDataset
out = Path(sys.argv[1])
shapes = CaptionedShapesDataset("train", int(sys.argv[2]), image_size=32)
with open(out / "pool.jsonl", "w") as f:
    for i in range(len(shapes)):
        pixels, caption = shapes.render(i)
        Image.fromarray(pixels).save(out / "img" / f"{i}.png")
        f.write(json.dumps({"image": f"img/{i}.png", "text": caption}) + "\n")
(out / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
PY

# 2. Clusters (fine, then coarse = the experts) and each expert's training shard (+2 % out-of-cluster).
$PERCLI curate mode "$WORK/pool/pool.jsonl" --fine 32 --coarse 2 --expert-shards \
    --classes "$WORK/pool/classes.txt" --run-dir "$WORK/mode" --overwrite

# 3. The seed, then one branch per expert (independent runs: any machine, any time).
$PERCLI pretrain clip data.source="$WORK/pool/pool.jsonl" train.max_steps=$SEED_STEPS $SMALL --run-dir "$WORK/seed" \
    --overwrite
SEED="$WORK/seed/checkpoints/step_$(printf %07d "$SEED_STEPS")"
for k in 0 1; do
  $PERCLI pretrain clip data.source="$WORK/mode/experts/expert_$k.jsonl" model.checkpoint="$SEED" \
      train.max_steps=$EXPERT_STEPS $SMALL --run-dir "$WORK/expert$k" --overwrite
done
EXPERT="checkpoints/step_$(printf %07d "$EXPERT_STEPS")"

# 4. The ensemble, weighted for these class names from the clusters (each expert's and the uniform average
#    are in the report too), and the seed alone.
$PERCLI eval zero-shot "ensemble=[$WORK/expert0/$EXPERT,$WORK/expert1/$EXPERT]" \
    ensemble_centers="$WORK/mode/mode_centers.safetensors" data.source=embedded --run-dir "$WORK/ensemble"
$PERCLI eval zero-shot model.checkpoint="$SEED" data.source=embedded --run-dir "$WORK/seed-eval"
