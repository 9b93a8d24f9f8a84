#!/bin/bash
# YouTube-8M on the embedded videos (64 classes, ~3.4 labels a video drawn from latent topics, written as official
# video-level TFRecords): the starter's MoE as the first stage, latent concept mining on its class scores as the
# second, then GAP@20 / hit@1 / PERR of both on the held-out test split and their weighted ensemble (weights fit
# on the validate split). About 2 minutes on 2 CPU cores. Run from anywhere: bash examples/yt8m/tiny.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-runs/yt8m-tiny}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
read -r -a EXTRA <<< "${EXTRA:-}"  # more overrides for both training runs (a smoke run: smaller, shorter)
mkdir -p "$WORK"

# 1. first stage: the starter's mixture of experts on the mean rgb/audio features
$PERCLI finetune yt8m --run-dir "$WORK/moe" --overwrite "${EXTRA[@]}"
# 2. second stage: the concept model reads the first stage's 64 class scores (cached in concepts/first_stage/)
$PERCLI finetune yt8m --preset tiny-concepts first_stage="$WORK/moe" --run-dir "$WORK/concepts" --overwrite \
    "${EXTRA[@]}"
# 3. GAP@20 of each run on the test split, and of their ensemble
$PERCLI eval gap "$WORK/moe" "$WORK/concepts" --run-dir "$WORK/gap" --overwrite
