#!/bin/bash
# Altogether end to end on WebDataset shards: train a tiny captioner on the embedded scenes, re-align the
# alt-texts of a tar pool into captions written back into copies of the shards, score them against the
# true captions, then train a second round on the re-aligned shards (the paper's rounds of re-alignment).
# Run from anywhere: bash examples/captioning/altogether_shards.sh [WORK_DIR]   (~4 min on 2 CPU cores)
set -euo pipefail
WORK=${1:-runs/altogether-shards-example}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-400}             # the tiny preset's length; fewer for a quicker smoke run
SCENES=${SCENES:-200}           # held-out scenes that make the pool
TRAIN_SCENES=${TRAIN_SCENES:-2000}
rm -rf "$WORK"
mkdir -p "$WORK/pool"

# 1. Round 1: the tiny captioner on embedded scenes (images whose true caption is known, web-like alt-texts).
$PERCLI finetune altogether --run-dir "$WORK/round1" train.max_steps="$STEPS" data.eval_size="$SCENES" \
    data.embedded_size="$TRAIN_SCENES"

# 2. A pool of 2 tar shards from the run's held-out scenes: <key>.png + <key>.txt (the alt-text), as
#    img2dataset writes them. The true captions stay outside the pool, in records.jsonl.
"$PYTHON" - "$WORK" <<'PY'
import json, sys, tarfile
from pathlib import Path

work = Path(sys.argv[1])
heldout = work / "round1" / "heldout"
records = [json.loads(line) for line in (heldout / "records.jsonl").read_text().splitlines()]
half = len(records) // 2
for i, part in enumerate((records[:half], records[half:])):
    with tarfile.open(work / "pool" / f"pool-{i:03d}.tar", "w") as tar:
        for rec in part:
            tar.add(heldout / rec["image"], arcname=f"{rec['key']}.png")
            alt = work / "pool" / "alt.tmp"
            alt.write_text(rec["alt_text"])
            tar.add(alt, arcname=f"{rec['key']}.txt")
(work / "pool" / "alt.tmp").unlink()
PY

# 3. Re-align every alt-text; --write-shards also writes shards/pool-00N.tar = the input samples unchanged
#    plus <key>.altogether.txt. Quote the pattern: percli expands braces and globs itself.
$PERCLI caption altogether --images "$WORK/pool/pool-{000..001}.tar" --alt-text txt \
    --checkpoint "$WORK/round1" -o "$WORK/captions" --write-shards --json > "$WORK/caption_summary.json"

# 4. Captions vs the input alt-texts, both against the true captions (BLEU-4, CIDEr-D).
$PERCLI eval caption --captions "$WORK/captions/captions.jsonl" \
    --references "$WORK/round1/heldout/records.jsonl" --field altogether --field alt_text -o "$WORK/eval"

# 5. Round 2: continue round 1's captioner on the re-aligned shards (the alt-text member as the prompt, the
#    new caption as the target).
LAST=$(ls -d "$WORK"/round1/checkpoints/step_* | tail -n 1)
$PERCLI finetune altogether --run-dir "$WORK/round2" decoder.init="$LAST" \
    data.source="$WORK/captions/shards/pool-{000..001}.tar" data.alt_field=txt \
    data.caption_field=altogether.txt train.max_steps=20 train.batch_size=16
