"""Is one model (or one runtime) better than another at the same samplers? Paired per seed, row by row.

    python bench/model_compare.py --old OLD.json [more …] --new NEW.json [more …] > model-compare.md

Each argument is an `evaluate` report (``--out OLD`` writes OLD.json), all of the *old* model after ``--old`` and all
of the *new* one after ``--new`` (or one model's rows under two runtimes: reproduce.sh's clamp table). Both were run
with the same ``--samples`` and ``--seeds``, so seed s of a row starts from the same x_T in both: for every row name in
both, Δ_s = metric(new, s) − metric(old, s) cancels the seed's class mix, the way `paired_table.py` does within one
model. Prints each common row with both sides' FID on the judge and the coach, the paired Δ on each (mean ± std, per
seed on the judge), KID's Δ, and the verdict (`paired_table.verdict`: beyond 2 std of the judge's Δ with the coach
agreeing in sign, else a tie); reports that predate the judge are compared on the coach.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_table import delta_cells, fid_cells, header, headline, markdown_row, verdict  # noqa: E402 (a sibling script, not a package)


def rows_of(reports: list[dict]) -> dict:
    return {r["name"]: r for report in reports for r in report["results"] if not r["failed"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", nargs="+", required=True, help="OUT.json of evaluate runs on the old model")
    parser.add_argument("--new", nargs="+", required=True, help="OUT.json of evaluate runs on the new model")
    args = parser.parse_args(argv)
    old = [json.loads(Path(path).read_text()) for path in args.old]
    new = [json.loads(Path(path).read_text()) for path in args.new]
    sizes = {(r["meta"]["samples"], r["meta"]["seeds"]) for r in [*old, *new]}
    if len(sizes) != 1:
        parser.error(f"the reports differ in samples or seeds ({sorted(sizes)}): their rows are not paired")
    for side, reports in (("old", old), ("new", new)):
        if len({r["meta"]["model_hash"] for r in reports}) != 1:
            parser.error(f"the --{side} reports are of different models")
    old_rows, new_rows = rows_of(old), rows_of(new)
    common = [name for name in old_rows if name in new_rows]
    if not common:
        parser.error(f"no row is in both: old {', '.join(old_rows)}; new {', '.join(new_rows)}")
    rows = {f"old:{n}": old_rows[n] for n in common} | {f"new:{n}": new_rows[n] for n in common}
    samples, seeds = sizes.pop()
    runtime = {side: reports[0]["meta"].get("runtime", {}).get("name", "legacy") for side, reports in (("old", old), ("new", new))}
    print(f"old: model {old[0]['meta']['model_hash']}, runtime {runtime['old']}; new: model {new[0]['meta']['model_hash']}, "
          f"runtime {runtime['new']}; {samples} samples × {seeds} seeds; Δ = new − old, paired per seed (same x_T)\n")
    fid, _ = headline(rows)
    columns = ["row", *header(rows, ["old", "new"]), "verdict"]
    print(markdown_row(columns))
    print("|" + "---|" * len(columns))
    for name in common:
        print(markdown_row([name, *fid_cells(old_rows[name], fid), *fid_cells(new_rows[name], fid),
                            *delta_cells(rows, f"new:{name}", f"old:{name}"),
                            verdict(rows, f"new:{name}", f"old:{name}", better="new better", worse="old better")]))


if __name__ == "__main__":
    main()
