#!/usr/bin/env bash
# Classifier-free guidance on the shipped class-conditional model (issue 32): docs/results.md's tables, one command:
#
#   bash bench/guidance_table.sh
#
# 1. DPM-Solver++(2M) on uniform steps at each NFE of NFES, once per guidance of GUIDANCE: constant scales and the same
#    scales inside σ intervals; every row spends its NFE with guided steps counted twice (evaluate --guidance), judge
#    and coach FID, KID, the judge's class accuracy and per-class FID (bench/guidance_table.py renders it).
# 2. The default optimize job at SEARCH_NFE (its pool holds every solver × schedule with constant guidance 1.5–4 and
#    with scales 2 and 3 on the published interval σ ∈ [0.28, 5.42]), then its export against the TOP rows of a screen
#    of its pool and its TOP best constant-guidance rows (bench/against_pool.sh) with the class measures, and against
#    its own solver under each guidance of GUIDANCE ($OUT/export-vs-intervals.md).
#
# Every row of a seed starts from the same x_T with the same classes (sample i: class i mod 10), SAMPLES × SEEDS
# evaluation seeds. A re-run keeps every report already in OUT and resumes a killed search from its study.
# Knobs (defaults: what docs/results.md reports): MODEL (conditional), NFES, GUIDANCE, SEARCH_NFE, BUDGET, SAMPLES,
# SEEDS, OUT, DEVICE, STUDIES_DIR (default runs/guidance-table-studies), SCREEN_FORWARDS, TOP, OPTIMIZE_FLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-conditional}
NFES=${NFES:-10 20}
GUIDANCE=${GUIDANCE:-1,1.5,2,3,4,1.5:0.28:5.42,2:0.28:5.42,3:0.28:5.42,2:1:30,3:1:30}
SEARCH_NFE=${SEARCH_NFE:-10}
BUDGET=${BUDGET:-480}
SAMPLES=${SAMPLES:-2000}
SEEDS=${SEEDS:-3}
OUT=${OUT:-bench/results/guidance}
DEVICE=${DEVICE:-auto}
STUDIES_DIR=${STUDIES_DIR:-runs/guidance-table-studies}
# the conditional pool holds each unguided row (167 at NFE 10) again under constant guidance 1.5, 2, 3 and 4 and under
# the interval at 2 and 3 (about 800 rows): the ε scripts' 2560 forwards a row (256 samples) would screen them in about
# an hour on 2 cores, 1280 in half that
SCREEN_FORWARDS=${SCREEN_FORWARDS:-1280}
TOP=${TOP:-8}
OPTIMIZE_FLAGS=${OPTIMIZE_FLAGS:-}
MEASURES=fid,kid,accuracy,class-fid
mkdir -p "$OUT/search" "$STUDIES_DIR"
# shellcheck source=bench/lib.sh
. bench/lib.sh
ev() { stepdrop-search evaluate --model "$MODEL" --device "$DEVICE" "$@"; }
# shellcheck source=bench/against_pool.sh
. bench/against_pool.sh

for nfe in $NFES; do
    step "DPM-Solver++(2M) at NFE $nfe under guidance $GUIDANCE"
    kept "$OUT/scales-nfe$nfe.json" && continue
    ev --baselines dpmpp-2m --nfe "$nfe" --guidance "$GUIDANCE" --samples "$SAMPLES" --seeds "$SEEDS" \
        --metrics "$MEASURES" --out "$OUT/scales-nfe$nfe"
done

step "optimize --nfe $SEARCH_NFE on the conditional model"
search=$OUT/search
if ! kept "$search/best.json"; then
    # shellcheck disable=SC2086
    stepdrop-search optimize --model "$MODEL" --device "$DEVICE" --nfe "$SEARCH_NFE" --budget "$BUDGET" $OPTIMIZE_FLAGS \
        --out "$search/best.json" --save-pool "$search/pool" --study "guidance-nfe$SEARCH_NFE" \
        --storage "sqlite:///$STUDIES_DIR/guidance-nfe$SEARCH_NFE.db" > "$search/optimize.txt" 2> "$search/optimize.log"
fi

step "the export against its pool's best rows"
POOL_METRICS=$MEASURES ALSO_MATCH='\+cfg[0-9.]+-nfe' against_pool "$search" "$SEARCH_NFE" "$SAMPLES"

# the pool holds one interval at two scales: the export's own solver under every guidance of GUIDANCE (other scales and
# intervals) at the search's NFE says whether an interval the study did not reach beats it
solver=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['solver']['name'])" "$search/best.json")
step "$solver (the export's solver) at NFE $SEARCH_NFE under guidance $GUIDANCE"
if ! kept "$OUT/export-solver-nfe$SEARCH_NFE.json"; then
    ev --baselines "$solver" --nfe "$SEARCH_NFE" --guidance "$GUIDANCE" --samples "$SAMPLES" --seeds "$SEEDS" \
        --metrics "$MEASURES" --out "$OUT/export-solver-nfe$SEARCH_NFE"
fi
to "$OUT/export-vs-intervals.md" python bench/paired_table.py "$search/evaluate.json" \
    "$OUT/export-solver-nfe$SEARCH_NFE.json" --reference best

step "tables"
reports=()
for nfe in $NFES; do reports+=("$OUT/scales-nfe$nfe.json"); done
to "$OUT/table.md" python bench/guidance_table.py "${reports[@]}" --export "$search/evaluate.json"
step "done: $OUT/table.md, $search/paired.md"
