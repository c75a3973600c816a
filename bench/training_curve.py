"""Proxy-FID and KID of a training run's snapshots at fixed samplers: is the model still improving?

A run trained with ``--snapshot-every N`` keeps its EMA weights every N steps in ``RUN/snapshots/``. This scores each
snapshot (and, with ``--start MODEL``, the weights it started from) with DPM-Solver++(2M) on uniform steps at each
``--nfe``, on the same x_T (evaluation seeds) for every snapshot, and prints one row per snapshot: proxy-FID and KID,
each the mean ± std over seeds, and the paired change from the row before (same x_T, so the seed's own noise cancels).
The last lines say whether the curve is flat: at every NFE, the last two snapshots differ by no more than twice the
std of their paired per-seed differences, in proxy-FID and in KID; and, with six or more snapshots, the same test on
the mean of the last three against the mean of the three before (its trend: an EMA's weights wander from snapshot to
snapshot by more than a paired test at 2000 samples forgives, which the last-two test reads as change).

Choosing a snapshot to ship is a selection, so the curve samples the *selection* noise (seeds 2²⁴ + 2²³ + s,
:mod:`stepdrop_search.seeds`) by default: the evaluation seeds ``evaluate`` reports the chosen model on stay unseen
(``--noise evaluation`` scores on those instead, as curves made before did).

``--out`` writes the numbers as JSON (what the model card and the docs' curve are made from) and makes the run
incremental: rows already in that file, for the same weights and settings, are kept, so scoring a run while it trains
(or after a session ended mid-curve) only scores the new snapshots; rows of steps this run does not score (``--snapshots``)
stay in the file, and a file made with other settings is refused, never overwritten. ``--plot`` draws the curve.

    python bench/training_curve.py runs/converge --start default --nfe 10 25 --samples 1000 --seeds 3 \\
        --out curve.json --plot docs/training-curve.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from stepdrop_search.checkpoint import LoadedModel
from stepdrop_search.diffusion.runtimes import runtime_named
from stepdrop_search.diffusion.solvers import spec_for_nfe
from stepdrop_search.files import write_json
from stepdrop_search.generation import generate
from stepdrop_search.loading import load_model
from stepdrop_search.objectives.features import load_features_for_model
from stepdrop_search.objectives.metrics import fid_of_features, kid_of_features, proxy_features
from stepdrop_search.policies.kinds import Uniform
from stepdrop_search.seeds import selection_seed

#: a change smaller than this many std of its paired per-seed differences is read as no change
FLAT_WITHIN_STD = 2.0
#: snapshots in each of the two windows the trend compares
TREND_WINDOW = 3
#: what must match for a row of an earlier --out to be kept instead of scored again
SETTINGS = ("solver", "nfe", "samples", "seeds", "noise", "runtime", "features")


def score(loaded: LoadedModel, nfes: list[int], samples: int, seeds: list[int], solver: str, runtime: str,
          features: str | None) -> tuple[dict, dict]:
    """Proxy-FID and KID per NFE and seed."""
    feats = load_features_for_model(features, loaded.config, loaded.dataset, device=torch.device("cpu"))
    fid, kid = {}, {}
    for nfe in nfes:
        spec, steps = spec_for_nfe(solver, nfe, runtime=runtime)
        policy = Uniform(nfe=steps, schedule=loaded.schedule)
        fid[str(nfe)], kid[str(nfe)] = [], []
        for seed in seeds:
            images = generate(loaded.model, loaded.schedule, policy, spec, n=samples, seed=seed,
                              runtime=runtime_named(runtime)).x0
            generated = proxy_features(images, feats, device=torch.device("cpu"))[0]
            fid[str(nfe)].append(fid_of_features(generated, feats))
            kid[str(nfe)].append(kid_of_features(generated, feats, seed=seed)[0])
    return fid, kid


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired_change(before: list[float], after: list[float]) -> tuple[float, float]:
    """Mean ± std over seeds of after − before, seed by seed (both rows drew the same x_T)."""
    return mean_std([b - a for a, b in zip(before, after, strict=True)])


def is_flat(before: dict, after: dict) -> bool:
    """No paired change beyond FLAT_WITHIN_STD std at any NFE, in either metric; one seed cannot tell."""
    for metric in ("fid", "kid"):
        for nfe in before[metric].keys() & after[metric].keys():
            mean, std = paired_change(before[metric][nfe], after[metric][nfe])
            if len(after[metric][nfe]) < 2 or abs(mean) > FLAT_WITHIN_STD * std:
                return False
    return True


def window_row(rows: list[dict]) -> dict:
    """A row whose score per metric, NFE and seed is the mean of ``rows``' (each seed drew the same x_T in every row)."""
    return {metric: {nfe: [statistics.fmean(seed) for seed in zip(*(row[metric][nfe] for row in rows), strict=True)]
                     for nfe in rows[0][metric]} for metric in ("fid", "kid")}


