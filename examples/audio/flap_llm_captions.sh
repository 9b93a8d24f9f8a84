#!/bin/bash
# FLAP on a captions.jsonl manifest whose training captions are augmented, as the paper does with an LLM
# (detected sound events combined with the caption), kept in their own field and picked by data.caption_key.
# 1. write the embedded audio-video event clips to disk (clips/*.wav, captions.jsonl, events.tsv per split);
# 2. add an "llm_captions" field: a fixed rewrite that appends the clip's labelled events stands in for the
#    LLM here; put your LLM's output in that field instead;
# 3. train the tiny FLAP on it; retrieval is scored on the test split's original captions.
# CPU, about 3 minutes. Run from anywhere: bash examples/audio/flap_llm_captions.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-runs/flap-example}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
TRAIN=${TRAIN:-800} TEST=${TEST:-200} STEPS=${STEPS:-300} SMALL=${SMALL:-}  # smoke run: fewer, smaller
"$PYTHON" - "$WORK/clips" "$TRAIN" "$TEST" <<'PY'
import csv, json, sys
from collections import defaultdict
from pathlib import Path

from percli.core.data.av_events import make_av_events_splits

train = make_av_events_splits(sys.argv[1], num_train=int(sys.argv[2]), num_test=int(sys.argv[3]))["train"]
events = defaultdict(list)  # clip id -> its labels in onset order (the "detected audio events")
with open(train.parent / "events.tsv", newline="") as f:
    for row in csv.DictReader(f, delimiter="\t"):
        events[Path(row["filename"]).stem].append(row["event_label"].replace("_", " "))
rows = [json.loads(line) for line in train.read_text().splitlines() if line.strip()]
for row in rows:
    row["llm_captions"] = [f"{c}; sound events: {', '.join(events[row['id']])}" for c in row["captions"]]
(train.parent / "captions_llm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
PY
$PERCLI pretrain flap data.source="$WORK/clips/train/captions_llm.jsonl" data.caption_key=llm_captions \
    data.val_source="$WORK/clips/test/captions.jsonl" train.max_steps=$STEPS $SMALL \
    --run-dir "$WORK/flap" --overwrite --json \
    | "$PYTHON" -c "import json, sys; m = json.load(sys.stdin)['metrics']; \
print({k: round(m[f'eval/{k}'], 3) for k in ('t2a_R@1', 't2a_R@10', 'a2t_R@1', 'a2t_R@10')})"
