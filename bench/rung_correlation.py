"""Do `optimize`'s small-sample scores rank candidates the way `evaluate` at full size does?

    python bench/rung_correlation.py bench/results/reproduced/learned-nfe5/evaluate.json

Reads an evaluate report of `optimize --save-pool` files (each row's policy carries, in its provenance, the search's
rung scores on the coach and its selection race on the judge) and prints Spearman's ρ between the full-size FID and
(a) the coach's largest-rung FID, (b) the rung objective (proxy-FID + w · residual), (c) the selection's judge FID on
the samples each row reached, each against the same network at full size, with the ten best rows' ranks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scipy.stats import rankdata, spearmanr


def correlate(label: str, pairs: list[tuple[str, float, float]]) -> None:
    """ρ between a small-sample score and the full-size one, and the full-size ten best with both ranks."""
    if len(pairs) < 3:
        print(f"{label}: fewer than 3 rows carry it")
        return
    names, small, full = zip(*pairs, strict=True)
    print(f"{label}: {len(pairs)} pool rows, Spearman ρ with the full-size value {spearmanr(small, full).statistic:.3f}")
    by_small, by_full = rankdata(small), rankdata(full)
    for i in sorted(range(len(pairs)), key=lambda i: full[i])[:10]:
        print(f"  {names[i]:<28} {full[i]:>8.3f} rank {by_full[i]:>4.0f}, small-sample rank {by_small[i]:>4.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path)
    args = parser.parse_args(argv)
    coach, objective_rank, judge = [], [], []
    for row in json.loads(args.report.read_text())["results"]:
        prov = (row.get("policy") or {}).get("provenance") or {}
        objective, search = prov.get("objective") or {}, prov.get("search") or {}
        if row["failed"] or not search.get("pool_member"):
            continue  # not a pool file of optimize (the export, a baseline)
        summary = row["summary"]
        if objective.get("fid") is not None:
            coach.append((row["name"], objective["fid"], summary["fid"]["mean"]))
            objective_rank.append((row["name"], objective["value"], summary["fid"]["mean"]))
        held_out = search.get("held_out") or {}
        if held_out.get("judge_fid") is not None and "judge_fid" in summary:
            judge.append((row["name"], held_out["judge_fid"], summary["judge_fid"]["mean"]))
    if len(coach) < 3 and len(judge) < 3:
        parser.error("fewer than 3 rows carry a search score (evaluate the folder optimize --save-pool wrote)")
    correlate("coach, largest rung vs full size", coach)
    correlate("rung objective vs full-size coach FID", objective_rank)
    correlate("judge, selection race vs full size", judge)


if __name__ == "__main__":
    main()
