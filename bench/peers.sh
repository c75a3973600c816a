#!/usr/bin/env bash
# The peers benchmark report (issue 6), one command:  bash bench/peers.sh
#
# 1. Optuna-searched schedules on the shipped model: one `optimize --method optuna` per NFE with DDIM, and one
#    with DPM-Solver++(2M) at NFE 10 (for the schedule-transfer rows). Each run searches until its --budget of
#    BUDGET seconds is spent;
#    its study lives in studies/, the exported policy in $OUT/. A re-run keeps a policy already in $OUT/ (delete it
#    to search again, which resumes its study).
# 2. `evaluate --suite peers` at NFE 5, 10, 25, 50 with those files, each run with both solvers: common random
#    numbers, SEEDS seeds, SAMPLES samples per row and seed. Writes $OUT/peers.{md,json,csv,png}.
#
# Environment knobs (defaults are what the committed report used): MODEL (default the shipped model), SAMPLES, SEEDS,
# BUDGET, NFES, OUT, DEVICE,
# STUDIES_DIR (where the studies' SQLite files go; default studies/), and OPTIMIZE_FLAGS (extra flags for every
# search, e.g. the small rung and held-out sizes bench/reproduce.sh --quick passes), DP_SAMPLES (teacher trajectories
# for the DP rows; their cost grows with it).
set -euo pipefail
SAMPLES=${SAMPLES:-256}
SEEDS=${SEEDS:-3}
BUDGET=${BUDGET:-300}
NFES=${NFES:-5,10,25,50}
OUT=${OUT:-bench/results/peers}
DEVICE=${DEVICE:-auto}
STUDIES_DIR=${STUDIES_DIR:-studies}
OPTIMIZE_FLAGS=${OPTIMIZE_FLAGS:-}
DP_SAMPLES=${DP_SAMPLES:-32}
mkdir -p "$OUT" "$STUDIES_DIR"
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

policies=()
search() {  # search NFE SOLVER; a policy an earlier run exported is kept, so a killed run loses one search at most
    local file="$OUT/optuna-$2-nfe$1.json"
    policies+=(--policy "$file")
    if kept "$file" "search again"; then return; fi
    # shellcheck disable=SC2086
    stepdrop-search optimize "${MODEL_FLAG[@]}" --nfe "$1" --solver "$2" --method optuna --budget "$BUDGET" --trials 10000 --device "$DEVICE" \
        $OPTIMIZE_FLAGS --study "peers-optuna-$2-nfe$1" --storage "sqlite:///$STUDIES_DIR/peers-optuna-$2-nfe$1.db" --out "$file"
}
for nfe in ${NFES//,/ }; do search "$nfe" ddim; done
search 10 dpmpp-2m

stepdrop-search evaluate "${MODEL_FLAG[@]}" --suite peers --nfe "$NFES" "${policies[@]}" --solvers ddim,dpmpp-2m \
    --dp-samples "$DP_SAMPLES" --samples "$SAMPLES" --seeds "$SEEDS" --metrics fid,kid,residual --residual-samples 128 \
    --device "$DEVICE" --out "$OUT/peers"
