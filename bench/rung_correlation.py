"""Does `optimize`'s rung-0 score rank candidates the way `evaluate` at full size does?

    python bench/rung_correlation.py bench/results/optimize-nfe5/evaluate-pool.json

Reads an evaluate report of `optimize --save-pool` files (each row's policy carries the search's rung-0 scores in
its provenance) and prints Spearman's ρ between the 2000-sample proxy-FID and (a) the rung-0 proxy-FID, (b) the
rung-0 objective (proxy-FID + w · residual), with each row's rank under both.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scipy.stats import rankdata, spearmanr


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for row in json.loads(args.report.read_text())["results"]:
        prov = (row.get("policy") or {}).get("provenance") or {}
        objective = prov.get("objective") or {}
        if row["failed"] or not (prov.get("search") or {}).get("pool_member") or objective.get("fid") is None:
            continue  # not a pool file of optimize (the export, a baseline)
        rows.append((row["name"], row["summary"]["fid"]["mean"], objective["fid"], objective["value"]))
    if len(rows) < 3:
        parser.error("fewer than 3 rows carry rung-0 scores (evaluate the folder optimize --save-pool wrote)")
    names, full, fid0, value0 = zip(*rows, strict=True)
    print(f"{len(rows)} pool rows; Spearman ρ with the full-size proxy-FID:")
    print(f"  rung-0 proxy-FID  {spearmanr(fid0, full).statistic:.3f}")
    print(f"  rung-0 objective  {spearmanr(value0, full).statistic:.3f}")
    by_fid, by_value, by_full = rankdata(fid0), rankdata(value0), rankdata(full)
    print(f"{'row':<28} {'full':>7} {'rank':>5} {'rung-0 FID rank':>16} {'objective rank':>15}")
    for i in sorted(range(len(rows)), key=lambda i: full[i])[:10]:
        print(f"{names[i]:<28} {full[i]:>7.3f} {by_full[i]:>5.0f} {by_fid[i]:>16.0f} {by_value[i]:>15.0f}")


if __name__ == "__main__":
    main()
