#!/usr/bin/env bash
# Regenerate README's tables and plots on the shipped model (or on MODEL), one command:
#
#   bash bench/reproduce.sh            # the full run: every table at its published size, into bench/results/reproduced/
#                                      # (hours; its own folder, so the results made before are never taken as its own)
#   bash bench/reproduce.sh --quick    # the same pipeline at tiny sizes into $OUT (default: a temp folder), minutes;
#                                      # CI runs it (tests/test_reproduce.py) so the pipeline cannot rot
#
# Each step names the README section whose figures it writes. The full run keeps its studies (SQLite) and its S2-DM
# fine-tunes in runs/reproduce-WEIGHTS/ (ignored by git; WEIGHTS is the model's weights hash, so a new shipped model
# never resumes the old one's searches), quick mode in a temporary folder. A run resumes: a step whose result file is
# already in OUT is kept (delete the file to remake it), a search killed mid-way continues from its study, and every
# file is written whole or not at all, so a run killed mid-step is continued by running it again.
# Knobs: OUT (results root), DEVICE (auto), MODEL (a checkpoint every step runs on instead of the shipped model: a
# candidate measured before it replaces the shipped file; the full run then needs its own OUT, and README's figures go
# to OUT/figures), OLD (the git revision, or checkpoint file, whose model bench/model_compare.sh compares with; default
# the model the shipped one replaced, or with MODEL the shipped one). Relative paths are from the repository root.
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
    BIG=8 SEEDS=2 SUITE_SAMPLES=2 SUITE_SEEDS=1 BUDGET=15 SPEED_REPEATS=1 FIDELITY_SAMPLES=8
    # eager: compiling the network costs a cold machine 40 s (tests/test_runtime.py covers --compile)
    VARIANCE="--samples 64 --seeds 3 --nfe 4 --ddim-nfe 2 --bootstrap 2 --compile off"
    OPT="--samples 8 --promote-samples 8 --held-out-samples 16 --trial-samples 8 --gradient-samples 8
         --gradient-epochs 1 --dp-grid 20 --dp-samples 4 --dp-oss-samples 2"
    LOSSES="--samples 8 --epochs 1 --held-out 16 --teacher ddim-20"
    BIAS="--samples 8 16 --total 32" TEACHERS="--samples 4 --teachers dpmpp-2m-20 ddim-50" SPEED_NFE="4" SPEED_BATCH=16
    # one row per model in the model comparisons, one learned NFE (its export resampled to the main job's NFE)
    # each export's pool screened on one seed; the main and learned jobs' pools hold five solvers, not all eight
    # (DPM-Solver++(3M) is where the learned solver starts, UniPC's DP-OSS row where the loss comparison does)
    POOL_SOLVERS="--solver ddim,dpmpp-2m,dpmpp-3m,heun,unipc"
    COMPARE_ROWS="heun:10" LEARNED_NFES="5" RESAMPLE="5:25:main:optimize-nfe25" SCREEN_FORWARDS=0 SCREEN_SEEDS=1 TOP=2
    FEW_NFES="4" MORE_NFES="10 50" MORE_SAMPLES=8
    # the peers' searches and the S2-DM fine-tunes read these from the environment (the paired peer tables need NFE 5, 10)
    export SAMPLES=8 SEEDS BUDGET=5 NFES=5,10 STEPS=10
    export OPTIMIZE_FLAGS="--samples 8 --promote-samples 8 --held-out-samples 16 --trial-samples 8" DP_SAMPLES=2
else
    if [ -n "${MODEL:-}" ] && [ -z "${OUT:-}" ]; then
        echo "MODEL=$MODEL needs its own OUT (e.g. OUT=bench/results/reproduced-candidate): the default folder holds the" \
             "shipped model's results, which this run would keep as its own" >&2
        exit 2
    fi
    R=${OUT:-bench/results/reproduced}
    BIG=2000 SEEDS=3 SUITE_SAMPLES=100 SUITE_SEEDS=2 BUDGET=480 SPEED_REPEATS=1 FIDELITY_SAMPLES=1000 VARIANCE="" OPT="" LOSSES="" BIAS="--samples 64 256 --total 1024"
    TEACHERS="" SPEED_NFE="10 50" SPEED_BATCH=256
    POOL_SOLVERS="" COMPARE_ROWS="" LEARNED_NFES="5 10" RESAMPLE="5:10:l10:learned-nfe10 10:25:main:optimize-nfe25" FEW_NFES="3 4 5 6"
    MORE_NFES="10 25 50 100 200" MORE_SAMPLES=1000
    SCREEN_FORWARDS=2560 TOP=8
