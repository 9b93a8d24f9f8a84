#!/bin/bash
# PerceptionLM from the shell: `percli chat` about an image and a video, then `percli caption plm` over a folder of
# images and videos and over a JSONL manifest (resumed after an interruption, captions written back into a copy).
#
# With a released model: PLM=/models/Perception-LM-1B (facebook/Perception-LM-1B downloaded: its Hugging Face
# layout, or the original/ consolidated one) and MEDIA=/data/my-media (a folder of images and videos); a GPU picks
# bf16 by itself. Without PLM: a smoke run on a tiny model trained for 2 steps on the embedded data (its answers
# are noise; every command is the real one). ~1 min on 2 CPU cores.
# Run from anywhere: bash examples/plm/chat_and_caption.sh [WORK_DIR]
# On a terminal, `percli chat --checkpoint "$PLM" --image photo.jpg` without a question is an interactive chat.
set -euo pipefail
WORK=${1:-runs/plm-chat-caption-example}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-2}               # the tiny model's training steps (smoke run only)
rm -rf "$WORK"
mkdir -p "$WORK"

if [[ -z "${PLM:-}" ]]; then
    $PERCLI finetune plm --run-dir "$WORK/tiny" train.max_steps="$STEPS" data.embedded_size=40 data.val_size=8
    PLM="$WORK/tiny"
fi
if [[ -z "${MEDIA:-}" ]]; then  # 3 images and 3 videos (48 px, 8 frames) of the embedded PLM data
    "$PYTHON" -c "import sys; from percli.core.data.embedded_plm import write_plm_jsonl as w; w(sys.argv[1], 6, 'test')" \
        "$WORK/media"
    MEDIA="$WORK/media/test"
fi
IMAGE=$(find "$MEDIA" -type f \( -name '*.png' -o -name '*.jpg' -o -name '*.jpeg' \) | sort | head -n 1)
VIDEO=$(find "$MEDIA" -type f \( -name '*.mp4' -o -name '*.webm' -o -name '*.mkv' \) | sort | head -n 1)

# 1. One question each: the answer alone on stdout. Greedy by default; at most 256 new tokens (--max-new-tokens).
$PERCLI chat --checkpoint "$PLM" --image "$IMAGE" "What colour is the circle?"
#    --json: {"answer", "tokens", "stopped": stop_token | stop_string | max_new_tokens | context, ...}; fewer
#    frames make a shorter prompt; --stop cuts the answer at a string of your own.
$PERCLI chat --checkpoint "$PLM" --video "$VIDEO" --max-frames 8 --max-new-tokens 32 --stop "." --json \
    "Which shape is moving?" > "$WORK/chat_video.json"
#    Sampled instead of greedy (seeded: the same --seed, the same answer).
$PERCLI chat --checkpoint "$PLM" --image "$IMAGE" --temperature 0.7 --top-p 0.9 --seed 1 --max-new-tokens 32 \
    "Describe the image in one sentence."

# 2. Caption every image and video of the folder: captions.jsonl ({key, path, media, caption, tokens, stopped}),
#    bad_media.jsonl (files that do not decode, prompts too long for the context), summary.json.
$PERCLI caption plm "$MEDIA" --checkpoint "$PLM" --batch-size 4 --chunk-size 4 --max-new-tokens 32 \
    -o "$WORK/captions"

# 3. A manifest ({"key", "image" | "video"} per line), captioned with its own question, written back into a copy
#    of the manifest (field plm_caption), and resumed after an interruption: the resumed run rewrites only the
#    missing chunk, and its captions equal the uninterrupted run's (sampling is seeded per chunk).
"$PYTHON" - "$MEDIA" "$WORK/manifest.jsonl" <<'PY'
import json, sys
from pathlib import Path

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
kinds = {".png": "image", ".jpg": "image", ".jpeg": "image", ".mp4": "video", ".webm": "video", ".mkv": "video"}
files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in kinds)
out.write_text("".join(json.dumps({"key": p.relative_to(folder).as_posix(), kinds[p.suffix.lower()]: str(p.resolve())})
                       + "\n" for p in files))
PY
CAPTION=(caption plm "$WORK/manifest.jsonl" --checkpoint "$PLM" --prompt "What is in this {media}? One sentence."
         --temperature 0.7 --seed 3 --chunk-size 2 --batch-size 2 --max-new-tokens 32 --write-shards)
$PERCLI "${CAPTION[@]}" -o "$WORK/manifest_captions"
cp "$WORK/manifest_captions/captions.jsonl" "$WORK/uninterrupted.jsonl"
# as if the run had stopped before its last chunk
rm "$WORK/manifest_captions/captions.jsonl" "$(ls "$WORK"/manifest_captions/parts/*.jsonl | tail -n 1)"
rm -r "$WORK/manifest_captions/shards"
$PERCLI caption plm -o "$WORK/manifest_captions" --resume --json > "$WORK/resumed_summary.json"
cmp "$WORK/uninterrupted.jsonl" "$WORK/manifest_captions/captions.jsonl"
echo "resumed run = uninterrupted run; shard with captions: $WORK/manifest_captions/shards/manifest.jsonl"
