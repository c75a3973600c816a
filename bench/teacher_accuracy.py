"""How close a cheap teacher's x0 lands to DDIM-1000's from the same x_T (why `optimize` uses dpmpp-2m-200).

    python bench/teacher_accuracy.py --samples 64 --seed 5 | tee bench/results/teacher-accuracy.txt

Prints, per teacher <solver>-<NFE>, the mean squared distance (pixels in [−1, 1]) of its x0 to DDIM-1000's and its
cost in network evaluations per sample. Deterministic teachers only (a stochastic one does not follow the ODE).
"""

from __future__ import annotations

import argparse

from stepdrop_search.diffusion.solvers import SolverSpec, spec_for_nfe
from stepdrop_search.generation import generate
from stepdrop_search.loading import load_model
from stepdrop_search.objectives.residual import residual
from stepdrop_search.policies.kinds import Uniform
from stepdrop_search.runtime import keep_freed_memory_for_reuse

TEACHERS = ("dpmpp-3m-50", "dpmpp-3m-100", "ipndm-100", "heun-101", "heun-199", "dpmpp-2m-100", "dpmpp-2m-200", "ddim-250")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--teachers", nargs="+", default=list(TEACHERS), help="<solver>-<NFE> each")
    args = parser.parse_args(argv)
    keep_freed_memory_for_reuse()
    loaded = load_model(args.model)

    def x0(solver: str, nfe: int):
        spec, steps = spec_for_nfe(solver, nfe)
        return generate(loaded.model, loaded.schedule, Uniform(nfe=steps, schedule=loaded.schedule), spec,
                        n=args.samples, seed=args.seed).x0

    reference = generate(loaded.model, loaded.schedule, Uniform(nfe=loaded.schedule.T, schedule=loaded.schedule),
                         SolverSpec("ddim"), n=args.samples, seed=args.seed).x0
    print(f"model {loaded.source}, {args.samples} samples of seed {args.seed}, against ddim-{loaded.schedule.T}")
    print(f"{'teacher':<16} {'NFE':>5} {'MSE to DDIM-1000':>18}")
    for name in args.teachers:
        solver, _, nfe = name.rpartition("-")
        distance = float(residual(x0(solver, int(nfe)), reference).mean())
        print(f"{name:<16} {int(nfe):>5} {distance:>18.2e}")


if __name__ == "__main__":
    main()