def trend_line(results: list[dict], nfes: list[int]) -> str | None:
    """The last :data:`TREND_WINDOW` snapshots against the ones before, paired per seed; None with too few snapshots."""
    snapshots = [row for row in results if row["step"] != "start"]
    if len(snapshots) < 2 * TREND_WINDOW:
        return None
    before, last = snapshots[-2 * TREND_WINDOW:-TREND_WINDOW], snapshots[-TREND_WINDOW:]
    old, new = window_row(before), window_row(last)
    changes = ", ".join(f"{label} NFE {nfe} {mean:+.3f} ± {std:.3f}" for metric, label in (("fid", "FID"), ("kid", "KID"))
                        for nfe in map(str, nfes) for mean, std in [paired_change(old[metric][nfe], new[metric][nfe])])
    verdict = "cannot tell with one seed" if len(last[0]["fid"][str(nfes[0])]) < 2 else \
        "flat" if is_flat(old, new) else "not flat"
    return (f"trend: {verdict} (the mean of steps {last[0]['step']}–{last[-1]['step']} against "
            f"{before[0]['step']}–{before[-1]['step']}, paired: {changes})")


def step_order(row: dict) -> int:
    """The start first, then the snapshots by step."""
    return -1 if row["step"] == "start" else int(row["step"])


