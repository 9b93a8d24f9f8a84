#!/bin/bash
# MetaCLIP curation of a sharded pool: Parquet and WebDataset tar shards, the one-shot command,
# the match | count | balance stages, an index output, two processes and a resumed run.
# The tiny pool is the embedded demo pool (20k synthetic alt-texts) cut into 4 + 4 shards.
# Run from anywhere: bash examples/curation/metaclip_shards.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-runs/metaclip-shards-example}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
rm -rf "$WORK"
mkdir -p "$WORK/pool"

# 1. Inputs: the demo pool and metadata, written as pool-000..003.parquet and pool-000..003.tar
#    (a tar sample = <key>.txt + <key>.json, as img2dataset writes them; the image is left out).
"$PYTHON" - "$WORK" <<'PY'
import io, json, sys, tarfile
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
from percli.curation.demo import demo_metadata, demo_pool

work = Path(sys.argv[1])
(work / "metadata.json").write_text(json.dumps(demo_metadata()))
pool = demo_pool(20000)
for i in range(4):
    part = pool[i * 5000:(i + 1) * 5000]
    pq.write_table(pa.Table.from_pylist(part), work / "pool" / f"pool-{i:03d}.parquet")
    with tarfile.open(work / "pool" / f"pool-{i:03d}.tar", "w") as tar:
        for rec in part:
            for ext, data in (("txt", rec["text"].encode()), ("json", json.dumps(rec).encode())):
                info = tarfile.TarInfo(f"{rec['id']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
PY
META="$WORK/metadata.json"

# 2. One shot (match + count + balance): curated/pool-00N.parquet keep the schema plus metaclip_entries.
#    Quote the pattern: percli expands braces and globs itself (the shell would too, unquoted).
$PERCLI curate metaclip "$WORK/pool/pool-{000..003}.parquet" -m "$META" --t 100 -o "$WORK/oneshot"

# 3. The same on the tar shards, stage by stage. Texts are the .txt members (--text-field txt);
#    --text-field text would read field "text" of each sample's .json instead.
TARS="$WORK/pool/pool-{000..003}.tar"
$PERCLI curate metaclip match "$TARS" -m "$META" --text-field txt -o "$WORK/match"
$PERCLI curate metaclip count "$WORK/match" -m "$META" -o "$WORK/count"
$PERCLI curate metaclip balance "$TARS" -m "$META" --text-field txt --t 100 \
  --counts "$WORK/count/entry_counts.json" --matches "$WORK/match" -o "$WORK/balanced"

# 4. An index instead of copies: curated/pool-00N.index.jsonl = {"index", "key", "entries"} per kept sample.
$PERCLI curate metaclip balance "$TARS" -m "$META" --text-field txt --t 100 \
  --counts "$WORK/count/entry_counts.json" --matches "$WORK/match" --output-format index -o "$WORK/index"

# 5. Two processes (CPU, gloo): rank r takes shards r::2, counts are all-reduced, outputs equal one process's.
ACCELERATE_USE_CPU=true "$PYTHON" -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 \
  --mixed_precision no --dynamo_backend no -m percli.cli curate metaclip "$WORK/pool/pool-*.parquet" \
  -m "$META" --t 100 -o "$WORK/two_procs" --json > "$WORK/two_procs.json"
cmp "$WORK/oneshot/curated/pool-002.parquet" "$WORK/two_procs/curated/pool-002.parquet"

# 6. Resume: forget that one shard was balanced; --resume redoes only that shard.
rm "$WORK/oneshot/progress/pool-001.json"
$PERCLI curate metaclip "$WORK/pool/pool-{000..003}.parquet" -m "$META" --t 100 -o "$WORK/oneshot" --resume --json \
  | "$PYTHON" -c 'import json, sys; s = json.load(sys.stdin); print("kept", s["kept"], "resumed", s["resumed_shards"])'
