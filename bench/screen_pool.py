"""The pool rows an export must be measured against at full size: the best of a small-sample screen of every row.

    python bench/screen_pool.py bench/results/reproduced/learned-nfe10/screen.json \\
        --pool bench/results/reproduced/learned-nfe10/pool --top 8

Evaluating every row of an `optimize --save-pool` folder (100–200 rows) at the evaluation size costs hours on a CPU.
So `bench/reproduce.sh` first screens them all on the evaluation seeds at a few hundred samples, then measures the
export against the ``--top`` rows of the screen (by the judge's mean FID, the coach's where the report has no judge)
at the full size. Screening on the evaluation seeds favours the rows that happen to do well on them, which makes the
comparison harder for the export, never easier. Prints the chosen rows' policy files, one per line, best first.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def ranked_rows(report: dict) -> list[tuple[float, str]]:
    """(mean headline FID, row name) of every row that ran, best first."""
    rows = [r for r in report["results"] if not r["failed"]]
    metric = "judge_fid" if all("judge_fid" in s for r in rows for s in r["per_seed"]) else "fid"
    return sorted((statistics.fmean(s[metric] for s in r["per_seed"]), r["name"]) for r in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="an evaluate report (.json) of the export and the pool folder")
    parser.add_argument("--pool", type=Path, required=True, help="the --save-pool folder whose rows the report holds")
    parser.add_argument("--top", type=int, default=8, help="how many pool rows to keep")
    parser.add_argument("--match", default="", help="only rows whose name matches this regular expression (e.g. "
                        "'\\+cfg[0-9.]+-nfe': constant guidance, whose names, unlike a σ interval's, hold no '@')")
    args = parser.parse_args(argv)
    try:
        pattern = re.compile(args.match)
    except re.error as err:
        parser.error(f"--match {args.match!r} is not a regular expression ({err}); escape a literal +, e.g. '\\+cfg'")
    files = {path.stem: path for path in args.pool.glob("*.json") if pattern.search(path.stem)}
    if not files:
        parser.error(f"{args.pool} holds no policy files" + (f" whose name matches {args.match!r}" if args.match else ""))
    chosen = [files[name] for _, name in ranked_rows(json.loads(args.report.read_text())) if name in files]
    if not chosen and not args.match:
        parser.error(f"no row of {args.report} is a policy file of {args.pool}")
    print("\n".join(str(path) for path in chosen[:args.top]))


if __name__ == "__main__":
    main()
