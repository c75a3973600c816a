#!/usr/bin/env bash
# The S2-DM ablation (issue 6), one command:  bash bench/s2dm_ablation.sh
#
# Fine-tunes the shipped model (or MODEL) twice from the same weights, same data order, same steps, side by side with one
# thread each (so both get the same machine): a control with the plain DDPM loss, and one with the S2-DM skip-step
# loss (K = 10, τ = 0.99). Then evaluates that model and both fine-tunes at NFES (5, 10, 25) with DDIM on
# uniform steps and with the Optuna-searched schedules of bench/peers.sh (searched on that model).
# Writes $OUT-{base,control,s2dm}.{md,json,csv,png}; the wall time of each fine-tune is in
# its checkpoint (stepdrop-search export prints it into the card).
#
# Environment knobs (defaults are what the committed 500-step results used): MODEL (a checkpoint to start from
# instead of the shipped model: it is the base row too), STEPS (fine-tune steps), LR, SAMPLES, SEEDS, NFES,
# POLICIES (folder of optuna-ddim-nfe$NFE.json for each), RUNS (checkpoint folder), OUT (results stem). A longer run
# wants its own RUNS and OUT, e.g. STEPS=4000 RUNS=runs/s2dm-4000 OUT=bench/results/s2dm-ablation-4000 bash bench/s2dm_ablation.sh
set -euo pipefail
STEPS=${STEPS:-500}
LR=${LR:-2e-4}
SAMPLES=${SAMPLES:-256}
SEEDS=${SEEDS:-3}
NFES=${NFES:-5,10,25}
POLICIES=${POLICIES:-bench/results/peers}
RUNS=${RUNS:-runs/s2dm-ablation}
OUT=${OUT:-bench/results/s2dm-ablation}
BASE=${MODEL:-default}

finetune() {  # finetune NAME [extra train flags]: continues the run when RUNS already holds it
    local name=$1; shift
    local resume=()
    [ -f "$RUNS/$name/last.pt" ] && resume=(--resume)
    OMP_NUM_THREADS=1 stepdrop-search train --init-from "$BASE" --steps "$STEPS" --lr "$LR" --device cpu \
        --out "$RUNS/$name" "${resume[@]}" "$@"
}
finetune control &
control=$!
finetune s2dm --skip-loss-every 10 --skip-loss-tau 0.99 &
s2dm=$!
wait "$control"  # one wait per run: a failed fine-tune stops the script (a bare `wait` reports success)
wait "$s2dm"

policies=()
for nfe in ${NFES//,/ }; do policies+=(--policy "$POLICIES/optuna-ddim-nfe$nfe.json"); done
for name in base control s2dm; do
    model=()
    if [ "$name" = base ]; then
        [ "$BASE" = default ] || model=(--model "$BASE")
    else
        model=(--model "$RUNS/$name/last.pt")
    fi
    stepdrop-search evaluate "${model[@]}" --baselines ddim --nfe "$NFES" "${policies[@]}" \
        --samples "$SAMPLES" --seeds "$SEEDS" --metrics fid,kid --out "$OUT-$name"
done
