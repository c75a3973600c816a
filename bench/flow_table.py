"""The rectified-flow quality-vs-NFE table from bench/flow_table.sh's `evaluate` reports.

    python bench/flow_table.py --uniform bench/results/flow/uniform-nfe*.json --shifts bench/results/flow/shifts-nfe*.json \\
        --export bench/results/flow/search/evaluate.json --export-nfe 10 \\
        --eps-solvers bench/results/reproduced/solvers-nfe5-10-25.json

One row per solver, and per NFE: the flow model on uniform t, on its best fixed shift (the shift's value beside it;
best by the judge's mean FID on the same evaluation seeds, which favours the shifts), and the ε model on uniform steps
where ``--eps-solvers`` is given; then the searched export's row at its NFE. Cells are the judge's FID mean ± std over
seeds with the coach's mean in brackets. ``--rows-at N`` instead prints the row names at NFE N of the reports given
(labelled ``uniform:`` and ``shifts:``, the export's report unlabelled), comma-separated, for bench/paired_table.py.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

SHIFT_ROW = re.compile(r"^(?P<solver>.+)_shift(?P<shift>[0-9.]+)-nfe(?P<nfe>\d+)$")


def report_rows(path: Path) -> list[dict]:
    return [r for r in json.loads(path.read_text())["results"] if not r["failed"]]


def target_nfe(row: dict) -> int:
    """The NFE a row was built for, from its name (``heun-10``, ``heun_shift3-nfe10``): a Heun row's policy holds
    fewer steps than that."""
    match = re.search(r"-(?:nfe)?(\d+)$", row["name"])
    return int(match[1]) if match else int(row["policy"]["nfe"])


def solver(row: dict) -> str:
    return row["policy"]["solver"]["name"]


def judge(row: dict) -> float:
    return row["summary"]["judge_fid"]["mean"]


def cell(row: dict | None, note: str = "") -> str:
    if row is None:
        return "—"
    summary = row["summary"]
    text = f"{summary['judge_fid']['mean']:.2f} ± {summary['judge_fid']['std']:.2f} ({summary['fid']['mean']:.2f})"
    return f"{text}{note}"


def best_shifts(rows: list[dict]) -> dict[tuple[str, int], tuple[dict, str]]:
    """(solver, NFE) → (the row with the lowest judge FID among the shift rows, its shift)."""
    best: dict[tuple[str, int], tuple[dict, str]] = {}
    for row in rows:
        match = SHIFT_ROW.match(row["name"])
        if not match:
            continue
        key = (solver(row), target_nfe(row))
        if key not in best or judge(row) < judge(best[key][0]):
            best[key] = (row, match["shift"])
    return best


def table(uniform: list[dict], shifts: list[dict], export: list[dict], export_nfe: int, eps: list[dict]) -> str:
    nfes = sorted({target_nfe(r) for r in uniform})
    solvers = list(dict.fromkeys(solver(r) for r in uniform))
    by_key = {(solver(r), target_nfe(r)): r for r in uniform}
    eps_by_key = {(solver(r), target_nfe(r)): r for r in eps}
    shifted = best_shifts(shifts)
    columns = ["solver"]
    for nfe in nfes:
        columns += [f"NFE {nfe}: flow, uniform t", f"NFE {nfe}: flow, best shift"]
        columns += [f"NFE {nfe}: ε, uniform"] if eps else []
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name in solvers:
        cells = [name]
        for nfe in nfes:
            best = shifted.get((name, nfe))
            cells += [cell(by_key.get((name, nfe))), cell(best[0], f", shift {best[1]}") if best else "—"]
            cells += [cell(eps_by_key.get((name, nfe)))] if eps else []
        lines.append("| " + " | ".join(cells) + " |")
    exported = next(r for r in export if r["name"] == "best")
    winner = exported["policy"]["provenance"]["search"]["winner"]
    lines += ["", f"Searched export at NFE {export_nfe} (`optimize --nfe {export_nfe}` on the flow model): {winner}, "
              f"{cell(exported)}; measured NFE {exported['summary']['nfe']['mean']:g}.",
              "", "Cells: the judge's FID, mean ± std over seeds (the coach's mean in brackets)."]
    return "\n".join(lines)


def rows_at(nfe: int, uniform: list[dict], shifts: list[dict], export: list[dict]) -> list[str]:
    return ([f"uniform:{r['name']}" for r in uniform if target_nfe(r) == nfe]
            + [f"shifts:{r['name']}" for r in shifts if target_nfe(r) == nfe] + [r["name"] for r in export])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uniform", type=Path, nargs="+", default=[], help="every solver on uniform t (evaluate "
                        "--baselines), one report or one per NFE")
    parser.add_argument("--shifts", type=Path, nargs="+", default=[], help="the shift rows (evaluate --policy of shift "
                        "files), one report or one per NFE")
    parser.add_argument("--export", type=Path, help="the export against its pool (its row is 'best')")
    parser.add_argument("--export-nfe", type=int, default=10)
    parser.add_argument("--eps-solvers", type=Path, help="the ε model's report of every solver on uniform steps")
    parser.add_argument("--rows-at", type=int, help="print the row names at this NFE instead of the table")
    args = parser.parse_args(argv)
    uniform = [row for path in args.uniform for row in report_rows(path)]
    shifts = [row for path in args.shifts for row in report_rows(path)]
    export, eps = ([] if path is None else report_rows(path) for path in (args.export, args.eps_solvers))
    if args.rows_at is not None:
        print(",".join(rows_at(args.rows_at, uniform, shifts, export)))
        return
    if not (uniform and export):
        parser.error("the table needs --uniform and --export")
    print(table(uniform, shifts, export, args.export_nfe, eps))


if __name__ == "__main__":
    main()
