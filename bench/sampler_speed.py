"""Sampler speed: images/s and the share of wall time spent outside the network forward.

    python bench/sampler_speed.py [--batch 256] [--nfe 10 50] [--repeats 3] [--device auto] [--diffusers]
                                  [--solvers ddim dpmpp-2m]

Runs the shipped model (or --model, any noise schedule) warm, without file I/O, with the process allocator
set as the command-line tool sets it (``keep_freed_memory_for_reuse``), so the figures are the CLI's.
``--solvers ddpm`` (or ddim with ``--eta`` > 0) times the paths that draw solver noise. The network's own
time is measured inside a wrapper around the forward (perf_counter on CPU; CUDA events on GPU, read once
at the end), so "outside" = 1 − network time / wall time covers the loop, solver arithmetic, gathers, NFE
counting and drawing random numbers.
Targets (issue 3): ≤ 1% for static policies, ≤ 3% for stochastic/adaptive ones. ``--diffusers`` adds
rows for the same model, batch and NFE stepped by diffusers' own DDIM and DPM-Solver++ scheduler loops
(their default spacing), so the two loops' overhead is compared in one run.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from stepdrop_search.devices import resolve_device
from stepdrop_search.diffusion.solvers import SOLVERS, SolverSpec, eta_solvers, spec_for_nfe
from stepdrop_search.errors import UserError
from stepdrop_search.generation import generate
from stepdrop_search.loading import load_model
from stepdrop_search.policies.kinds import Adaptive, StepDrop, Uniform
from stepdrop_search.runtime import keep_freed_memory_for_reuse


class TimedModel(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.config = model, model.config
        self.cuda = next(model.parameters()).is_cuda
        self.reset()

    def reset(self) -> None:
        self.seconds, self.events = 0.0, []

    def forward(self, x, t):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.model(x, t)
            end.record()
            self.events.append((start, end))
            return out
        tick = time.perf_counter()
        out = self.model(x, t)
        self.seconds += time.perf_counter() - tick
        return out

    def network_seconds(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in self.events) / 1000
        return self.seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--solvers", nargs="+", default=["ddim", "dpmpp-2m"], choices=SOLVERS)
    parser.add_argument("--eta", type=float, default=None,
                        help="η of the solvers that have one (default: each solver's own; > 0 draws solver noise)")
    parser.add_argument("--diffusers", action="store_true", help="also time diffusers' scheduler loops")
    args = parser.parse_args(argv)

    try:  # checked before the model loads; --nfe counts evaluations, so each solver gets its own grid size
        for name in args.solvers:
            SolverSpec(name, args.eta if name in eta_solvers() else None)
    except UserError as error:
        parser.error(str(error))

    keep_freed_memory_for_reuse()
    device = resolve_device(args.device)
    loaded = load_model(args.model, device=device)
    timed = TimedModel(loaded.model)
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch}, model {loaded.source}")
    print(f"{'policy':<10} {'solver':<12} {'NFE':>5} {'measured NFE':>13} {'img/s':>8} {'outside net':>12}")
    timed_loaded = replace(loaded, model=timed)
    for nfe in args.nfe:
        rows = []
        for kind in (Uniform, StepDrop, Adaptive):
            for name in args.solvers:
                solver, steps = spec_for_nfe(name, nfe, args.eta if name in eta_solvers() else None)
                policy = kind(nfe=steps, schedule=loaded.schedule)
                rows.append((policy.kind, name, lambda policy=policy, solver=solver: generate(
                    timed, loaded.schedule, policy, solver, n=args.batch, batch_size=args.batch, seed=0)))
        if args.diffusers:
            from stepdrop_search.interop import diffusers_sample

            rows += [("diffusers", name, lambda name=name, nfe=nfe: diffusers_sample(
                        timed_loaded, name, n=args.batch, nfe=nfe, batch_size=args.batch))
                     for name in ("ddim", "dpm-solver-multistep")]
        for kind, solver, run in rows:
            run()  # warm-up
            walls, outside, nfes = [], [], []
            for _ in range(args.repeats):
                timed.reset()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                tick = time.perf_counter()
                result = run()
                wall = time.perf_counter() - tick
                walls.append(wall)
                outside.append(1 - timed.network_seconds() / wall)
                nfes.append(result.nfe.float().mean().item())
            best = min(range(args.repeats), key=lambda i: walls[i])
            print(f"{kind:<10} {solver[:12]:<12} {nfe:>5} {nfes[best]:>13.2f} {args.batch / walls[best]:>8.1f} "
                  f"{100 * sorted(outside)[len(outside) // 2]:>11.2f}%")


if __name__ == "__main__":
    main()
