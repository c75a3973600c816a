#!/usr/bin/env bash
# The shipped model against the one it replaced (issue 17), one command:  bash bench/model_compare.sh
#
# Evaluates both models with the same rows — by default DDIM on uniform steps at NFE 5, 10, 25, 50, the solvers that
# win some NFE under the default runtime (DPM-Solver++(3M) at 5 and 10, Heun at 25), Heun at 10 and DPM-Solver++(2M)
# at 10 and 25 (the training curve's sampler) — on the same x_T per seed, then pairs them row by row (bench/model_compare.py).
# The replaced model is read from git (revision OLD; default: the newest revision whose model file holds other weights,
# bench/replaced_revision.py), so this runs in any full clone.
# Writes $OUT-{old,new}-SOLVER.{json,csv,md,png} for each solver of ROWS and $OUT.md.
#
# Environment knobs: OLD (git revision that shipped the replaced model, or the replaced model's checkpoint file),
# NEW (the new model; default the shipped one), SAMPLES, SEEDS, OUT, DEVICE, ROWS (SOLVER:NFE,NFE… words).
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${OLD:-$(python bench/replaced_revision.py)} ||
    { echo "no earlier shipped model in this clone's history (a shallow clone?): fetch it or set OLD" >&2; exit 2; }
SAMPLES=${SAMPLES:-2000}
SEEDS=${SEEDS:-3}
OUT=${OUT:-bench/results/model-compare}
DEVICE=${DEVICE:-auto}
ROWS=${ROWS:-ddim:5,10,25,50 dpmpp-2m:10,25 dpmpp-3m:5,10 heun:10,25}
mkdir -p "$(dirname "$OUT")"
old_model=$(mktemp /tmp/stepdrop-old-model.XXXXXX)
trap 'rm -f "$old_model"' EXIT
if [ -f "$OLD" ]; then cp "$OLD" "$old_model"; else git show "$OLD:stepdrop_search/assets/default-xs-fashion-mnist.pt" > "$old_model"; fi

has_rows() {  # has_rows REPORT SOLVER NFES MODEL: REPORT holds SOLVER-NFE for each NFE, measured on MODEL's weights
    python -c "import json, sys
from stepdrop_search.checkpoint import load_checkpoint_model
report = json.load(open(sys.argv[1]))
names, meta = {r['name'] for r in report['results']}, report['meta']
same = (meta.get('samples'), meta.get('seeds')) == (int('$SAMPLES'), int('$SEEDS'))
same = same and meta.get('model_hash') == load_checkpoint_model(sys.argv[4]).weights_hash
sys.exit(0 if same and all(f'{sys.argv[2]}-{n}' in names for n in sys.argv[3].split(',')) else 1)" "$@"
}
rows() {  # rows NAME MODEL: the compared rows on one model; a report already written for these weights is kept
    local name=$1 model=$2
    local ev=(stepdrop-search evaluate --model "$model" --samples "$SAMPLES" --seeds "$SEEDS" --metrics fid,kid
              --device "$DEVICE")
    local solver nfes
    for solver in $ROWS; do
        nfes=${solver#*:} solver=${solver%%:*}
        # a rerun resumes: a report is kept when it holds every wanted NFE on the same weights, samples and seeds
        [ -f "$OUT-$name-$solver.json" ] && has_rows "$OUT-$name-$solver.json" "$solver" "$nfes" "$model" && continue
        "${ev[@]}" --baselines "$solver" --nfe "$nfes" --out "$OUT-$name-$solver"
    done
}
rows old "$old_model"
rows new "${NEW:-stepdrop_search/assets/default-xs-fashion-mnist.pt}"
python bench/model_compare.py --old "$OUT"-old-*.json --new "$OUT"-new-*.json > "$OUT.md"
cat "$OUT.md"
