#!/bin/bash
# Multilingual grounding on the embedded scenes: MHA-VSE with and without the diversity regulariser (retrieval per
# language, head similarity, STS), then UMMT with and without visual pivoting (BLEU en<->de next to the
# word-by-word baseline). Run from anywhere: bash examples/grounding/tiny.sh [WORK_DIR]   (~1 h on 2 CPU cores)
set -euo pipefail
WORK=${1:-runs/grounding-tiny}
PERCLI=${PERCLI:-percli}        # or: PERCLI="python -m percli.cli"
PYTHON=${PYTHON:-python}
VSE_STEPS=${VSE_STEPS:-1500}    # MHA-VSE steps (the tiny preset's)
MT_STEPS=${MT_STEPS:-1200}      # UMMT translator steps (the tiny preset's)
read -r -a EXTRA <<< "${EXTRA:-}"        # more overrides for the MHA-VSE runs
read -r -a MT_EXTRA <<< "${MT_EXTRA:-}"  # more overrides for the UMMT runs
rm -rf "$WORK"
mkdir -p "$WORK"

$PERCLI pretrain mha-vse --run-dir "$WORK/vse-diverse" train.max_steps="$VSE_STEPS" "${EXTRA[@]}" --json \
    > "$WORK/vse-diverse.json"
$PERCLI pretrain mha-vse --run-dir "$WORK/vse-plain" train.max_steps="$VSE_STEPS" loss.diversity_weight=0 \
    "${EXTRA[@]}" --json > "$WORK/vse-plain.json"
$PERCLI pretrain ummt --run-dir "$WORK/ummt" train.max_steps="$MT_STEPS" "${MT_EXTRA[@]}" --json > "$WORK/ummt.json"
$PERCLI pretrain ummt --run-dir "$WORK/ummt-no-pivot" vse="$WORK/ummt/vse" train.max_steps="$MT_STEPS" \
    loss.pivot_caption=0 loss.retrieval=0 "${MT_EXTRA[@]}" --json > "$WORK/ummt-no-pivot.json"

"$PYTHON" - "$WORK" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
for run in ("vse-diverse", "vse-plain"):
    s = json.loads((work / f"{run}.json").read_text())
    m = s["metrics"]
    print(f"{run:14s} en t2i R@1 {m['eval/en_t2i_R@1']:.3f}  de t2i R@1 {m['eval/de_t2i_R@1']:.3f}  rsum en "
          f"{m['eval/en_rsum']:.1f} de {m['eval/de_rsum']:.1f}  head sim image {m['eval/head_sim_image']:.3f} "
          f"en {m['eval/head_sim_en']:.3f}  STS spearman {s['sts']['spearman']:.1f}")
for run in ("ummt", "ummt-no-pivot"):
    t = json.loads((work / f"{run}.json").read_text())["translation"]
    for d in ("en-de", "de-en"):
        print(f"{run:14s} {d} BLEU {t[d]['bleu']:.2f} (no image {t[d]['bleu_no_image']:.2f}, word-by-word "
              f"{t[d]['bleu_word_by_word']:.2f})  chrF {t[d]['chrf']:.1f}")
PY
