# Sourced by the bench scripts (bash, from the repository root): the helpers their long runs share, so that every
# script reports, keeps and writes files the same way. Sourcing it again (a sourced script sources it too) is a no-op.
[ -n "${STEPDROP_BENCH_LIB:-}" ] && return 0
STEPDROP_BENCH_LIB=1
started=$(date +%s)
# MODEL (a checkpoint file or a model name; unset: the shipped model) as the flag every command takes
MODEL_FLAG=()
[ -n "${MODEL:-}" ] && MODEL_FLAG=(--model "$MODEL")
step() {  # step TEXT: a progress line on stderr, with the seconds since the script started
    echo "== $(($(date +%s) - started)) s: $*" >&2
}
kept() {  # kept FILE [TO_REDO]: true (and says so) when an earlier run already made FILE; TO_REDO: what deleting it does
    [ -f "$1" ] && echo "   kept $1 (delete it to ${2:-remake it})" >&2
}
to() {  # to FILE COMMAND…: COMMAND's output into FILE, whole or not at all (a temp name, then a rename). COMMAND runs
    # where `set -e` does not reach (left of &&): a shell function passed as COMMAND must return its failures itself
    local file=$1; shift
    "$@" > "$file.part" && mv "$file.part" "$file"
}
