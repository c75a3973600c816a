"""Why ancestral rows vary more between seeds than deterministic ones: sampling variance, or a noise defect?

    python bench/stochastic_variance.py [--model M] [--samples 1000] [--nfe 100] [--ddim-nfe 10] [--seeds 8] [--batch 256]
                                        [--bootstrap 200] [--compile on] [--out bench/results/stochastic-variance]

Samples the model (default: the shipped one) with the ancestral solver on uniform steps (``evaluate --baselines
ddpm``'s row), choosing the x_T seed and the solver-noise seed separately (``generate(seed=noise seed, x_T=…)``), in arms:

* ``noise``: x_T seed 0, noise seeds 0, 1, 2 — what the solver noise alone moves;
* ``x_T``: noise seed 0, x_T seeds 0, 1, 2 — what the starting noise alone moves;
* ``both``: (s, s) for s < ``--seeds`` — what ``evaluate`` varies between its seeds;
* ``ddim``: DDIM η = 0 at ``--ddim-nfe`` steps, x_T seeds s < ``--seeds`` — the deterministic reference.

Per run: proxy-FID (``fidelity_metrics``, as ``evaluate``) and its bootstrap std over resamples of the run's
own samples. Two checks for a noise defect, i.e. samples of one run sharing something other runs do not:

* mixing: the ``both`` runs' samples are re-dealt into ``--seeds`` sets of the same size, each taking every
  ``--seeds``-th sample of every run. Independent samples make these sets exchangeable with the runs, so their
  proxy-FIDs spread alike; a run-level effect would show as runs spreading more than mixed sets. This needs
  runs independent of each other: true of ``both`` and ``ddim`` (no seed shared), of ``noise`` only because
  ancestral sampling forgets x_T, and not of ``x_T``, whose runs share the noise and hence nearly all of
  their samples (its mixed sets re-use about a third of one set three times; the column is shown, not meant);
* memory of x_T: mean squared distance between the samples of two runs that share the noise seed, two that
  share x_T, and unrelated samples; it says what the ``x_T`` and ``noise`` arms are really comparing.

The first 64 samples of run (0, 0) are also sampled again at batch 16: with per-sample streams they come out the
same (the batch-size dependence DESIGN.md §6 measured under the old shared stream is gone by construction).
Results are rewritten to OUT.partial.json and OUT.partial.md after every run, so an interrupted run keeps what it
measured; the last run writes OUT.json and OUT.md and removes them (a script that keeps finished results, as
bench/reproduce.sh, must not take a partial file for a finished one).
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.utils import get_featuresdict_from_dataset

from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.files import write_json, write_text
from stepdrop_search.generation import generate, initial_noise
from stepdrop_search.loading import load_model
from stepdrop_search.objectives.features import load_features_for_model
from stepdrop_search.objectives.metrics import UInt8Images, fidelity_metrics, proxy_extractor
from stepdrop_search.policies.kinds import Uniform
from stepdrop_search.runtime import compile_network, keep_freed_memory_for_reuse

CHECK_SAMPLES, CHECK_BATCH = 64, 16
CPU = torch.device("cpu")


def arms(seeds: int) -> dict[str, tuple[str, list[tuple[int, int]]]]:
    """arm name → (solver, [(x_T seed, noise seed), …])."""
    return {
        "noise (x_T seed 0, noise seeds 0-2)": ("ddpm", [(0, 0), (0, 1), (0, 2)]),
        "x_T (noise seed 0, x_T seeds 0-2)": ("ddpm", [(0, 0), (1, 0), (2, 0)]),
        f"both (seeds 0-{seeds - 1}, as evaluate)": ("ddpm", [(s, s) for s in range(seeds)]),
        f"ddim reference (x_T seeds 0-{seeds - 1})": ("ddim", [(s, 0) for s in range(seeds)]),
    }


def run_order(seeds: int) -> list[tuple[str, int, int]]:
    """A 2 × 2 design first, then the cheap reference, then the remaining runs; each (solver, x_T, noise) once."""
    first = [("ddpm", 0, 0), ("ddpm", 0, 1), ("ddpm", 1, 0), ("ddpm", 1, 1)]
    rest = [("ddim", x, z) for x, z in arms(seeds)[f"ddim reference (x_T seeds 0-{seeds - 1})"][1]]
    rest += [(solver, x, z) for solver, pairs in arms(seeds).values() if solver == "ddpm" for x, z in pairs]
    return list(dict.fromkeys(first + rest))


def proxy_features(images: torch.Tensor, features) -> torch.Tensor:
    """The features ``fidelity_metrics`` computes proxy-FID from."""
    return get_featuresdict_from_dataset(UInt8Images(images), proxy_extractor(features, CPU), 500, False,
                                         save_cpu_ram=True, verbose=False)["features"].double()


def fid_of(feats: torch.Tensor, reference: dict) -> float:
    return float(fid_statistics_to_metric(fid_features_to_statistics(feats), reference, verbose=False)[KEY_METRIC_FID])


def std(values: list[float]) -> float | None:
    """Sample std; None below two values."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def mixed_fids(feats: list[torch.Tensor], reference: dict) -> list[float]:
    """proxy-FID of the sets that deal every len(feats)-th sample of every run into one set."""
    k = len(feats)
    return [fid_of(torch.cat([f[j::k] for f in feats]), reference) for j in range(k)]


