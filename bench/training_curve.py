"""Proxy-FID of a training run's snapshots at fixed samplers: is the model still improving?

A run trained with ``--snapshot-every N`` keeps its EMA weights every N steps in ``RUN/snapshots/``. This scores each
snapshot (and, with ``--start MODEL``, the weights it started from) with DPM-Solver++(2M) on uniform steps at each
``--nfe``, on the same x_T (evaluation seeds) for every snapshot, and prints one row per snapshot; ``--out`` also
writes the numbers as JSON (what the model card and README's curve are made from).

    python bench/training_curve.py runs/default-xs-long --start default --nfe 25 100 --samples 1000 --seeds 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from stepdrop_search.diffusion.solvers import spec_for_nfe
from stepdrop_search.files import write_json
from stepdrop_search.generation import generate
from stepdrop_search.loading import load_model
from stepdrop_search.objectives.features import load_features_for_model
from stepdrop_search.objectives.metrics import fid_of_features, proxy_features
from stepdrop_search.policies.kinds import Uniform


def score(model_path: str | None, nfes: list[int], samples: int, seeds: int, solver: str,
          features: str | None) -> tuple[dict, str]:
    """Proxy-FID per NFE and seed, and the weights' hash (which names the start when it is "the shipped model")."""
    loaded = load_model(model_path, device=torch.device("cpu"))
    feats = load_features_for_model(features, loaded.config, loaded.dataset, device=torch.device("cpu"))
    out = {}
    for nfe in nfes:
        spec, steps = spec_for_nfe(solver, nfe)
        policy = Uniform(nfe=steps, schedule=loaded.schedule)
        values = [fid_of_features(proxy_features(generate(loaded.model, loaded.schedule, policy, spec, n=samples,
                                                          seed=seed).x0, feats, device=torch.device("cpu"))[0], feats)
                  for seed in range(seeds)]
        out[str(nfe)] = values
    return out, loaded.weights_hash


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a training run's --out folder (with snapshots/)")
    parser.add_argument("--start", default=None, help="also score the weights the run started from ('default': shipped)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[25, 100])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--solver", default="dpmpp-2m")
    parser.add_argument("--features", default=None)
    parser.add_argument("--snapshots", type=int, nargs="+", default=None,
                        help="score only these steps' snapshots (a costly NFE on the ends of a curve)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    snapshots = {int(p.stem.removeprefix("step-")): p for p in sorted((args.run / "snapshots").glob("step-*.pt"))}
    if args.snapshots is not None:
        snapshots = {step: p for step, p in snapshots.items() if step in args.snapshots}
    if not snapshots:
        wanted = f" of steps {args.snapshots}" if args.snapshots else ""
        parser.error(f"no snapshots in {args.run / 'snapshots'}{wanted}; train with --snapshot-every N")
    rows = [("start", None if args.start == "default" else args.start)] if args.start else []
    rows += [(str(step), str(p)) for step, p in snapshots.items()]
    print(f"proxy-FID, {args.solver} on uniform steps, {args.samples} samples × evaluation seeds 0..{args.seeds - 1} "
          "(mean over seeds)")
    print("step      " + "".join(f"NFE {n:<8d}" for n in args.nfe))
    results = []
    for step, path in rows:
        values, weights_hash = score(path, args.nfe, args.samples, args.seeds, args.solver, args.features)
        results.append({"step": step, "model": path or "default", "weights_hash": weights_hash, "fid": values})
        print(f"{step:<10s}" + "".join(f"{sum(v) / len(v):<12.3f}" for v in values.values()), flush=True)
    if args.out:
        command = "python bench/training_curve.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_json(args.out, {"command": command, "solver": args.solver,
                              "samples": args.samples, "seeds": args.seeds, "rows": results})
        print(json.dumps({"wrote": str(args.out)}))


if __name__ == "__main__":
    main()
