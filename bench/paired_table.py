"""Paired differences of every row of an `evaluate` report to one reference row, per seed.

    python bench/paired_table.py bench/results/optimize-nfe5/evaluate.json [more.json …] --reference best \\
        | tee bench/results/optimize-nfe5/paired.md

For each row and seed s: Δ_s = metric(row, s) − metric(reference, s) (same x_T and noise in both, so the seed's class
mix cancels). Prints a Markdown table sorted by the judge's mean FID, with the judge's and the coach's FID, the paired
Δ on each (mean ± std, and per seed on the judge), KID's Δ on the judge, and the verdict: a difference beyond 2 std of
the judge's paired Δ, or a tie when it is within that or the two networks disagree in sign (docs/judge.md). Reports
from before the judge existed are compared on the coach alone, and the header says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def paired(rows: dict, name: str, reference: str, metric: str) -> list[float]:
    ref = {s["seed"]: s[metric] for s in rows[reference]["per_seed"]}
    return [s[metric] - ref[s["seed"]] for s in rows[name]["per_seed"] if s["seed"] in ref]


def spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def judged(rows: dict) -> bool:
    """Every row measured on the judge (reports written since it shipped)."""
    return all("judge_fid" in s for row in rows.values() for s in row["per_seed"])


def headline(rows: dict) -> tuple[str, str]:
    """(FID key, KID key) the verdict is taken on: the judge's where every row has it, else the coach's."""
    return ("judge_fid", "judge_kid") if judged(rows) else ("fid", "kid")


def verdict(rows: dict, name: str, reference: str, better: str = "row better", worse: str = "reference better") -> str:
    """``better``/``worse`` when the headline FID's paired Δ (row − reference) is beyond 2 std and, with a judge, the
    coach agrees in sign; otherwise a tie, saying why."""
    fid, _ = headline(rows)
    mean, std = spread(paired(rows, name, reference, fid))
    if abs(mean) <= 2 * std:
        return "tie (within 2 std)"
    if fid == "judge_fid" and (spread(paired(rows, name, reference, "fid"))[0] > 0) != (mean > 0):
        return "tie (judge and coach disagree)"
    return worse if mean > 0 else better


def fid_cells(row: dict, fid: str) -> list[str]:
    """The headline FID (mean ± std) and, under the judge, the coach's FID beside it."""
    cells = [f"{row['summary'][fid]['mean']:.3f} ± {row['summary'][fid]['std']:.3f}"]
    return cells + ([f"{row['summary']['fid']['mean']:.3f}"] if fid == "judge_fid" else [])


def delta_cells(rows: dict, name: str, reference: str) -> list[str]:
    """The headline FID's paired Δ (mean ± std, per seed), the coach's Δ under a judge, and KID's Δ."""
    fid, kid = headline(rows)
    delta = paired(rows, name, reference, fid)
    mean, std = spread(delta)
    cells = [f"{mean:+.3f} ± {std:.3f}", ", ".join(f"{d:+.2f}" for d in delta)]
    if fid == "judge_fid":
        cells.append(f"{spread(paired(rows, name, reference, 'fid'))[0]:+.3f}")
    return cells + [f"{spread(paired(rows, name, reference, kid))[0]:+.4f}"]


def header(rows: dict, names: list[str]) -> list[str]:
    """Column headers for ``names`` (each side's FID) and the Δ columns of :func:`fid_cells` and :func:`delta_cells`."""
    fid, _ = headline(rows)
    net = "judge" if fid == "judge_fid" else "coach"
    sides = [h for n in names for h in ([f"{n} judge FID", f"{n} coach FID"] if net == "judge" else [f"{n} coach FID"])]
    return sides + [f"Δ {net} FID (mean ± std)", "Δ per seed"] + (["Δ coach FID"] if net == "judge" else []) + \
        [f"Δ {net} KID"]


def markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="[LABEL=]OUT.json of stepdrop-search evaluate runs on the same "
                        "samples and seeds (rows are deterministic per seed, so runs combine; a row named in several "
                        "reports is taken from the last; a LABEL prefixes that report's row names, LABEL:row)")
    parser.add_argument("--reference", required=True, help="row name every other row is paired with")
    parser.add_argument("--rows", help="comma-separated row names to show (default: every row)")
    args = parser.parse_args(argv)
    labelled = [arg.split("=", 1) if "=" in arg else ["", arg] for arg in args.reports]
    reports = [(label, json.loads(Path(path).read_text())) for label, path in labelled]
    if len({(r["meta"]["samples"], r["meta"]["seeds"], r["meta"]["model_hash"]) for _, r in reports}) != 1:
        parser.error("the reports differ in samples, seeds or model: their rows are not paired")
    rows = {(f"{label}:" if label else "") + r["name"]: r for label, report in reports for r in report["results"]
            if not r["failed"]}
    wanted = set(args.rows.split(",")) | {args.reference} if args.rows else set(rows)
    missing = wanted - set(rows)
    if missing:
        parser.error(f"no row {', '.join(sorted(missing))} in the reports; rows: {', '.join(rows)}")
    rows = {name: row for name, row in rows.items() if name in wanted}
    if args.reference not in rows:
        parser.error(f"no row {args.reference!r} in the reports; rows: {', '.join(rows)}")
    meta = reports[0][1]["meta"]
    fid, _ = headline(rows)
    print(f"{meta['samples']} samples × {meta['seeds']} seeds; Δ = row − {args.reference}, paired per seed; "
          + ("verdicts on the judge network, the coach beside it\n" if fid == "judge_fid" else
             "verdicts on the coach network (these reports predate the judge)\n"))
    columns = ["row", "NFE (measured)"] + header(rows, [""]) + ["verdict"]
    print(markdown_row([c.strip() for c in columns]))
    print("|" + "---|" * len(columns))
    for name in sorted(rows, key=lambda n: rows[n]["summary"][fid]["mean"]):
        nfe = statistics.fmean(s["nfe"] for s in rows[name]["per_seed"])
        print(markdown_row([name, f"{nfe:g}", *fid_cells(rows[name], fid), *delta_cells(rows, name, args.reference),
                            "" if name == args.reference else verdict(rows, name, args.reference)]))


if __name__ == "__main__":
    main()
