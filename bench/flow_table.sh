#!/usr/bin/env bash
# The rectified-flow quality-vs-NFE table of docs/results.md (issue 31), one command:
#
#   bash bench/flow_table.sh
#
# 1. Every solver on uniform t at each NFE of NFES (evaluate --baselines, the flow model).
# 2. Every deterministic solver on SD3's time shift (the `shift` kind, trailing) for each shift of SHIFTS at the same
#    NFEs. The table shows the best shift per solver and NFE, picked on these evaluation seeds: that favours the fixed
#    shifts over the searched export, never the other way.
# 3. The default optimize job on the flow model at SEARCH_NFE (its pool holds shifts 1, 2, 3, 6 trailing and 1, 3
#    linspace for every solver), then its export against the TOP rows of a small-sample screen of its pool at the full
#    size, as bench/reproduce.sh does for the ε model.
# 4. The tables (bench/flow_table.py): quality vs NFE per solver (uniform t, best shift; the ε model's uniform rows
#    beside them when EPS_SOLVERS names its solver report), and the export paired per seed with uniform-t Euler (DDIM),
#    every shift row and the screen's best pool rows at SEARCH_NFE.
#
# Every row of a seed starts from the same x_T, SAMPLES samples × SEEDS evaluation seeds, judge and coach FID and KID.
# A re-run keeps every report already in OUT (delete one to remake it) and resumes a killed search from its study.
# Knobs (defaults: what docs/results.md reports): MODEL (flow), NFES, SHIFTS, SEARCH_NFE, BUDGET, SAMPLES, SEEDS, OUT,
# DEVICE, STUDIES_DIR (default runs/flow-table-studies), SCREEN_FORWARDS, TOP, OPTIMIZE_FLAGS (extra optimize flags),
# EPS_SOLVERS (the ε model's `evaluate` report of every solver on uniform steps; empty: no ε columns).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-flow}
NFES=${NFES:-5 10 25}
SHIFTS=${SHIFTS:-2 3 6}
SEARCH_NFE=${SEARCH_NFE:-10}
BUDGET=${BUDGET:-480}
SAMPLES=${SAMPLES:-2000}
SEEDS=${SEEDS:-3}
OUT=${OUT:-bench/results/flow}
DEVICE=${DEVICE:-auto}
STUDIES_DIR=${STUDIES_DIR:-runs/flow-table-studies}
SCREEN_FORWARDS=${SCREEN_FORWARDS:-2560}
TOP=${TOP:-8}
OPTIMIZE_FLAGS=${OPTIMIZE_FLAGS:-}
EPS_SOLVERS=${EPS_SOLVERS-bench/results/reproduced/solvers-nfe5-10-25.json}
SOLVERS="ddim ddpm dpmpp-2m dpmpp-3m dpmpp-2m-sde ipndm unipc heun"
DETERMINISTIC="ddim dpmpp-2m dpmpp-3m ipndm unipc heun"
mkdir -p "$OUT/search" "$STUDIES_DIR"
# shellcheck source=bench/lib.sh
. bench/lib.sh
ev() { stepdrop-search evaluate --model "$MODEL" --device "$DEVICE" "$@"; }
# shellcheck source=bench/against_pool.sh
. bench/against_pool.sh
nfe_list=${NFES// /,}

# one report per NFE, so a run killed mid-way keeps what it finished
for nfe in $NFES; do
    step "every solver on uniform t at NFE $nfe"
    kept "$OUT/uniform-nfe$nfe.json" ||
        ev --baselines "${SOLVERS// /,}" --nfe "$nfe" --samples "$SAMPLES" --seeds "$SEEDS" --metrics fid,kid \
            --out "$OUT/uniform-nfe$nfe"
done
for nfe in $NFES; do
    step "the deterministic solvers on shifts $SHIFTS at NFE $nfe"
    kept "$OUT/shifts-nfe$nfe.json" && continue
    mkdir -p "$OUT/shifts/nfe$nfe"
    for solver in $DETERMINISTIC; do
        for shift in $SHIFTS; do
            stepdrop-search policy export shift --model "$MODEL" --nfe "$nfe" --solver "$solver" \
                --param "shift=$shift" --out "$OUT/shifts/nfe$nfe/${solver}_shift$shift-nfe$nfe.json" > /dev/null
        done
    done
    ev --policy "$OUT/shifts/nfe$nfe" --samples "$SAMPLES" --seeds "$SEEDS" --metrics fid,kid --out "$OUT/shifts-nfe$nfe"
done

step "optimize --nfe $SEARCH_NFE on the flow model"
search=$OUT/search
# shellcheck disable=SC2086
kept "$search/best.json" ||
    stepdrop-search optimize --model "$MODEL" --device "$DEVICE" --nfe "$SEARCH_NFE" --budget "$BUDGET" $OPTIMIZE_FLAGS \
        --out "$search/best.json" --save-pool "$search/pool" --study "flow-nfe$SEARCH_NFE" \
        --storage "sqlite:///$STUDIES_DIR/flow-nfe$SEARCH_NFE.db" > "$search/optimize.txt" 2> "$search/optimize.log"

step "the export against its pool's best rows"
against_pool "$search" "$SEARCH_NFE" "$SAMPLES"

step "tables"
eps=()
[ -n "$EPS_SOLVERS" ] && eps=(--eps-solvers "$EPS_SOLVERS")
uniform=() shifts=()
for nfe in $NFES; do uniform+=("$OUT/uniform-nfe$nfe.json"); shifts+=("$OUT/shifts-nfe$nfe.json"); done
to "$OUT/table.md" python bench/flow_table.py --uniform "${uniform[@]}" --shifts "${shifts[@]}" \
    --export "$search/evaluate.json" --export-nfe "$SEARCH_NFE" "${eps[@]}"
at=("$OUT/uniform-nfe$SEARCH_NFE.json" "$OUT/shifts-nfe$SEARCH_NFE.json")
paired_rows=$(python bench/flow_table.py --uniform "${at[0]}" --shifts "${at[1]}" --export "$search/evaluate.json" \
    --rows-at "$SEARCH_NFE")
to "$OUT/paired-nfe$SEARCH_NFE.md" python bench/paired_table.py "uniform=${at[0]}" "shifts=${at[1]}" \
    "$search/evaluate.json" --reference best --rows "$paired_rows"
step "done: $OUT/table.md, $OUT/paired-nfe$SEARCH_NFE.md"
