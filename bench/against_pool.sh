# Sourced by the bench scripts (bash): an optimize export against the rows of its own pool, on evaluation seeds.
#
#   against_pool DIR NFE SAMPLES [evaluate flags…]
#
# DIR holds best.json and pool/ (optimize --out DIR/best.json --save-pool DIR/pool). Every pool row is screened at
# SCREEN_FORWARDS/NFE samples (at least 8) on SCREEN_SEEDS seeds (default SEEDS), then the export is measured against
# the TOP best of the screen (and what the flags add) at SAMPLES samples, SEEDS seeds (bench/screen_pool.py says why);
# then DIR/paired.md (every row against the export, paired per seed) and DIR/rung-correlation.txt. A report already in
# DIR is kept. The caller defines ev (its `stepdrop-search evaluate` with model and device) and SEEDS,
# SCREEN_FORWARDS, TOP; POOL_METRICS (default fid,kid) are the full-size measures; ALSO_MATCH (a regular expression)
# adds the screen's TOP best rows whose names match it ('\+cfg[0-9.]+-nfe': the best constant-guidance rows, which the
# export must beat whether or not they lead the screen).
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
against_pool() {
    local dir=$1 nfe=$2 samples=$3; shift 3
    local screen=$((SCREEN_FORWARDS / nfe)); [ "$screen" -ge 8 ] || screen=8
    if ! kept "$dir/screen.json"; then
        ev --policy "$dir/best.json" --policy "$dir/pool" --samples "$screen" --seeds "${SCREEN_SEEDS:-$SEEDS}" --metrics fid \
            --out "$dir/screen"
    fi
    if ! kept "$dir/evaluate.json"; then
        local rows=() path chosen also=""
        # two plain assignments, so a failing screen_pool.py stops the caller (set -e) instead of dropping its rows
        chosen=$(python bench/screen_pool.py "$dir/screen.json" --pool "$dir/pool" --top "$TOP")
        if [ -n "${ALSO_MATCH:-}" ]; then
            also=$(python bench/screen_pool.py "$dir/screen.json" --pool "$dir/pool" --top "$TOP" --match "$ALSO_MATCH")
        fi
        while read -r path; do if [ -n "$path" ]; then rows+=(--policy "$path"); fi; done < <(printf '%s\n%s\n' "$chosen" "$also" | sort -u)
        ev --policy "$dir/best.json" "${rows[@]}" --samples "$samples" --seeds "$SEEDS" \
            --metrics "${POOL_METRICS:-fid,kid}" "$@" \
            --out "$dir/evaluate"
    fi
    to "$dir/paired.md" python bench/paired_table.py "$dir/evaluate.json" --reference best
    to "$dir/rung-correlation.txt" python bench/rung_correlation.py "$dir/screen.json"
}
