#!/usr/bin/env bash
# Regenerate README's tables and plots on the shipped model, one command:
#
#   bash bench/reproduce.sh            # the full run: every table at its published size, into bench/results/ (hours)
#   bash bench/reproduce.sh --quick    # the same pipeline at tiny sizes into $OUT (default: a temp folder), minutes;
#                                      # CI runs it (tests/test_reproduce.py) so the pipeline cannot rot
#
# Each step names the README section whose figures it writes. Studies go to a temporary SQLite folder, never into
# the repository. Knobs: OUT (results root), DEVICE (auto), MODEL (a --model for every step; default the shipped one).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        *) echo "usage: bash bench/reproduce.sh [--quick]" >&2; exit 2 ;;
    esac
done

if [ "$QUICK" = 1 ]; then
    R=${OUT:-$(mktemp -d /tmp/stepdrop-reproduce.XXXXXX)}
    # the StepDrop suite runs 1000-step rows: its cost is per step, so quick mode gives it 2 samples and 1 seed
    BIG=16 SEEDS=2 SUITE_SAMPLES=2 SUITE_SEEDS=1 BUDGET=15 SPEED_REPEATS=1
    VARIANCE="--samples 64 --seeds 3 --nfe 4 --ddim-nfe 2 --bootstrap 2"
    OPT="--samples 16 --promote-samples 16 --held-out-samples 32 --trial-samples 8 --gradient-samples 8
         --gradient-epochs 1 --dp-grid 20 --dp-samples 4 --dp-oss-samples 2"
    LOSSES="--samples 8 --epochs 1 --held-out 16 --teacher ddim-20"
    BIAS="--samples 8 16" TEACHERS="--samples 4 --teachers dpmpp-2m-20 ddim-50" SPEED_NFE="4" SPEED_BATCH=16
    export SAMPLES=8 SEEDS BUDGET=10 NFES=5,10,25 STEPS=10
else
    R=${OUT:-bench/results}
    BIG=2000 SEEDS=3 SUITE_SAMPLES=100 SUITE_SEEDS=2 BUDGET=270 SPEED_REPEATS=1 VARIANCE="" OPT="" LOSSES="" BIAS="--samples 64 256"
    TEACHERS="" SPEED_NFE="10 50" SPEED_BATCH=256
fi
DEVICE=${DEVICE:-auto}
MODEL_FLAG=()
[ -n "${MODEL:-}" ] && MODEL_FLAG=(--model "$MODEL")
STUDIES=$(mktemp -d /tmp/stepdrop-studies.XXXXXX)
export STEPDROP_CACHE=${STEPDROP_CACHE:-$STUDIES/cache}
mkdir -p "$R"
started=$(date +%s)
step() { echo "== $(($(date +%s) - started)) s: $*" >&2; }
ev() { stepdrop-search evaluate "${MODEL_FLAG[@]}" --device "$DEVICE" "$@"; }
opt() {  # opt NAME NFE [flags]: the default optimize job, its pool saved, its log and table kept
    local name=$1 nfe=$2; shift 2
    mkdir -p "$R/$name"
    # shellcheck disable=SC2086
    stepdrop-search optimize "${MODEL_FLAG[@]}" --device "$DEVICE" --nfe "$nfe" --budget "$BUDGET" $OPT \
        --out "$R/$name/best.json" --save-pool "$R/$name/pool" --study "$name" --storage "sqlite:///$STUDIES/$name.db" \
        "$@" > "$R/$name/optimize.txt" 2> "$R/$name/optimize.log"
}

step "Measuring: the DDIM sanity table"
ev --baselines ddim --nfe 10,25,50 --samples "$BIG" --seeds "$SEEDS" --out "$R/ddim-sanity-2000x3"

step "Measuring: StepDrop's tables (--suite stepdrop)"
ev --suite stepdrop --samples "$SUITE_SAMPLES" --seeds "$SUITE_SEEDS" --metrics fid,kid,gflops --out "$R/suite-stepdrop"

step "Every solver at NFE 5, 10 and 25"
ev --baselines ddim,dpmpp-2m,dpmpp-3m,ipndm,unipc,heun --nfe 5,10,25 --samples "$BIG" --seeds "$SEEDS" \
    --metrics fid,kid,throughput,gflops --out "$R/solvers-nfe5-10-25"

step "The sampler loop's time outside the network"
# shellcheck disable=SC2086
python bench/sampler_speed.py "${MODEL_FLAG[@]}" --batch "$SPEED_BATCH" --nfe $SPEED_NFE --repeats "$SPEED_REPEATS" \
    --solvers ddim ddpm dpmpp-2m dpmpp-3m dpmpp-2m-sde ipndm unipc heun > "$R/sampler-speed.txt"

