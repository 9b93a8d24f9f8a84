#!/bin/bash
# DiffMAE on embedded data: pretrain, fine-tune its encoder against the same classifier from random weights, and
# score inpainting of held-out data (a sampled completion and the one-step x0 estimate) against the mean-colour
# fill. PRESET=tiny: images (the shapes, ~12 min on 2 CPU cores); PRESET=tiny-video: video (moving-shape clips,
# the class is the motion; ~20 min). Run from anywhere: bash examples/diffmae/tiny.sh [WORK_DIR]
set -euo pipefail
PRESET=${PRESET:-tiny}          # tiny | tiny-video
WORK=${1:-runs/diffmae-$PRESET}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-5000}            # pretraining steps (the presets' 600 is a smoke run)
FT_STEPS=${FT_STEPS:-1000}
IMAGES=${IMAGES:-64}            # held-out images (clips) inpainted
read -r -a EXTRA <<< "${EXTRA:-}"  # more overrides for every training run
rm -rf "$WORK"
mkdir -p "$WORK/heldout"

$PERCLI pretrain diffmae --preset "$PRESET" --run-dir "$WORK/pretrain" train.max_steps="$STEPS" "${EXTRA[@]}" \
    --json > "$WORK/pretrain.json"
$PERCLI finetune diffmae --preset "$PRESET" --run-dir "$WORK/ft-pretrained" model.checkpoint="$WORK/pretrain" \
    train.max_steps="$FT_STEPS" "${EXTRA[@]}" --json > "$WORK/ft-pretrained.json"
$PERCLI finetune diffmae --preset "$PRESET" --run-dir "$WORK/ft-scratch" train.max_steps="$FT_STEPS" \
    "${EXTRA[@]}" --json > "$WORK/ft-scratch.json"

# held-out embedded data as files (PNG images or MP4 clips at the run's input size), then `percli eval inpaint`
# on them (random patch masks at the run's mask ratio, seed 0)
"$PYTHON" - "$WORK/heldout" "$IMAGES" "$WORK/pretrain" <<'PY'
import sys
from pathlib import Path

import torch
from torchvision.transforms.functional import to_pil_image

from percli.core.data import build_dataset
from percli.core.data.embedded_plm import write_mp4
from percli.models import load_run_model

out, n, run = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
size = load_run_model(run, "diffmae", "percli pretrain diffmae")[1]["input_size"]
video = len(size) == 3
kw = dict(num_clips=n, num_frames=size[0]) if video else dict(num_images=n)
items = build_dataset("embedded", kind="video" if video else "image", transform=None, split="val",
                      image_size=size[-1], **kw)
for i in range(n):
    if video:
        write_mp4(out / f"{i:03d}.mp4", items.render(i), fps=8)
    else:
        to_pil_image(torch.as_tensor(items[i]["image"])).save(out / f"{i:03d}.png")
PY
RATIO=$("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['inpainting']['mask_ratio'])" \
    "$WORK/pretrain.json")
for steps in 1 50; do
    $PERCLI eval inpaint "$WORK/heldout" --checkpoint "$WORK/pretrain" --mask-ratio "$RATIO" --steps "$steps" \
        --json > "$WORK/inpaint-$steps.json"
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
