#!/bin/bash
# MAViL end to end on the embedded audio-video clips: stage 1 (masked reconstruction + intra/inter-modal
# contrast), stage 2 (self-training on the frozen stage-1 teacher), each against a random-init model of the
# same architecture (held-out audio<->video retrieval and a linear probe on the events), then classification
# finetuning from the stage-2 encoder and the AV-SUPERB mini-benchmark with it as upstream.
# Run from anywhere: bash examples/audiovisual/mavil_tiny.sh [WORK_DIR]   (~15 min on 2 CPU cores)
set -euo pipefail
WORK=${1:-runs/mavil-example}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-400}             # the tiny presets' lengths; fewer for a quicker smoke run
FT_STEPS=${FT_STEPS:-300}
CLIPS=${CLIPS:-400}             # embedded training clips (the held-out evaluations use a quarter, at least 20)
AVS_STEPS=${AVS_STEPS:-20}      # AV-SUPERB head steps
read -r -a EXTRA <<< "${EXTRA:-}"  # more overrides for every training run, e.g. EXTRA="train.batch_size=4"
rm -rf "$WORK"
mkdir -p "$WORK"
last() { ls -d "$WORK/$1"/checkpoints/step_* | tail -1; }

# 1. Stage 1, and a random-init baseline (one step at a vanishing learning rate)
$PERCLI pretrain mavil --run-dir "$WORK/stage1" train.max_steps="$STEPS" data.embedded_size="$CLIPS" "${EXTRA[@]}" \
    --json > "$WORK/stage1.json"
$PERCLI pretrain mavil --run-dir "$WORK/random" train.max_steps=1 optim.lr=1e-12 data.embedded_size="$CLIPS" \
    "${EXTRA[@]}" --json > "$WORK/random.json"

# 2. Stage 2: a new student regresses the frozen stage-1 teacher's fused audio and video tokens
$PERCLI pretrain mavil --preset stage2 model.teacher="$WORK/stage1" --run-dir "$WORK/stage2" \
    train.max_steps="$STEPS" data.embedded_size="$CLIPS" "${EXTRA[@]}" --json > "$WORK/stage2.json"

# 3. Audio<->video retrieval of the stage-2 encoder through `eval retrieval` (its trained projections)
$PERCLI eval retrieval model.checkpoint="$(last stage2)" data.embedded_size="$CLIPS" --run-dir "$WORK/retrieval" \
    --json > "$WORK/retrieval.json"

# 4. Classification finetuning: from the stage-2 encoder and from scratch (the fine-tuned layout adds a fusion
#    block and head_av, reported as left at init)
for init in stage2 scratch; do
    ckpt=()
    if [ "$init" = stage2 ]; then ckpt=(model.checkpoint="$(last stage2)"); fi
    $PERCLI finetune mavil --run-dir "$WORK/ft-$init" "${ckpt[@]}" train.max_steps="$FT_STEPS" \
        data.embedded_size="$CLIPS" "model.kwargs={img_size: [400, 128], embed_dim: 64, depth: 2, num_heads: 4, \
n_frm: 8, video_size: 64}" "${EXTRA[@]}" --json > "$WORK/ft-$init.json"
done

# 5. The stage-1 encoder as an AV-SUPERB upstream (Kinetics-Sounds-like task of the mini-benchmark)
$PERCLI eval av-superb --upstream mavil --checkpoint "$(last stage1)" --tasks ks --features fusion \
    --steps "$AVS_STEPS" --run-dir "$WORK/avsuperb" --json > "$WORK/avsuperb.json"

"$PYTHON" - "$WORK" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
for run in ("stage1", "random", "stage2"):
    m = json.loads((work / f"{run}.json").read_text())["metrics"]
    print(f"{run:7s} a2v R@1 {m['eval/a2v_R@1']:.3f}  v2a R@1 {m['eval/v2a_R@1']:.3f}  "
          f"a2v R@10 {m['eval/a2v_R@10']:.3f}  probe mAP {m['eval/probe_mAP']:.3f}")
m = json.loads((work / "retrieval.json").read_text())["metrics"]
print(f"eval retrieval (stage 2): a2v R@1 {m['a2v_R@1']:.3f}  v2a R@1 {m['v2a_R@1']:.3f}")
for init in ("stage2", "scratch"):
    m = json.loads((work / f"ft-{init}.json").read_text())["metrics"]
    print(f"finetune from {init:7s} mAP {m['eval/mAP']:.3f}")
print("AV-SUPERB:", json.dumps(json.loads((work / "avsuperb.json").read_text()).get("metrics", {}))[:200])
PY
