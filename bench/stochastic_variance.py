"""Why ancestral rows vary more between seeds than deterministic ones: sampling variance, or a noise defect?

    python bench/stochastic_variance.py [--samples 1000] [--nfe 100] [--ddim-nfe 10] [--batch 256]
                                        [--bootstrap 200] [--compile on] [--out bench/results/stochastic-variance]

Samples the shipped model with the ancestral solver on uniform steps (``evaluate --baselines ddpm``'s row)
while choosing the x_T seed and the solver-noise seed separately (``generate(seed=noise seed, x_T=…)``):

* ``noise``: x_T seed 0, solver-noise seeds 0, 1, 2 — what the solver noise alone moves;
* ``x_T``: solver-noise seed 0, x_T seeds 0, 1, 2 — what the starting noise alone moves;
* ``both``: (0, 0), (1, 1), (2, 2) — what ``evaluate`` varies between its seeds 0, 1, 2;
* ``ddim``: DDIM η = 0 at ``--ddim-nfe``, x_T seeds 0, 1, 2 — a deterministic reference.

Every run reports proxy-FID (``fidelity_metrics``, as ``evaluate``) and the bootstrap std of its proxy-FID
(resampling its own samples with replacement): the spread proxy-FID has at this sample size for independent
samples of that sampler. If an arm's seed-to-seed std matches the runs' bootstrap std, the spread is plain
sampling variance; a noise defect (samples sharing noise) would show as a spread the bootstrap cannot explain.
The first 64 samples of run (0, 0) are also sampled again at batch 16: with per-sample streams they must come
out the same (the batch-size dependence DESIGN.md §6 measured under the old shared stream).

Runs go in an order that gives a 2 × 2 design first; results are rewritten to OUT.json and OUT.md after every
run, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from datetime import datetime

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.utils import get_featuresdict_from_dataset

from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.files import write_json, write_text
from stepdrop_search.generation import generate, initial_noise
from stepdrop_search.loading import load_default_model
from stepdrop_search.objectives.features import load_features
from stepdrop_search.objectives.metrics import UInt8Images, fidelity_metrics, proxy_extractor
from stepdrop_search.policies.kinds import Uniform
from stepdrop_search.runtime import compile_network, keep_freed_memory_for_reuse

#: (solver, x_T seed, noise seed) in the order they run: a 2 × 2 design, the reference, then the third seeds.
RUNS = [("ddpm", 0, 0), ("ddpm", 0, 1), ("ddpm", 1, 0), ("ddpm", 1, 1), ("ddim", 0, 0), ("ddim", 1, 0),
        ("ddim", 2, 0), ("ddpm", 0, 2), ("ddpm", 2, 0), ("ddpm", 2, 2)]
ARMS = {
    "noise (x_T seed 0, noise seeds 0-2)": ("ddpm", [(0, 0), (0, 1), (0, 2)]),
    "x_T (noise seed 0, x_T seeds 0-2)": ("ddpm", [(0, 0), (1, 0), (2, 0)]),
    "both (seeds 0-2, as evaluate)": ("ddpm", [(0, 0), (1, 1), (2, 2)]),
    "ddim reference (x_T seeds 0-2)": ("ddim", [(0, 0), (1, 0), (2, 0)]),
}
CHECK_SAMPLES, CHECK_BATCH = 64, 16


def bootstrap_fid(images: torch.Tensor, features, reference: dict, repeats: int, seed: int) -> list[float]:
    """proxy-FID of ``repeats`` resamples (with replacement) of ``images``, on the features ``fidelity_metrics`` uses."""
    feats = get_featuresdict_from_dataset(UInt8Images(images), proxy_extractor(features, torch.device("cpu")), 500, False,
                                          save_cpu_ram=True, verbose=False)["features"].double()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(repeats):
        pick = torch.from_numpy(rng.integers(0, len(feats), len(feats)))
        out.append(fid_statistics_to_metric(fid_features_to_statistics(feats[pick]), reference, verbose=False)[KEY_METRIC_FID])
    return out


def spread(values: list[float]) -> float | None:
    """Sample std; None below two values."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def report(args, runs: list[dict], check: dict | None, command: str, started: str) -> tuple[dict, str]:
    by_key = {(r["solver"], r["x_T_seed"], r["noise_seed"]): r for r in runs}
    arms = []
    for name, (solver, pairs) in ARMS.items():
        done = [by_key[(solver, x, z)] for x, z in pairs if (solver, x, z) in by_key]
        if not done:
            continue
        fids = [r["fid"] for r in done]
        arms.append({"arm": name, "runs": [[r["x_T_seed"], r["noise_seed"]] for r in done], "fid": fids,
                     "mean": sum(fids) / len(fids), "seed_std": spread(fids), "range": max(fids) - min(fids),
                     "bootstrap_std": math.sqrt(sum(r["bootstrap_std"] ** 2 for r in done) / len(done))})
    payload = {"command": command, "started": started, "machine": f"{platform.node()}, {torch.get_num_threads()} threads",
               "samples": args.samples, "nfe": args.nfe, "ddim_nfe": args.ddim_nfe, "batch": args.batch,
               "bootstrap": args.bootstrap, "runs": runs, "arms": arms, "batch_check": check}
    lines = [f"# Seed-to-seed spread of ancestral sampling (proxy-FID, {args.samples} samples)", "",
             f"`{command}` — started {started}, {payload['machine']}.", "",
             f"Ancestral = uniform (trailing) {args.nfe} steps with the DDPM posterior step; reference = DDIM η = 0 at "
             f"{args.ddim_nfe} steps. Bootstrap std = std of proxy-FID over {args.bootstrap} resamples of a run's own "
             "samples (root mean square over the arm's runs).", "",
             "| arm | runs (x_T seed, noise seed) | proxy-FID per run | mean | seed std | range | bootstrap std |",
             "|---|---|---|---|---|---|---|"]
    for arm in arms:
        lines.append(f"| {arm['arm']} | {', '.join(f'({x}, {z})' for x, z in arm['runs'])} | "
                     f"{', '.join(f'{v:.2f}' for v in arm['fid'])} | {cell(arm['mean'])} | {cell(arm['seed_std'])} | "
                     f"{cell(arm['range'])} | {cell(arm['bootstrap_std'])} |")
    lines += ["", "| solver | x_T seed | noise seed | proxy-FID | bootstrap std | NFE | minutes |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['solver']} | {r['x_T_seed']} | {r['noise_seed']} | {r['fid']:.3f} | {r['bootstrap_std']:.3f} | "
              f"{r['nfe']:.0f} | {r['seconds'] / 60:.1f} |" for r in runs]
    if check:
        lines += ["", f"Batch-size check: the first {check['samples']} samples of run (0, 0) sampled again at batch "
                      f"{check['batch']} differ from the batch-{args.batch} run by at most {check['max_abs_diff']:.2e}."]
    return payload, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--nfe", type=int, default=100)
    parser.add_argument("--ddim-nfe", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--compile", choices=("on", "off"), default="on")
    parser.add_argument("--out", default="bench/results/stochastic-variance")
    args = parser.parse_args(argv)
    if args.samples < CHECK_SAMPLES or args.bootstrap < 2:
        parser.error(f"--samples must be ≥ {CHECK_SAMPLES} and --bootstrap ≥ 2")

    command = " ".join(["python bench/stochastic_variance.py", *(sys.argv[1:] if argv is None else argv)])
    started = datetime.now().isoformat(timespec="minutes")
    keep_freed_memory_for_reuse()
    loaded = load_default_model()
    features = load_features(None, dataset=loaded.dataset)
    reference = {"mu": features.reference["mu"].double().numpy(), "sigma": features.reference["sigma"].double().numpy()}
    model = compile_network(loaded.model, args.batch, print) if args.compile == "on" else loaded.model
    cfg = loaded.config
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    policies = {"ddpm": Uniform(nfe=args.nfe, schedule=loaded.schedule), "ddim": Uniform(nfe=args.ddim_nfe, schedule=loaded.schedule)}
    runs, check = [], None
    for solver, x_seed, noise_seed in RUNS:
        tick = time.perf_counter()
        x_T = initial_noise(args.samples, shape, x_seed)
        result = generate(model, loaded.schedule, policies[solver], SolverSpec(solver), n=args.samples, seed=noise_seed,
                          batch_size=args.batch, x_T=x_T)
        fid = fidelity_metrics(result.x0, features, {"fid"}, device=torch.device("cpu"), seed=x_seed)["fid"]
        boot = bootstrap_fid(result.x0, features, reference, args.bootstrap, seed=len(runs))
        runs.append({"solver": solver, "x_T_seed": x_seed, "noise_seed": noise_seed, "fid": fid, "bootstrap_std": spread(boot),
                     "bootstrap_mean": sum(boot) / len(boot), "nfe": float(result.nfe.float().mean()),
                     "seconds": time.perf_counter() - tick})
        print(f"{solver} x_T seed {x_seed} noise seed {noise_seed}: proxy-FID {fid:.3f} (bootstrap std {spread(boot):.3f}), "
              f"{runs[-1]['seconds'] / 60:.1f} min", flush=True)
        if check is None and solver == "ddpm":
            again = generate(model, loaded.schedule, policies[solver], SolverSpec(solver), n=CHECK_SAMPLES, seed=noise_seed,
                             batch_size=CHECK_BATCH, x_T=x_T[:CHECK_SAMPLES])
            check = {"samples": CHECK_SAMPLES, "batch": CHECK_BATCH,
                     "max_abs_diff": float((again.x0 - result.x0[:CHECK_SAMPLES]).abs().max())}
            print(f"batch-size check: max |Δx0| = {check['max_abs_diff']:.2e}", flush=True)
        payload, markdown = report(args, runs, check, command, started)
        write_json(f"{args.out}.json", payload)
        write_text(f"{args.out}.md", markdown)


if __name__ == "__main__":
    main()
