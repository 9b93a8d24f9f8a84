#!/bin/bash
# DiffMAE on the embedded shapes: pretrain, fine-tune its encoder against the same classifier from random weights,
# and score inpainting of held-out images (a sampled completion and the one-step x0 estimate) against the
# mean-colour fill. Run from anywhere: bash examples/diffmae/tiny.sh [WORK_DIR]   (~12 min on 2 CPU cores)
set -euo pipefail
WORK=${1:-runs/diffmae-tiny}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-5000}            # pretraining steps (the tiny preset's 600 is a smoke run)
FT_STEPS=${FT_STEPS:-1000}
IMAGES=${IMAGES:-64}            # held-out images inpainted
read -r -a EXTRA <<< "${EXTRA:-}"  # more overrides for every training run
rm -rf "$WORK"
mkdir -p "$WORK/heldout"

$PERCLI pretrain diffmae --run-dir "$WORK/pretrain" train.max_steps="$STEPS" "${EXTRA[@]}" --json \
    > "$WORK/pretrain.json"
$PERCLI finetune diffmae --run-dir "$WORK/ft-pretrained" model.checkpoint="$WORK/pretrain" \
    train.max_steps="$FT_STEPS" "${EXTRA[@]}" --json > "$WORK/ft-pretrained.json"
$PERCLI finetune diffmae --run-dir "$WORK/ft-scratch" train.max_steps="$FT_STEPS" "${EXTRA[@]}" --json \
    > "$WORK/ft-scratch.json"

# held-out embedded images as PNG files, then `percli eval inpaint` on them (random 75 % patch masks, seed 0)
"$PYTHON" - "$WORK/heldout" "$IMAGES" <<'PY'
import sys
from pathlib import Path

import torch
from torchvision.transforms.functional import to_pil_image

from percli.core.data import build_dataset

out, n = Path(sys.argv[1]), int(sys.argv[2])
images = build_dataset("embedded", kind="image", transform=None, split="val", num_images=n, image_size=64)
for i in range(n):
    to_pil_image(torch.as_tensor(images[i]["image"])).save(out / f"{i:03d}.png")
PY
for steps in 1 50; do
    $PERCLI eval inpaint "$WORK/heldout" --checkpoint "$WORK/pretrain" --steps "$steps" --json \
        > "$WORK/inpaint-$steps.json"
done

"$PYTHON" - "$WORK" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
for run in ("ft-pretrained", "ft-scratch"):
    m = json.loads((work / f"{run}.json").read_text())["metrics"]
    print(f"{run:14s} top-1 {m['eval/top1']:.3f}  top-5 {m['eval/top5']:.3f}")
for steps in (1, 50):
    m = json.loads((work / f"inpaint-{steps}.json").read_text())["metrics"]
    print(f"inpaint {steps:2d} DDIM steps  PSNR {m['psnr']:.2f} dB (mean fill {m['fill_psnr']:.2f})  "
          f"SSIM {m['ssim']:.3f} (mean fill {m['fill_ssim']:.3f})")
PY