fi
DEVICE=${DEVICE:-auto}
# step, kept (a file an earlier run into this OUT already made), to (a whole file or none) and MODEL_FLAG
# shellcheck source=bench/lib.sh
. bench/lib.sh
export COLUMNS=160  # rich draws the tables it writes into result files this wide, not cut to 80 columns
if ! python -c "import stepdrop_search" 2>/dev/null || ! command -v stepdrop-search > /dev/null; then
    echo "python cannot import stepdrop_search: activate the environment it is installed in (README's install)" >&2
    exit 2
fi
# The metric's floor and the S2-DM fine-tunes need the Fashion-MNIST images: the full run checks for them before any
# work (hours of results should not end on a missing data set); quick mode skips those two steps without them.
HAVE_DATA=1
python -c "from stepdrop_search.data import load_dataset; load_dataset('fashion-mnist')" 2>/dev/null || HAVE_DATA=0
if [ "$HAVE_DATA" = 0 ] && [ "$QUICK" = 0 ]; then
    echo "the full run needs the Fashion-MNIST images (the metric's floor, the S2-DM fine-tunes), which are not on this" \
         "machine: install dataset-fashion-mnist, or run --quick" >&2
    exit 2
fi
if [ "$QUICK" = 1 ]; then
    WORK=$(mktemp -d /tmp/stepdrop-studies.XXXXXX)