def earlier_rows(path: Path | None, settings: dict) -> list[dict]:
    """The rows of an earlier --out, refused (one line, exit 2) when it was made with other settings: rows of another
    solver, NFE or noise are not this curve's, and rewriting the file would lose them."""
    if path is None or not path.is_file():
        return []
    try:
        earlier = json.loads(path.read_text())
        rows = list(earlier["rows"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise SystemExit(f"--out {path} exists but is not a training curve; choose another --out") from None
    other = {key: earlier.get(key) for key in SETTINGS if earlier.get(key) != settings[key]}
    if other:
        raise SystemExit(f"--out {path} was made with other settings ({other}); choose another --out or the same "
                         "settings")
    return rows


def plot(rows: list[dict], nfes: list[int], path: Path, title: str) -> None:
    """Proxy-FID (left) and KID (right) of each row as its paired change from the first row, one line per NFE, error
    bars = std over seeds of that paired change: the seeds' own spread (the same for every row) is left out, so what
    the bars show is what decides whether a change is real."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [0 if row["step"] == "start" else int(row["step"]) for row in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric, label in zip(axes, ("fid", "kid"), ("proxy-FID", "KID"), strict=True):
        for nfe in map(str, nfes):
            changes = [paired_change(rows[0][metric][nfe], row[metric][nfe]) for row in rows]
            ax.errorbar(steps, [m for m, _ in changes], yerr=[s for _, s in changes], marker="o", capsize=3,
                        label=f"NFE {nfe} (first row {mean_std(rows[0][metric][nfe])[0]:.3g})")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(steps, [f"{step / 1000:g}k" if step >= 1000 else str(step) for step in steps])
        ax.set_xlabel(f"training step ({steps[0]} = {rows[0]['step']}: the weights the run started from)"
                      if rows[0]["step"] == "start" else "training step")
        ax.set_ylabel(f"{label} − first row's (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part.png")
    fig.savefig(part, dpi=120)
    plt.close(fig)
    part.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a training run's --out folder (with snapshots/)")
    parser.add_argument("--start", default=None, help="also score the weights the run started from ('default': shipped)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 25])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--noise", choices=("selection", "evaluation"), default="selection",
                        help="the seed range sampled (default: selection, which evaluate never uses)")
    parser.add_argument("--solver", default="dpmpp-2m")
    parser.add_argument("--runtime", default="stepdrop", help="the conventions sampled under (default: stepdrop)")
    parser.add_argument("--features", default=None)
    parser.add_argument("--snapshots", type=int, nargs="+", default=None,
                        help="score only these steps' snapshots (a costly NFE on the ends of a curve)")
    parser.add_argument("--out", type=Path, default=None, help="JSON of the scores; rows already in it are kept")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the curve")
    args = parser.parse_args(argv)
    runtime_named(args.runtime)  # a bad name fails here, before any scoring
    snapshots = {int(p.stem.removeprefix("step-")): p for p in sorted((args.run / "snapshots").glob("step-*.pt"))}
    if args.snapshots is not None:
        snapshots = {step: p for step, p in snapshots.items() if step in args.snapshots}
    if not snapshots:
        wanted = f" of steps {args.snapshots}" if args.snapshots else ""
        parser.error(f"no snapshots in {args.run / 'snapshots'}{wanted}; train with --snapshot-every N")
    settings = {"solver": args.solver, "nfe": args.nfe, "samples": args.samples, "seeds": args.seeds,
                "noise": args.noise, "runtime": args.runtime, "features": args.features}
    seeds = [selection_seed(s) if args.noise == "selection" else s for s in range(args.seeds)]
    earlier = earlier_rows(args.out, settings)
    kept = {(row["step"], row["weights_hash"]): row for row in earlier}
    rows = [("start", None if args.start == "default" else args.start)] if args.start else []
    rows += [(str(step), str(p)) for step, p in snapshots.items()]
    print(f"{args.solver} on uniform steps under runtime {args.runtime}, {args.samples} samples × {args.noise} seeds "
          f"{seeds[0]}..{seeds[-1]}: mean ± std over seeds, and (Δ) the paired change from the row before")
    print(f"{'step':<8s}" + "".join(f"{'FID NFE ' + str(n):<36s}{'KID NFE ' + str(n):<46s}" for n in args.nfe))
    results: list[dict] = []
    for step, path in rows:
        loaded = load_model(path, device=torch.device("cpu"))  # its weights' hash names the start when it is "default"
        row = kept.get((step, loaded.weights_hash))
        if row is None:
            fid, kid = score(loaded, args.nfe, args.samples, seeds, args.solver, args.runtime, args.features)
            row = {"step": step, "model": path or "default", "weights_hash": loaded.weights_hash, "fid": fid, "kid": kid}
        cells = []
        for nfe in map(str, args.nfe):
            for metric, fmt in (("fid", ".3f"), ("kid", ".5f")):
                mean, std = mean_std(row[metric][nfe])
                change = ""
                if results:
                    delta, delta_std = paired_change(results[-1][metric][nfe], row[metric][nfe])
                    change = f" (Δ {delta:+{fmt}} ± {delta_std:{fmt}})"
                cells.append(f"{mean:{fmt}} ± {std:{fmt}}{change}".ljust(36 if metric == "fid" else 46))
        print(f"{step:<8s}" + "".join(cells), flush=True)
        results.append(row)
        if args.out:  # after every row: a run killed mid-curve keeps what it scored
            scored = {row["step"] for row in results}
            others = [row for row in earlier if row["step"] not in scored]  # steps this run does not score stay
            command = "python bench/training_curve.py " + " ".join(sys.argv[1:] if argv is None else argv)
            write_json(args.out, {"command": command} | settings | {"rows": sorted(results + others, key=step_order)})
    if len(results) > 1:
        flat = is_flat(results[-2], results[-1])
        print(f"flat: {'yes' if flat else 'no'} (the last two rows, {results[-2]['step']} and {results[-1]['step']}, "
              f"{'within' if flat else 'not within'} {FLAT_WITHIN_STD:g} std of their paired change at every NFE, "
              "in proxy-FID and KID)")
    if trend := trend_line(results, args.nfe):
        print(trend)
    if args.plot:
        plot(results, args.nfe, args.plot, f"{args.run}: {args.solver}, uniform steps, runtime {args.runtime}, "
             f"{args.samples} samples × {args.seeds} {args.noise} seeds")
    if args.out:
        print(json.dumps({"wrote": str(args.out)}))


if __name__ == "__main__":
    main()
