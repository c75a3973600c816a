"""The classifier-free guidance tables from bench/guidance_table.sh's `evaluate` reports.

    python bench/guidance_table.py bench/results/guidance/scales-nfe10.json bench/results/guidance/scales-nfe20.json \\
        --export bench/results/guidance/search/evaluate.json

Per NFE, one row per guidance (constant scales, then σ intervals): the steps its NFE buys, the judge's FID (the
coach's in brackets), the judge classifier's accuracy on the classes asked for, and the mean per-class FID; each
mean ± std over seeds. Then the searched export against the best constant-guidance row of its evaluation and the
best row overall, paired per seed (judge FID and accuracy).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

GUIDED = re.compile(r"cfg(?P<scale>[0-9.]+)(?:@(?P<interval>[0-9.]+-[0-9.a-z]+))?$")


def rows_of(path: Path) -> list[dict]:
    return [r for r in json.loads(path.read_text())["results"] if not r["failed"]]


def stat(row: dict, key: str, digits: int = 2) -> str:
    values = [s[key] for s in row["per_seed"] if key in s]
    if not values:
        return "—"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {spread:.{digits}f}"


def mean(row: dict, key: str) -> float:
    return statistics.fmean(s[key] for s in row["per_seed"])


def guidance_of(row: dict) -> tuple[str, str]:
    """(scale, interval or 'every step') from the row's policy document."""
    guidance = row["policy"].get("guidance") or {"scale": 1.0, "sigma_lo": 0.0, "sigma_hi": None}
    high = guidance["sigma_hi"]
    constant = guidance["sigma_lo"] == 0 and high is None
    return f"{guidance['scale']:g}", "every step" if constant or guidance["scale"] == 1 else \
        f"σ ∈ [{guidance['sigma_lo']:g}, {high:g}]"


def scales_table(rows: list[dict]) -> str:
    lines = ["| NFE | guidance | where | steps | judge FID (coach) | judge accuracy | judge class-FID |",
             "|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r["summary"]["nfe"]["mean"] if False else 0, guidance_of(r)[1] != "every step")):
        scale, where = guidance_of(row)
        nfe = round(statistics.fmean(s["nfe"] for s in row["per_seed"]))
        lines.append(f"| {nfe} | {scale} | {where} | {len(row['policy']['timesteps'])} | {stat(row, 'judge_fid')} "
                     f"({mean(row, 'fid'):.2f}) | {stat(row, 'judge_accuracy', 3)} | {stat(row, 'judge_class_fid')} |")
    return "\n".join(lines)


def paired(a: dict, b: dict, key: str) -> str:
    ref = {s["seed"]: s[key] for s in b["per_seed"]}
    deltas = [s[key] - ref[s["seed"]] for s in a["per_seed"] if s["seed"] in ref]
    spread = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
    return f"{statistics.fmean(deltas):+.3f} ± {spread:.3f} ({', '.join(f'{d:+.2f}' for d in deltas)})"


def export_lines(rows: list[dict]) -> list[str]:
    by_name = {r["name"]: r for r in rows}
    export = by_name["best"]
    constant = [r for r in rows if r["name"] != "best" and (r["policy"].get("guidance") or {}).get("sigma_hi", 0) is None
                and (r["policy"].get("guidance") or {}).get("sigma_lo") == 0]
    others = [r for r in rows if r["name"] != "best"]
    scale, where = guidance_of(export)
    lines = [f"Searched export: {export['policy']['provenance']['search']['winner']}, guidance {scale} at {where}, "
             f"{len(export['policy']['timesteps'])} steps, measured NFE {mean(export, 'nfe'):g}; judge FID "
             f"{stat(export, 'judge_fid')}, accuracy {stat(export, 'judge_accuracy', 3)}.", ""]
    for label, group in (("the best constant-guidance row", constant), ("the best other row", others)):
        if not group:
            lines.append(f"- No {label[4:]} among the evaluated pool rows.")
            continue
        best = min(group, key=lambda r: mean(r, "judge_fid"))
        lines.append(f"- Against {label}, {best['name']} ({stat(best, 'judge_fid')}): Δ judge FID "
                     f"{paired(export, best, 'judge_fid')}, Δ accuracy {paired(export, best, 'judge_accuracy')}, "
                     f"Δ coach FID {paired(export, best, 'fid')}.")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", type=Path, nargs="+", help="evaluate --guidance reports, one per NFE")
    parser.add_argument("--export", type=Path, help="the export against its pool (its row is 'best')")
    args = parser.parse_args(argv)
    rows = [row for path in args.reports for row in rows_of(path)]
    out = [scales_table(rows), "", "Cells: mean ± std over seeds; FID on the judge (coach in brackets); accuracy: the "
           "judge classifier's top-1 on the class each sample was asked for."]
    if args.export:
        out += ["", *export_lines(rows_of(args.export))]
    print("\n".join(out))


if __name__ == "__main__":
    main()
