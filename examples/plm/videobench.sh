#!/bin/bash
# PLM-VideoBench (FGQA, SGQA, RCap, RTLoc, RDCap) with `percli eval plm-videobench`.
#
# The real benchmark: set PLM (a release folder, e.g. facebook/Perception-LM-8B downloaded, or a `percli finetune
# plm` run), BENCH (the hub data set facebook/PLM-VideoBench: fgqa/, sgqa/, rcap/, rtloc/, rdcap/, metadata/),
# FGQA_VIDEOS (the trimmed FGQA clips), SGQA_VIDEOS (videos/sgqa of the hub), SAV_VIDEOS (SA-V videos_fps_6) and
# the judge: JUDGE_URL + JUDGE_MODEL of an OpenAI-compatible server, e.g. the benchmark's judge on vLLM:
#   vllm serve meta-llama/Llama-3.3-70B-Instruct --tensor-parallel-size 4 --port 8000
#   JUDGE_URL=http://localhost:8000/v1 JUDGE_MODEL=meta-llama/Llama-3.3-70B-Instruct
# Run it again after a crash (or a judge outage): the run continues with --resume, asking the model only the
# questions it has not answered.
#
# Without PLM: a smoke run on a tiny model and a generated mini benchmark, judge-free tasks only (~1 min on 2
# CPU cores). Run from anywhere: bash examples/plm/videobench.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-runs/plm-videobench-example}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-2}               # tiny model's training steps (the smoke run measures plumbing, not accuracy)

if [[ -n "${PLM:-}" ]]; then
    RESUME=()
    [[ -f "$WORK/full/config.yaml" ]] && RESUME=(--resume)
    $PERCLI eval plm-videobench --checkpoint "$PLM" --annotations "$BENCH" \
        --media-root fgqa="$FGQA_VIDEOS" --media-root sgqa="$SGQA_VIDEOS" --media-root stc="$SAV_VIDEOS" \
        --judge-endpoint "$JUDGE_URL" --judge-model "$JUDGE_MODEL" --batch-size 8 --run-dir "$WORK/full" \
        "${RESUME[@]}"
    # Judge-free figures only (FGQA MBAcc, RTLoc meanR/mIoU), e.g. while the judge is not up yet:
    #   $PERCLI eval plm-videobench --checkpoint "$PLM" --annotations "$BENCH" --media-root fgqa="$FGQA_VIDEOS" \
    #       --media-root stc="$SAV_VIDEOS" --judge none --run-dir "$WORK/judge-free"
    exit 0
fi

rm -rf "$WORK"
mkdir -p "$WORK"

# 1. A tiny PerceptionLM (byte-level vocabulary, 1024-token context so the region prompts fit).
$PERCLI finetune plm --run-dir "$WORK/tiny" train.max_steps="$STEPS" data.embedded_size=40 data.val_size=8 \
    model.kwargs.max_seqlen=1024

# 2. A mini benchmark in the hub layout: two 6 fps videos of a moving square, FGQA and RTLoc questions, boxes.
"$PYTHON" - "$WORK/bench" <<'PY'
import json, sys
from pathlib import Path

import numpy as np

from percli.core.data.embedded_plm import write_mp4

bench = Path(sys.argv[1])
for folder in ("videos", "fgqa", "rtloc", "metadata"):
    (bench / folder).mkdir(parents=True, exist_ok=True)
for name, frames in (("a.mp4", 48), ("b.mp4", 36)):
    pixels = np.zeros((frames, 48, 64, 3), dtype=np.uint8)
    for t in range(frames):
        pixels[t, 16:32, t % 48:t % 48 + 16] = 255
    write_mp4(bench / "videos" / name, pixels, fps=6)


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


options = {"option_0": "a square", "option_1": "a circle"}
write(bench / "fgqa" / "plm_fgqa_test.jsonl", [
    {"uid": f"q{i}_0", "qa_uid": f"q{i}", "video": video, "question": "What moves?", "answer": "a square",
     "options": options} for i, video in enumerate(("a.mp4", "b.mp4"))])
write(bench / "rtloc" / "plm_rtloc_test.jsonl", [
    {"uid": i, "video": video, "masklet_id": 0, "total_frames": frames, "caption": "the square moves right",
     "start_frame": 0, "end_frame": frames - 1} for i, (video, frames) in enumerate((("a.mp4", 48), ("b.mp4", 36)))])
write(bench / "metadata" / "metadata_test.jsonl", [
    {"video": video, "masklet_id": 0, "bbox": {str(f): [f % 48, 16, f % 48 + 16, 32] for f in range(frames)}}
    for video, frames in (("a.mp4", 48), ("b.mp4", 36))])
PY

# 3. The judge-free tasks on it (8 frames per region video, as the tiny model's context allows).
$PERCLI eval plm-videobench --checkpoint "$WORK/tiny" --annotations "$WORK/bench" \
    --media-root "$WORK/bench/videos" --judge none --num-frames 8 --num-workers 0 --run-dir "$WORK/eval" \
    --json > "$WORK/eval_summary.json"

# 4. Asked again, the finished run answers nothing twice (--resume skips every predicted uid).
$PERCLI eval plm-videobench --run-dir "$WORK/eval" --resume --json > "$WORK/eval_resumed.json"
echo "predictions: $WORK/eval/{fgqa,rtloc}/predictions.jsonl; figures: $WORK/eval/summary.json"
