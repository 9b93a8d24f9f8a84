#!/bin/bash
# PE-AV and PE-A-Frame end to end on the embedded audio-video clips: train the tiny models, compare them with
# random-init models of the same architecture (retrieval R@k, SED F1/AUROC), embed a written manifest, detect
# events in written clips, and run the AV-SUPERB mini-benchmark with the trained PE-AV as upstream.
# Run from anywhere: bash examples/audiovisual/pe_av_tiny.sh [WORK_DIR]   (~8 min on 2 CPU cores)
set -euo pipefail
WORK=${1:-runs/pe-av-example}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
AV_STEPS=${AV_STEPS:-600}       # the tiny presets' lengths; fewer for a quicker smoke run
FRAME_STEPS=${FRAME_STEPS:-300}
CLIPS=${CLIPS:-400}             # embedded training clips (the held-out evaluations use a quarter, at least 20)
AVS_STEPS=${AVS_STEPS:-20}      # AV-SUPERB head steps
BASELINES=${BASELINES:-1}       # 0: skip the random-init baselines (a quicker smoke run)
rm -rf "$WORK"
mkdir -p "$WORK"

# 1. PE-AV: trained, and a random-init baseline (one step at a vanishing learning rate)
$PERCLI pretrain pe-av --run-dir "$WORK/peav" train.max_steps="$AV_STEPS" data.embedded_size="$CLIPS"
runs=(peav)
if [ "$BASELINES" = 1 ]; then
    $PERCLI pretrain pe-av --run-dir "$WORK/peav-random" train.max_steps=1 optim.lr=1e-12 data.embedded_size="$CLIPS"
    runs+=(peav-random)
fi
for run in "${runs[@]}"; do
    $PERCLI eval retrieval model.checkpoint="$(ls -d "$WORK/$run"/checkpoints/step_* | tail -1)" \
        data.embedded_size="$CLIPS" --run-dir "$WORK/retrieval-$run" --json > "$WORK/retrieval-$run.json"
done

# 2. PE-A-Frame: trained and random, scored on the held-out clips' strong labels
$PERCLI finetune pe-a-frame --run-dir "$WORK/paf" train.max_steps="$FRAME_STEPS" data.embedded_size="$CLIPS"
runs=(paf)
if [ "$BASELINES" = 1 ]; then
    $PERCLI finetune pe-a-frame --run-dir "$WORK/paf-random" train.max_steps=1 optim.lr=1e-12 \
        data.embedded_size="$CLIPS"
    runs+=(paf-random)
fi
for run in "${runs[@]}"; do
    $PERCLI eval sed model.checkpoint="$(ls -d "$WORK/$run"/checkpoints/step_* | tail -1)" \
        data.embedded_size="$CLIPS" --run-dir "$WORK/sed-$run" --json > "$WORK/sed-$run.json"
done

# 3. Written clips (mp4 + wav, captions.jsonl, events.tsv): embed them, find their events
"$PYTHON" -c "from percli.core.data.av_events import make_av_events; make_av_events('$WORK/clips', 8, seed=7, split='test')"
$PERCLI embed "$WORK/clips/captions.jsonl" --checkpoint "$(ls -d "$WORK/peav"/checkpoints/step_* | tail -1)" \
    -o "$WORK/embeddings"
$PERCLI detect events "$WORK"/clips/clips/*.wav --checkpoint "$(ls -d "$WORK/paf"/checkpoints/step_* | tail -1)" \
    -t "a dog barking" -t "a siren" -o "$WORK/events.json" --run-dir "$WORK/detect"
$PERCLI eval sed model.checkpoint="$(ls -d "$WORK/paf"/checkpoints/step_* | tail -1)" \
    data.source="$WORK/clips/events.tsv" data.audio_root="$WORK/clips/clips" --run-dir "$WORK/sed-written" \
    --json > "$WORK/sed-written.json"

# 4. The trained PE-AV as an AV-SUPERB upstream (Kinetics-Sounds-like task of the mini-benchmark)
$PERCLI eval av-superb --upstream pe-av --checkpoint "$(ls -d "$WORK/peav"/checkpoints/step_* | tail -1)" \
    --tasks ks --features fusion --steps "$AVS_STEPS" --run-dir "$WORK/avsuperb" --json > "$WORK/avsuperb.json"

"$PYTHON" - "$WORK" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
for run in ("peav", "peav-random"):
    if not (work / f"retrieval-{run}.json").is_file():
        continue
    m = json.loads((work / f"retrieval-{run}.json").read_text())["metrics"]
    print(f"{run:12s} R@10 t2a {m['t2a_R@10']:.3f}  t2v {m['t2v_R@10']:.3f}  v2a {m['v2a_R@10']:.3f}")
for run in ("paf", "paf-random", "written"):
    if not (work / f"sed-{run}.json").is_file():
        continue
    m = json.loads((work / f"sed-{run}.json").read_text())["metrics"]
    print(f"sed {run:10s} AUROC {m['auroc']:.3f}  segment F1 {m['segment_f1_micro']:.3f}  "
          f"event F1 {m['event_f1_micro']:.3f}")
print("embedded clips:", json.loads((work / "embeddings" / "summary.json").read_text())["clips_embedded"])
print("events found:", sum(len(f["events"]) for f in json.loads((work / "events.json").read_text())["files"]))
PY
