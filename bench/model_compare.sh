#!/usr/bin/env bash
# The shipped model against the one it replaced (issue 17), one command:  bash bench/model_compare.sh
#
# Evaluates both models with the same rows — by default DDIM on uniform steps at NFE 5, 10, 25, 50, the solvers that
# win some NFE under the default runtime (DPM-Solver++(3M) at 5 and 10, Heun at 25), Heun at 10 and DPM-Solver++(2M)
# at 10 and 25 (the training curve's sampler) — on the same x_T per seed, then pairs them row by row (bench/model_compare.py).
# The replaced model is read from git (revision OLD; default: the newest revision whose model file holds other weights,
# bench/replaced_revision.py), so this runs in any full clone.
# Writes $OUT-{old,new}-SOLVER.{json,csv,md,png} for each solver of ROWS and $OUT.md; a rerun keeps each report that
# already holds its rows on the same weights, samples and seeds.
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

weights_of() {  # weights_of MODEL: the weights hash a report of MODEL records (MODEL as --model takes it; "": shipped)
    python -c "import sys; from stepdrop_search.loading import load_model
print(load_model(sys.argv[1] or None).weights_hash)" "$1"
}
has_rows() {  # has_rows REPORT SOLVER NFES WEIGHTS: REPORT holds SOLVER-NFE for each NFE, on WEIGHTS, SAMPLES and SEEDS
    python -c "import json, sys
report = json.load(open(sys.argv[1]))
names, meta = {r['name'] for r in report['results']}, report['meta']
same = [meta.get('model_hash'), meta.get('samples'), meta.get('seeds')] == [sys.argv[4], int(sys.argv[5]), int(sys.argv[6])]
sys.exit(0 if same and all(f'{sys.argv[2]}-{n}' in names for n in sys.argv[3].split(',')) else 1)" "$@" "$SAMPLES" "$SEEDS"
}
rows() {  # rows NAME MODEL: the compared rows on one model ("": the shipped one); a report already made on them is kept
    local name=$1 model=$2
    local flag=() weights="" solver nfes
    [ -n "$model" ] && flag=(--model "$model")
    for solver in $ROWS; do
        nfes=${solver#*:} solver=${solver%%:*}
        # a rerun resumes: a report is kept when it holds every wanted NFE on the same weights, samples and seeds (the
        # weights are hashed once, and only when there is a report to check: a fresh run pays no model load for it)
        if [ -f "$OUT-$name-$solver.json" ]; then
            [ -n "$weights" ] || weights=$(weights_of "$model")
            has_rows "$OUT-$name-$solver.json" "$solver" "$nfes" "$weights" && continue
        fi
        stepdrop-search evaluate "${flag[@]}" --samples "$SAMPLES" --seeds "$SEEDS" --metrics fid,kid --device "$DEVICE" \
            --baselines "$solver" --nfe "$nfes" --out "$OUT-$name-$solver"
    done
}
rows old "$old_model"
rows new "${NEW:-}"
python bench/model_compare.py --old "$OUT"-old-*.json --new "$OUT"-new-*.json > "$OUT.md"
cat "$OUT.md"