def msd(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over samples of the per-pixel mean squared distance."""
    return float((a - b).pow(2).flatten(1).mean(1).mean())


def summarise(args, runs: list[dict], feats: dict, x0: dict, reference: dict, check: dict | None) -> tuple[dict, list[str]]:
    by_key = {(r["solver"], r["x_T_seed"], r["noise_seed"]): r for r in runs}
    table, lines = [], []
    for name, (solver, pairs) in arms(args.seeds).items():
        done = [by_key[(solver, x, z)] for x, z in pairs if (solver, x, z) in by_key]
        if not done:
            continue
        fids = [r["fid"] for r in done]
        arm = {"arm": name, "runs": [[r["x_T_seed"], r["noise_seed"]] for r in done], "fid": fids,
               "mean": sum(fids) / len(fids), "seed_std": std(fids), "range": max(fids) - min(fids),
               "bootstrap_std": math.sqrt(sum(r["bootstrap_std"] ** 2 for r in done) / len(done))}
        if len(done) == len(pairs):  # the mixing check, on complete arms
            arm["mixed_fid"] = mixed_fids([feats[(solver, x, z)] for x, z in pairs], reference)
            arm["mixed_std"] = std(arm["mixed_fid"])
        table.append(arm)
    lines += ["| arm | runs | proxy-FID per run | mean | seed std | range | bootstrap std | mixed sets' std |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {a['arm']} | {len(a['runs'])} | {', '.join(f'{v:.2f}' for v in a['fid'])} | {cell(a['mean'])} | "
              f"{cell(a['seed_std'])} | {cell(a['range'])} | {cell(a['bootstrap_std'])} | {cell(a.get('mixed_std'))} |"
              for a in table]
    memory = None
    if all(key in x0 for key in ((0, 0), (1, 0), (0, 1))):
        memory = {"same_noise_other_x_T": msd(x0[(0, 0)], x0[(1, 0)]), "same_x_T_other_noise": msd(x0[(0, 0)], x0[(0, 1)]),
                  "unrelated_samples": msd(x0[(0, 0)], x0[(0, 0)].roll(1, 0))}
        lines += ["", "Mean squared distance between the ancestral samples of two runs, sample by sample: same noise seed, "
                      f"other x_T {memory['same_noise_other_x_T']:.4f}; same x_T, other noise seed "
                      f"{memory['same_x_T_other_noise']:.4f}; unrelated samples {memory['unrelated_samples']:.4f}."]
    if check:
        lines += ["", f"Batch-size check: the first {check['samples']} samples of run (0, 0) sampled again at batch "
                      f"{check['batch']} differ from the batch-{args.batch} run by at most {check['max_abs_diff']:.2e}."]
    return {"arms": table, "memory_of_x_T": memory, "batch_check": check}, lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint, weights file or diffusers folder (default: shipped)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--nfe", type=int, default=100)
    parser.add_argument("--ddim-nfe", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--compile", choices=("on", "off"), default="on")
    parser.add_argument("--out", default="bench/results/stochastic-variance")
    args = parser.parse_args(argv)
    if args.samples < CHECK_SAMPLES or args.bootstrap < 2 or args.seeds < 3:
        parser.error(f"--samples must be ≥ {CHECK_SAMPLES}, --bootstrap ≥ 2 and --seeds ≥ 3")

    command = " ".join(["python bench/stochastic_variance.py", *(sys.argv[1:] if argv is None else argv)])
    started = datetime.now().isoformat(timespec="minutes")
    keep_freed_memory_for_reuse()
    loaded = load_model(args.model)
    features = load_features_for_model(None, loaded.config, loaded.dataset)
    reference = {"mu": features.reference["mu"].double().numpy(), "sigma": features.reference["sigma"].double().numpy()}
    model = compile_network(loaded.model, args.batch, print) if args.compile == "on" else loaded.model
    cfg = loaded.config
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    policies = {"ddpm": Uniform(nfe=args.nfe, schedule=loaded.schedule), "ddim": Uniform(nfe=args.ddim_nfe, schedule=loaded.schedule)}
    runs, feats, x0, check = [], {}, {}, None
    order = run_order(args.seeds)
    for solver, x_seed, noise_seed in order:
        tick = time.perf_counter()
        x_T = initial_noise(args.samples, shape, x_seed)
        result = generate(model, loaded.schedule, policies[solver], SolverSpec(solver), n=args.samples, seed=noise_seed,
                          batch_size=args.batch, x_T=x_T)
        fid = fidelity_metrics(result.x0, features, {"fid"}, device=CPU, seed=x_seed)["fid"]
        key = (solver, x_seed, noise_seed)
        feats[key] = proxy_features(result.x0, features)
        rng = np.random.default_rng(len(runs))
        boot = [fid_of(feats[key][torch.from_numpy(rng.integers(0, args.samples, args.samples))], reference)
                for _ in range(args.bootstrap)]
        if solver == "ddpm" and (x_seed, noise_seed) in ((0, 0), (1, 0), (0, 1)):
            x0[(x_seed, noise_seed)] = result.x0
        runs.append({"solver": solver, "x_T_seed": x_seed, "noise_seed": noise_seed, "fid": fid, "bootstrap_std": std(boot),
                     "nfe": float(result.nfe.float().mean()), "seconds": time.perf_counter() - tick})
        print(f"{solver} x_T seed {x_seed} noise seed {noise_seed}: proxy-FID {fid:.3f} (bootstrap std {std(boot):.3f}), "
              f"{runs[-1]['seconds'] / 60:.1f} min", flush=True)
        if check is None and solver == "ddpm":
            again = generate(model, loaded.schedule, policies[solver], SolverSpec(solver), n=CHECK_SAMPLES, seed=noise_seed,
                             batch_size=CHECK_BATCH, x_T=x_T[:CHECK_SAMPLES])
            check = {"samples": CHECK_SAMPLES, "batch": CHECK_BATCH,
                     "max_abs_diff": float((again.x0 - result.x0[:CHECK_SAMPLES]).abs().max())}
        summary, lines = summarise(args, runs, feats, x0, reference, check)
        machine = f"{platform.node()}, {torch.get_num_threads()} threads, model {'compiled' if args.compile == 'on' else 'eager'}"
        stem = args.out if len(runs) == len(order) else f"{args.out}.partial"
        write_json(f"{stem}.json", {"command": command, "started": started, "machine": machine, **vars(args),
                                        "weights_hash": loaded.weights_hash, "runs": runs, **summary})
        header = [f"# Seed-to-seed spread of ancestral sampling (proxy-FID, {args.samples} samples per run)", "",
                  f"`{command}` — started {started}, {machine}, model {loaded.weights_hash}.", "",
                  f"Ancestral = uniform (trailing) {args.nfe} steps with the DDPM posterior step; reference = DDIM η = 0 "
                  f"at {args.ddim_nfe} steps. Bootstrap std: std of proxy-FID over {args.bootstrap} resamples of a run's "
                  "own samples (root mean square over the arm's runs). Mixed sets: the arm's samples re-dealt across its "
                  "runs (see the script's docstring).", ""]
        rows = ["", "| solver | x_T seed | noise seed | proxy-FID | bootstrap std | NFE | minutes |", "|---|---|---|---|---|---|---|"]
        rows += [f"| {r['solver']} | {r['x_T_seed']} | {r['noise_seed']} | {r['fid']:.3f} | {r['bootstrap_std']:.3f} | "
                 f"{r['nfe']:.0f} | {r['seconds'] / 60:.1f} |" for r in runs]
        write_text(f"{stem}.md", "\n".join(header + lines + rows) + "\n")
    for suffix in (".json", ".md"):
        Path(f"{args.out}.partial{suffix}").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
