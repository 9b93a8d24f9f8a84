#!/bin/bash
# Soundscape stylization on the embedded scenes: train the mel VAE and the latent diffusion model, re-record a
# held-out utterance in the scene of a held-out hint video, and score the held-out cross-scene items with the
# hint and with the hint zeroed. Run from anywhere: bash examples/soundscape/tiny.sh [WORK_DIR]
# (~35 min on 2 CPU cores; add VOCODER_STEPS=1000 to train and use a HiFi-GAN generator instead of Griffin-Lim)
set -euo pipefail
WORK=${1:-runs/soundscape-tiny}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-1500}            # latent diffusion steps (the VAE stage is vae_train.max_steps, 600)
VOCODER_STEPS=${VOCODER_STEPS:-0}
ITEMS=${ITEMS:-128}             # held-out cross-scene items scored by `eval stylize`
read -r -a EXTRA <<< "${EXTRA:-}"  # more overrides for the training runs
rm -rf "$WORK"
mkdir -p "$WORK"

VOCODER=()
if [ "$VOCODER_STEPS" != 0 ]; then
    $PERCLI pretrain vocoder --run-dir "$WORK/vocoder" train.max_steps="$VOCODER_STEPS" "${EXTRA[@]}" --json \
        > "$WORK/vocoder.json"
    VOCODER=(--vocoder "$WORK/vocoder")
fi
$PERCLI pretrain soundscape --run-dir "$WORK/run" train.max_steps="$STEPS" "${EXTRA[@]}" --json > "$WORK/run.json"
# the run wrote held-out material to try: input_<i>.wav (enhanced speech of one scene), hint_<i>.mp4 (another)
$PERCLI tts stylize "$WORK/run/samples/input_0.wav" --hint "$WORK/run/samples/hint_1.mp4" --checkpoint "$WORK/run" \
    "${VOCODER[@]}" -o "$WORK/input0_in_scene_of_hint1.wav" --json > "$WORK/stylize.json"
$PERCLI eval stylize --checkpoint "$WORK/run" --estimator "$WORK/run/rt60_estimator.safetensors" --guidance 1 \
    --items "$ITEMS" --steps 25 "${VOCODER[@]}" --json > "$WORK/eval-guidance1.json"

"$PYTHON" - "$WORK" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
for name, figures in (("guidance 3 (end of run)", json.loads((work / "run.json").read_text())["stylize"]),
                      ("guidance 1", json.loads((work / "eval-guidance1.json").read_text()))):
    e = figures["rt60_error"]
    print(f"{name:24s} RT60 error (s): input {e['input']:.3f}  stylized {e['stylized']:.3f}  "
          f"hint zeroed {e['hint_zeroed']:.3f}  target {e['target']:.3f}  "
          f"hint match R@1 {figures['hint_match_r1']['stylized']:.2f}")
out = json.loads((work / "stylize.json").read_text())
print(f"stylized {out['duration_s']:.2f} s -> {out['output']} (+ {out['spectrogram']})")
PY