else
    weights=$(python -c "import sys; from stepdrop_search.loading import load_model
print(load_model(sys.argv[1] if len(sys.argv) > 1 else None).weights_hash)" "${MODEL_FLAG[@]:1}")
    WORK=runs/reproduce-$weights
fi
STUDIES=$WORK/studies s2dm_runs=$WORK/s2dm
mkdir -p "$STUDIES"
export STEPDROP_CACHE=${STEPDROP_CACHE:-$WORK/cache}
mkdir -p "$R"
ev() { stepdrop-search evaluate "${MODEL_FLAG[@]}" --device "$DEVICE" "$@"; }
opt() {  # opt NAME NFE [flags]: the default optimize job, its pool saved, its log and table kept
    local name=$1 nfe=$2; shift 2
    mkdir -p "$R/$name"
    local timed=()  # GNU time's wall time and peak RSS at the end of the log, where the machine has it
    [ -x /usr/bin/time ] && timed=(/usr/bin/time -v)
    # shellcheck disable=SC2086
    "${timed[@]}" stepdrop-search optimize "${MODEL_FLAG[@]}" --device "$DEVICE" --nfe "$nfe" --budget "$BUDGET" $OPT \
        --out "$R/$name/best.json" --save-pool "$R/$name/pool" --study "$name" --storage "sqlite:///$STUDIES/$name.db" \
        "$@" > "$R/$name/optimize.txt" 2> "$R/$name/optimize.log"
}
# against_pool DIR NFE SAMPLES [evaluate flags]: an export against the best rows of its pool (bench/against_pool.sh)
# shellcheck source=bench/against_pool.sh
. bench/against_pool.sh

step "Measuring: the DDIM sanity table"
kept "$R/ddim-sanity-2000x3.json" ||
    ev --baselines ddim --nfe 10,25,50 --samples "$BIG" --seeds "$SEEDS" --out "$R/ddim-sanity-2000x3"

step "Measuring: the metric's floor (real images against the reference statistics)"
if kept "$R/metric-floor.txt"; then :
elif [ "$HAVE_DATA" = 1 ]; then
    floor() {  # real training images at the evaluation size on both networks; the full run adds the 10k test images
        for role in judge coach; do  # each failure returned: `to` runs this where set -e does not reach
            stepdrop-search features score --role "$role" --split train --samples "$BIG" --device "$DEVICE" || return
            [ "$QUICK" = 1 ] || stepdrop-search features score --role "$role" --split test --samples 0 --device "$DEVICE" \
                || return
        done
    }
    to "$R/metric-floor.txt" floor
else
    echo "skipped: the Fashion-MNIST images are not on this machine (dataset-fashion-mnist)" >&2
fi

step "The model against the one it replaces (bench/model_compare.sh)"
if [ -z "${OLD:-}" ]; then  # MODEL would replace the shipped model; the shipped model replaced an earlier one
    if [ -n "${MODEL:-}" ]; then OLD=HEAD; else OLD=$(python bench/replaced_revision.py) || OLD=""; fi
fi
if kept "$R/model-compare.md"; then :
elif [ -n "$OLD" ] && { [ -f "$OLD" ] || git cat-file -e "$OLD:stepdrop_search/assets/default-xs-fashion-mnist.pt" 2>/dev/null; }; then
    OLD=$OLD NEW=${MODEL:-} SAMPLES=$BIG ROWS=$COMPARE_ROWS OUT="$R/model-compare" bash bench/model_compare.sh > /dev/null
else
    echo "skipped: the replaced model's revision (${OLD:-none found}) is not in this clone (a shallow clone?); fetch it or set OLD" >&2
fi

step "Measuring: StepDrop's tables (--suite stepdrop)"
kept "$R/suite-stepdrop.json" ||
    ev --suite stepdrop --samples "$SUITE_SAMPLES" --seeds "$SUITE_SEEDS" --metrics fid,kid,gflops --out "$R/suite-stepdrop"

# The searches come first: what they export decides whether the rest is worth its hours
step "Searching: the main job, optimize --nfe 25, and its export against its pool"
# shellcheck disable=SC2086
kept "$R/optimize-nfe25/best.json" || opt optimize-nfe25 25 $POOL_SOLVERS
against_pool "$R/optimize-nfe25" 25 "$BIG"

step "Searching for a tool: optimize --nfe 25 --runtime comfyui, and both exports run through the real clients"
kept "$R/optimize-nfe25-comfyui/best.json" || opt optimize-nfe25-comfyui 25 --runtime comfyui
kept "$R/export-fidelity.md" ||
    to "$R/export-fidelity.md" python bench/export_fidelity.py "${MODEL_FLAG[@]}" "$R/optimize-nfe25-comfyui/best.json" \
        "$R/optimize-nfe25/best.json" --samples "$FIDELITY_SAMPLES" --seed 0

for nfe in $LEARNED_NFES; do
    step "Learned steps and the published DPs: optimize --nfe $nfe, its export against its pool and DPM-Solver++(2M)-50"
    # shellcheck disable=SC2086
    kept "$R/learned-nfe$nfe/best.json" || opt "learned-nfe$nfe" "$nfe" $POOL_SOLVERS
    against_pool "$R/learned-nfe$nfe" "$nfe" "$BIG" --baselines dpmpp-2m --nfe 50
done

step "Below five evaluations: every solver, learned steps and the learned solver at NFE $FEW_NFES (bench/few_nfe.sh)"
kept "$R/few-nfe/paired.md" ||
    OUT="$R/few-nfe" STUDIES_DIR="$STUDIES" NFES="$FEW_NFES" BUDGET="$BUDGET" DEVICE="$DEVICE" SAMPLES="$BIG" SEEDS="$SEEDS" \
        OPTIMIZE_FLAGS="$OPT" \
        bash bench/few_nfe.sh

step "Why 50 evaluations can score worse than 5: judge FID taken apart, and the images (bench/more_steps.py)"
if kept "$R/more-steps.md"; then :
elif [ "$HAVE_DATA" = 1 ]; then  # the real side is the Fashion-MNIST test images
    learned=()
    for nfe in $LEARNED_NFES; do learned+=("$R/learned-nfe$nfe/best.json"); done
    # shellcheck disable=SC2086
    to "$R/more-steps.md" python bench/more_steps.py "${MODEL_FLAG[@]}" --device "$DEVICE" --nfe $MORE_NFES \
        --policy "${learned[@]}" --samples "$MORE_SAMPLES" --seeds "$SEEDS" --reference dpmpp-2m-50
else
    echo "skipped: the Fashion-MNIST test images are not on this machine (dataset-fashion-mnist)" >&2
fi

step "Every solver at NFE 5, 10 and 25, under the default runtime and with the x̂0 clamp (stepdrop-clamp)"
SOLVERS=ddim,ddpm,dpmpp-2m,dpmpp-3m,dpmpp-2m-sde,ipndm,unipc,heun
kept "$R/solvers-nfe5-10-25.json" ||
    ev --baselines "$SOLVERS" --nfe 5,10,25 --samples "$BIG" --seeds "$SEEDS" --metrics fid,kid,throughput,gflops \
        --out "$R/solvers-nfe5-10-25"
kept "$R/solvers-nfe5-10-25-clamp.json" ||
    ev --baselines "$SOLVERS" --nfe 5,10,25 --samples "$BIG" --seeds "$SEEDS" --metrics fid,kid --runtime stepdrop-clamp \
        --out "$R/solvers-nfe5-10-25-clamp"
# README's clamp table: each row without the clamp against itself with it, paired per seed (same x_T and noise)
to "$R/runtime-clamp.md" python bench/model_compare.py --old "$R/solvers-nfe5-10-25-clamp.json" --new "$R/solvers-nfe5-10-25.json"
# README's main-job table: the export against every solver's uniform row at NFE 5, 10 and 25, on the same seeds
to "$R/optimize-nfe25/paired-solvers.md" python bench/paired_table.py "solvers=$R/solvers-nfe5-10-25.json" \
    "$R/optimize-nfe25/evaluate.json" --reference best
# README's two figures: each export's samples beside DDIM's from the same x_T, and judge FID against NFE (the full
# run writes README's own, docs/figures)
exports=("25=$R/optimize-nfe25")
for nfe in $LEARNED_NFES; do exports+=("$nfe=$R/learned-nfe$nfe"); done
figures=docs/figures; { [ "$QUICK" = 1 ] || [ -n "${MODEL:-}" ]; } && figures=$R/figures
python bench/readme_figures.py "${MODEL_FLAG[@]}" --exports "${exports[@]}" --solvers "$R/solvers-nfe5-10-25.json" \
    --out "$figures" > /dev/null

step "The sampler loop's time outside the network"
# shellcheck disable=SC2086
kept "$R/sampler-speed.txt" ||
    to "$R/sampler-speed.txt" python bench/sampler_speed.py "${MODEL_FLAG[@]}" --batch "$SPEED_BATCH" --nfe $SPEED_NFE \
        --repeats "$SPEED_REPEATS" --solvers ddim ddpm dpmpp-2m dpmpp-3m dpmpp-2m-sde ipndm unipc heun

step "Stochastic rows' spread is proxy-FID's"
# shellcheck disable=SC2086
kept "$R/stochastic-variance.json" ||
    python bench/stochastic_variance.py "${MODEL_FLAG[@]}" $VARIANCE --out "$R/stochastic-variance"

step "The teacher, and proxy-FID's small-sample bias"
# shellcheck disable=SC2086
kept "$R/teacher-accuracy.txt" || to "$R/teacher-accuracy.txt" python bench/teacher_accuracy.py "${MODEL_FLAG[@]}" $TEACHERS
# shellcheck disable=SC2086
kept "$R/small-sample-bias-nfe10.txt" ||
    to "$R/small-sample-bias-nfe10.txt" python bench/small_sample_bias.py "${MODEL_FLAG[@]}" --nfe 10 $BIAS

step "Which loss the gradient method descends"
init=$(python -c "import json,sys; print(','.join(str(t) for t in json.load(open(sys.argv[1]))['timesteps']))" \
    "$R/learned-nfe5/pool/unipc_dp-oss-nfe5.json")
# shellcheck disable=SC2086
kept "$R/gradient-losses-unipc-nfe5.txt" || to "$R/gradient-losses-unipc-nfe5.txt" \
    python bench/gradient_losses.py "${MODEL_FLAG[@]}" --solver unipc --nfe 5 --init "$init" $LOSSES

step "Resampled or searched"
mkdir -p "$R/resample"
for pair in $RESAMPLE; do
    IFS=: read -r from to_nfe label searched <<< "$pair"
    resampled="$R/resample/best-from-nfe$from-to-nfe$to_nfe.json"
    kept "$R/resample/evaluate-nfe$to_nfe.json" || {
        stepdrop-search policy resample "$R/learned-nfe$from/best.json" --nfe "$to_nfe" "${MODEL_FLAG[@]}" --out "$resampled"
        ev --policy "$resampled" --samples "$BIG" --seeds "$SEEDS" --metrics fid,kid --out "$R/resample/evaluate-nfe$to_nfe"
    }
    to "$R/resample/paired-nfe$to_nfe.md" python bench/paired_table.py "$label=$R/$searched/evaluate.json" \
        "$R/resample/evaluate-nfe$to_nfe.json" --reference "$label:best"
done

step "Side by side with the peers"
kept "$R/peers/peers.json" || OUT="$R/peers" STUDIES_DIR="$STUDIES" bash bench/peers.sh
# README's paired rows: the searched schedules against the rows they are compared with, per seed
to "$R/peers/paired-nfe5.md" python bench/paired_table.py "$R/peers/peers.json" --reference optuna-ddim-nfe5 \
    --rows "optuna-ddim-nfe5→dpmpp-2m,dp-oss@5,quadratic@5,ddim-trailing@5,dp-oss→dpmpp-2m@5,dpmpp-2m-trailing@5"
to "$R/peers/paired-nfe10.md" python bench/paired_table.py "$R/peers/peers.json" --reference optuna-dpmpp-2m-nfe10 \
    --rows "optuna-ddim-nfe10→dpmpp-2m,dpmpp-2m-trailing@10,dp-oss→dpmpp-2m@10,dp-oss@10,optuna-ddim-nfe10,ddim-trailing@10,optuna-dpmpp-2m-nfe10→ddim"

step "The S2-DM ablation (fine-tunes on Fashion-MNIST)"
if kept "$R/s2dm-ablation-s2dm.json"; then :
elif [ "$HAVE_DATA" = 1 ]; then
    # 4000 fine-tune steps (500 show little); a killed fine-tune is continued by the next run (train --resume)
    STEPS=${STEPS:-4000} RUNS=$s2dm_runs POLICIES="$R/peers" OUT="$R/s2dm-ablation" bash bench/s2dm_ablation.sh
else
    echo "skipped: the Fashion-MNIST training data is not on this machine (dataset-fashion-mnist)" >&2
fi
# README's S2-DM columns: the S2-DM fine-tune against the control, and the control against the model it started from, row by
# row and paired per seed (the three evaluations start from the same x_T)
if [ -f "$R/s2dm-ablation-s2dm.json" ]; then
    to "$R/s2dm-ablation-paired.md" python bench/model_compare.py \
        --old "$R/s2dm-ablation-control.json" --new "$R/s2dm-ablation-s2dm.json"
    to "$R/s2dm-ablation-control-vs-base.md" python bench/model_compare.py \
        --old "$R/s2dm-ablation-base.json" --new "$R/s2dm-ablation-control.json"
fi

step "Does more training help? The S2-DM ablation's control fine-tune against the model it started from, at the evaluation size"
if kept "$R/finetune-compare.md"; then :
elif [ -n "${MODEL:-}" ] && [ ! -f "$MODEL" ]; then
    echo "skipped: MODEL=$MODEL is not a checkpoint file, which bench/model_compare.sh needs as its old model" >&2
elif [ -f "$s2dm_runs/control/last.pt" ]; then
    # the old rows are the model's the fine-tunes started from (MODEL, or the shipped one), which the model comparison
    # above evaluated as its new model on the same rows, samples and seeds: taken from its reports, not evaluated again
    for report in "$R"/model-compare-new-*; do
        if [ -f "$report" ]; then cp "$report" "$R/finetune-compare-old-${report##*/model-compare-new-}"; fi
    done
    OLD=${MODEL:-HEAD} NEW="$s2dm_runs/control/last.pt" SAMPLES=$BIG ROWS=$COMPARE_ROWS OUT="$R/finetune-compare" \
        bash bench/model_compare.sh > /dev/null
else
    echo "skipped: no control fine-tune in $s2dm_runs (the S2-DM ablation did not run)" >&2
fi

step "done: $R"
[ "$QUICK" = 0 ] || rm -rf "$WORK"
