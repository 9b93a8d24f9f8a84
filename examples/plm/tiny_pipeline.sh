#!/bin/bash
# A tiny PerceptionLM the way the release builds one, on the embedded images and videos: a PE vision tower
# pretrained contrastively first (here `percli pretrain clip` with a tiny PE-Core tower on the embedded PLM images
# and their question+answer texts), then `percli finetune plm` starting its vision tower from it (init.vision_model),
# against the same model from scratch and a text-only model that never sees the pixels.
# Run from anywhere: bash examples/plm/tiny_pipeline.sh [WORK_DIR]   (~60 min on 2 CPU cores)
set -euo pipefail
WORK=${1:-runs/plm-tiny-pipeline}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
CLIP_STEPS=${CLIP_STEPS:-800}
STEPS=${STEPS:-1200}            # twice the tiny preset's 600: the pretrained-PE run is still improving there
STAGE_STEPS=${STAGE_STEPS:-600} # each of the staged runs (stage 1, then stage 3)
read -r -a EXTRA <<< "${EXTRA:-}"  # more overrides for every finetune run, e.g. EXTRA="data.embedded_size=40"
rm -rf "$WORK"
mkdir -p "$WORK"

# 1. the embedded PLM training images with one text each ("What colour is the circle? red")
"$PYTHON" - "$WORK/clip-data" <<'PY'
import json, sys
from pathlib import Path
from percli.core.data.embedded_plm import PLMDataSpec, write_plm_jsonl
jsonl = write_plm_jsonl(sys.argv[1], 3000, split="train", media="image", spec=PLMDataSpec(image_size=48))
rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
Path(sys.argv[1], "clip.jsonl").write_text("".join(
    json.dumps({"image": r["image"], "text": f"{r['question']} {r['answer']}"}) + "\n" for r in rows))
PY
# 2. a tiny PE-Core CLIP on them; its vision tower has the tiny PLM tower's sizes (48 px, patch 8, 64 wide, 2 blocks)
$PERCLI pretrain clip --run-dir "$WORK/pe-clip" model.name=pe_core_t16_384 \
    "model.kwargs={vision_cfg: {image_size: 48, patch_size: 8, width: 64, layers: 2, heads: 2, output_dim: 64, ls_init_value: 0.1}, text_cfg: {context_length: 32, width: 64, heads: 2, layers: 2, output_dim: 64}}" \
    data.source="$WORK/clip-data/clip.jsonl" train.max_steps="$CLIP_STEPS" train.batch_size=64 optim.ref_batch_size=64 \
    optim.lr=2e-3 train.num_workers=0 --json > "$WORK/pe-clip.json"
PE=$(ls -d "$WORK"/pe-clip/checkpoints/step_* | tail -1)/model.safetensors
# 3. PLM from the pretrained PE, from scratch, and text-only
$PERCLI finetune plm --run-dir "$WORK/plm-pe" init.vision_model="$PE" train.max_steps="$STEPS" "${EXTRA[@]}" --json \
    > "$WORK/plm-pe.json"
$PERCLI finetune plm --run-dir "$WORK/plm-scratch" train.max_steps="$STEPS" "${EXTRA[@]}" --json > "$WORK/plm-scratch.json"
$PERCLI finetune plm --run-dir "$WORK/plm-text" data.text_only=true train.max_steps="$STEPS" "${EXTRA[@]}" --json \
    > "$WORK/plm-text.json"
$PERCLI finetune plm --run-dir "$WORK/plm-init" train.max_steps=1 optim.lr=1e-12 "${EXTRA[@]}" --json \
    > "$WORK/plm-init.json"
# 4. the release's staging on the tiny presets: stage 1 (projector only) over the text-only decoder and the
#    pretrained PE, then stage 3 (everything) from that run
TEXT=$(ls -d "$WORK"/plm-text/checkpoints/step_* | tail -1)
$PERCLI finetune plm --preset tiny-stage1 --run-dir "$WORK/plm-stage1" model.checkpoint="$TEXT" \
    init.vision_model="$PE" train.max_steps="$STAGE_STEPS" "${EXTRA[@]}" --json > "$WORK/plm-stage1.json"
STAGE1=$(ls -d "$WORK"/plm-stage1/checkpoints/step_* | tail -1)
$PERCLI finetune plm --run-dir "$WORK/plm-stage3" model.checkpoint="$STAGE1" train.max_steps="$STAGE_STEPS" \
    "${EXTRA[@]}" --json > "$WORK/plm-stage3.json"

"$PYTHON" - "$WORK" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
for run in ("plm-pe", "plm-scratch", "plm-text", "plm-init", "plm-stage1", "plm-stage3"):
    m = json.loads((work / f"{run}.json").read_text())["metrics"]
    print(f"{run:12s} exact-answer accuracy {m['eval/exact_answer_acc']:.3f}  answer loss {m['eval/loss']:.4f}")
PY