step "Stochastic rows' spread is proxy-FID's"
# shellcheck disable=SC2086
python bench/stochastic_variance.py $VARIANCE --out "$R/stochastic-variance"

step "The teacher, and proxy-FID's small-sample bias"
# shellcheck disable=SC2086
python bench/teacher_accuracy.py "${MODEL_FLAG[@]}" $TEACHERS > "$R/teacher-accuracy.txt"
# shellcheck disable=SC2086
python bench/small_sample_bias.py "${MODEL_FLAG[@]}" --nfe 10 $BIAS > "$R/small-sample-bias-nfe10.txt"

step "Searching: the main job, optimize --nfe 25, and its export against the solvers"
opt optimize-nfe25 25
ev --policy "$R/optimize-nfe25/best.json" --baselines heun,ipndm --nfe 25 --samples "$BIG" --seeds "$SEEDS" \
    --metrics fid,kid --out "$R/optimize-nfe25/evaluate"
python bench/paired_table.py "solvers=$R/solvers-nfe5-10-25.json" "$R/optimize-nfe25/evaluate.json" \
    --reference best > "$R/optimize-nfe25/paired.md"

for nfe in 5 10; do
    step "Learned steps and the published DPs: optimize --nfe $nfe, every pool row at the evaluation size"
    opt "learned-nfe$nfe" "$nfe"
    ev --policy "$R/learned-nfe$nfe/best.json" --policy "$R/learned-nfe$nfe/pool" --baselines dpmpp-2m --nfe 50 \
        --samples "$BIG" --seeds "$SEEDS" --metrics fid,kid --out "$R/learned-nfe$nfe/evaluate"
    python bench/paired_table.py "$R/learned-nfe$nfe/evaluate.json" --reference best > "$R/learned-nfe$nfe/paired.md"
    python bench/rung_correlation.py "$R/learned-nfe$nfe/evaluate.json" > "$R/learned-nfe$nfe/rung-correlation.txt"
done

step "Which loss the gradient method descends"
init=$(python -c "import json,sys; print(','.join(str(t) for t in json.load(open(sys.argv[1]))['timesteps']))" \
    "$R/learned-nfe5/pool/unipc_dp-oss-nfe5.json")
# shellcheck disable=SC2086
python bench/gradient_losses.py "${MODEL_FLAG[@]}" --solver unipc --nfe 5 --init "$init" $LOSSES \
    > "$R/gradient-losses-unipc-nfe5.txt"

step "Resampled or searched"
mkdir -p "$R/resample"
stepdrop-search policy resample "$R/learned-nfe5/best.json" --nfe 10 "${MODEL_FLAG[@]}" --out "$R/resample/best-from-nfe5-to-nfe10.json"
stepdrop-search policy resample "$R/learned-nfe10/best.json" --nfe 25 "${MODEL_FLAG[@]}" --out "$R/resample/best-from-nfe10-to-nfe25.json"
ev --policy "$R/resample/best-from-nfe5-to-nfe10.json" --samples "$BIG" --seeds "$SEEDS" --metrics fid,kid \
    --out "$R/resample/evaluate-nfe10"
ev --policy "$R/resample/best-from-nfe10-to-nfe25.json" --samples "$BIG" --seeds "$SEEDS" --metrics fid,kid \
    --out "$R/resample/evaluate-nfe25"
python bench/paired_table.py "l10=$R/learned-nfe10/evaluate.json" "$R/resample/evaluate-nfe10.json" \
    --reference l10:best > "$R/resample/paired-nfe10.md"
python bench/paired_table.py "main=$R/optimize-nfe25/evaluate.json" "$R/resample/evaluate-nfe25.json" \
    --reference main:best > "$R/resample/paired-nfe25.md"

step "Side by side with the peers"
OUT="$R/peers" STUDIES_DIR="$STUDIES" bash bench/peers.sh

step "The S2-DM ablation (fine-tunes on Fashion-MNIST)"
if python -c "from stepdrop_search.data import load_dataset; load_dataset('fashion-mnist')" 2>/dev/null; then
    RUNS="$STUDIES/s2dm" POLICIES="$R/peers" OUT="$R/s2dm-ablation" bash bench/s2dm_ablation.sh
elif [ "$QUICK" = 1 ]; then
    echo "skipped: the Fashion-MNIST training data is not on this machine (dataset-fashion-mnist)" >&2
else
    echo "the S2-DM ablation trains on Fashion-MNIST, which is not on this machine: install dataset-fashion-mnist" >&2
    exit 2
fi

step "done: $R"
rm -rf "$STUDIES"
