"""Paired differences of every row of an `evaluate` report to one reference row, per seed.

    python bench/paired_table.py bench/results/optimize-nfe5/evaluate.json [more.json …] --reference best \\
        | tee bench/results/optimize-nfe5/paired.md

For each row and seed s: Δ_s = metric(row, s) − metric(reference, s) (same x_T and noise in both, so the seed's class
mix cancels). Prints a Markdown table sorted by mean proxy-FID with mean ± std over seeds, the paired Δ's mean ± std
and per seed, KID's Δ, and whether the reference beats the row by more than 2 std of the paired difference.
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
    print(f"{meta['samples']} samples × {meta['seeds']} seeds; Δ = row − {args.reference}, paired per seed\n")
    print("| row | NFE (measured) | proxy-FID | KID | Δ proxy-FID (mean ± std) | Δ per seed | Δ KID | reference better by > 2 std |")
    print("|---|---|---|---|---|---|---|---|")
    for name in sorted(rows, key=lambda n: rows[n]["summary"]["fid"]["mean"]):
        fid, kid = rows[name]["summary"]["fid"], rows[name]["summary"]["kid"]
        delta = paired(rows, name, args.reference, "fid")
        mean, std = spread(delta)
        kid_mean = spread(paired(rows, name, args.reference, "kid"))[0]
        verdict = "" if name == args.reference else ("yes" if mean > 2 * std else "no")
        nfe = statistics.fmean(s["nfe"] for s in rows[name]["per_seed"])
        print(f"| {name} | {nfe:g} | {fid['mean']:.3f} ± {fid['std']:.3f} | {kid['mean']:.4f} | {mean:+.3f} ± {std:.3f} | "
              f"{', '.join(f'{d:+.2f}' for d in delta)} | {kid_mean:+.4f} | {verdict} |")


if __name__ == "__main__":
    main()
