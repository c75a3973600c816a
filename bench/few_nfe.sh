#!/usr/bin/env bash
# Below five evaluations: the few-NFE table of docs/results.md (learned solvers, issue 30), one command:
#
#   bash bench/few_nfe.sh
#
# 1. The default optimize job (`optimize --nfe N --budget BUDGET`) at every NFE of NFES, its pool saved: the pool has
#    DDIM, DPM-Solver++(2M), UniPC and iPNDM on uniform and DP-GITS steps, the gradient method's learned steps, and the
#    learned solver (steps and coefficients, `learned-3m/gradient`) when it beat its start on validation.
# 2. One `evaluate` of those rows and each NFE's export, with DPM-Solver++(2M) at NFE 50 as the reference line: the same
#    x_T for every row of a seed, SAMPLES samples × SEEDS evaluation seeds, judge and coach FID and KID; then the paired table
#    against the reference (bench/paired_table.py), and the learned solver against its start at each NFE where both exist.
#
# A re-run keeps every search whose best.json is in OUT and an evaluation whose table.json is (delete it to remake).
# Knobs (defaults: what docs/results.md reports): NFES, BUDGET, SAMPLES, SEEDS, OUT, DEVICE, MODEL, STUDIES_DIR (the
# studies' SQLite files; default a temp folder), OPTIMIZE_FLAGS (extra optimize flags, e.g. quick sizes).
set -euo pipefail
cd "$(dirname "$0")/.."
NFES=${NFES:-3 4 5 6}
BUDGET=${BUDGET:-480}
SAMPLES=${SAMPLES:-2000}
SEEDS=${SEEDS:-3}
OUT=${OUT:-bench/results/few-nfe}
DEVICE=${DEVICE:-auto}
STUDIES_DIR=${STUDIES_DIR:-$(mktemp -d /tmp/stepdrop-studies.XXXXXX)}
OPTIMIZE_FLAGS=${OPTIMIZE_FLAGS:-}
mkdir -p "$OUT" "$STUDIES_DIR"
# shellcheck source=bench/lib.sh
. bench/lib.sh

rows=()
for nfe in ${NFES//,/ }; do
    dir=$OUT/nfe$nfe
    if ! kept "$dir/best.json" "search again"; then
        step "optimize --nfe $nfe"
        mkdir -p "$dir"
        # shellcheck disable=SC2086
        stepdrop-search optimize "${MODEL_FLAG[@]}" --device "$DEVICE" --nfe "$nfe" --budget "$BUDGET" $OPTIMIZE_FLAGS \
            --out "$dir/best.json" --save-pool "$dir/pool" --study "few-nfe$nfe" \
            --storage "sqlite:///$STUDIES_DIR/few-nfe$nfe.db" > "$dir/optimize.txt" 2> "$dir/optimize.log"
    fi
    cp "$dir/best.json" "$OUT/export-nfe$nfe.json"  # rows are named by file: "export", one per NFE column
    rows+=(--policy "$OUT/export-nfe$nfe.json")
    for row in ddim_uniform ddim_dp-gits dpmpp-2m_uniform dpmpp-2m_dp-gits unipc_uniform unipc_dp-gits ipndm_uniform \
               ipndm_dp-gits; do
        rows+=(--policy "$dir/pool/$row-nfe$nfe.json")
    done
    for path in "$dir"/pool/*_gradient-nfe"$nfe".json; do  # learned steps, and the learned solver when it was made
        [ -f "$path" ] && rows+=(--policy "$path")
    done
done

if ! kept "$OUT/table.json" "evaluate again"; then
    step "evaluate ${#rows[@]} policy flags, $SAMPLES samples × $SEEDS seeds"
    stepdrop-search evaluate "${MODEL_FLAG[@]}" --device "$DEVICE" "${rows[@]}" --baselines dpmpp-2m --nfe 50 \
        --samples "$SAMPLES" --seeds "$SEEDS" --metrics fid,kid --out "$OUT/table"
fi
to "$OUT/paired.md" python bench/paired_table.py "$OUT/table.json" --reference dpmpp-2m-50
# the learned solver against the steps it started from (DPM-Solver++(3M) on its learned steps), where both were made
for nfe in ${NFES//,/ }; do
    if [ -f "$OUT/nfe$nfe/pool/learned-3m_gradient-nfe$nfe.json" ] && [ -f "$OUT/nfe$nfe/pool/dpmpp-3m_gradient-nfe$nfe.json" ]; then
        to "$OUT/learned-vs-start-nfe$nfe.md" python bench/paired_table.py "$OUT/table.json" \
            --reference "dpmpp-3m_gradient-nfe$nfe" --rows "learned-3m_gradient-nfe$nfe"
    fi
done
step "done: $OUT/paired.md"
