#!/bin/bash
# The video-language recipes end to end on the embedded English-German videos (per-second features of rendered
# moving shapes, captions with times): VideoCLIP, support-set bottlenecks, VLM (pretraining, then retrieval
# finetuning) and multilingual MMP against random-init models, then `eval retrieval` on a written HowTo100M-layout
# folder with the VideoCLIP checkpoint.
# Run from anywhere: bash examples/video_text/tiny.sh [WORK_DIR]   (~12 min on 2 CPU cores)
set -euo pipefail
WORK=${1:-runs/video-text-example}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-300}             # the tiny presets' lengths (VLM's preset runs 3000; this caps every method)
BASELINES=${BASELINES:-1}       # 0: skip the random-init pretraining baselines (a quicker smoke run)
read -r -a EXTRA <<< "${EXTRA:-}"  # more overrides for every run, e.g. EXTRA="data.embedded_size=20"
rm -rf "$WORK"
mkdir -p "$WORK"
last() { ls -d "$WORK/$1"/checkpoints/step_* | tail -1; }

for method in videoclip support-set vlm mmp; do
    $PERCLI pretrain "$method" --run-dir "$WORK/$method" train.max_steps="$STEPS" "${EXTRA[@]}" --json \
        > "$WORK/$method.json"
    if [ "$BASELINES" = 1 ]; then
        $PERCLI pretrain "$method" --run-dir "$WORK/$method-random" train.max_steps=1 optim.lr=1e-12 "${EXTRA[@]}" \
            --json > "$WORK/$method-random.json"
    fi
done
# VLM's retrieval finetuning (text->video) from the masked-token run, and from random weights
$PERCLI finetune vlm --run-dir "$WORK/vlm-ft" model.checkpoint="$WORK/vlm" train.max_steps="$STEPS" "${EXTRA[@]}" \
    --json > "$WORK/vlm-ft.json"
$PERCLI finetune vlm --run-dir "$WORK/vlm-ft-random" train.max_steps="$STEPS" "${EXTRA[@]}" --json \
    > "$WORK/vlm-ft-random.json"
# MMP trained on English only: German retrieval becomes zero-shot
$PERCLI pretrain mmp --run-dir "$WORK/mmp-en" data.languages=[en] train.max_steps="$STEPS" "${EXTRA[@]}" --json \
    > "$WORK/mmp-en.json"

# A written HowTo100M-layout folder (how2_en.json, how2_de.json, features/<id>.npy, clips_<lang>.csv) scored by
# the trained VideoCLIP as a YouCook2-style clip-retrieval set
"$PYTHON" -c "from percli.core.data.embedded_video_text import make_video_text; make_video_text('$WORK/how2', 20, seed=9, split='test')"
$PERCLI eval retrieval model.checkpoint="$(last videoclip)" data.source="$WORK/how2/clips_en.csv" \
    data.features="$WORK/how2/features" --run-dir "$WORK/retrieval" --json > "$WORK/retrieval.json"

"$PYTHON" - "$WORK" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
for method in ("videoclip", "support-set", "vlm", "vlm-ft", "mmp", "mmp-en"):
    for run in (method, f"{method}-random"):
        if not (work / f"{run}.json").is_file():
            continue
        m = json.loads((work / f"{run}.json").read_text())["metrics"]
        keys = ("eval/en_t2v_R@1", "eval/de_t2v_R@1") if method.startswith("mmp") else ("eval/t2v_R@1",)
        print(f"{run:20s} " + "  ".join(f"{k.split('/')[1]} {m[k]:.3f}" for k in keys))
m = json.loads((work / "retrieval.json").read_text())["metrics"]
print(f"eval retrieval (written clips): t2v R@1 {m['t2v_R@1']:.3f}  v2t R@1 {m['v2t_R@1']:.3f}")
PY
