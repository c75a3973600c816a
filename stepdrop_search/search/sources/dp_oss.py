"""DP-OSS schedules: dynamic programming over a teacher's trajectories, each edge priced by a real solver step
(:func:`~stepdrop_search.search.dp.oss_schedule`).

DP-OSS steps with each solver's one-step form (``Solver.one_step_form``), so one schedule per grid size and form; it
runs on the first ``dp_oss_samples`` teacher trajectories (one NFE per reachable node per level per sample). Each
size costs thousands of evaluations, so it is built at the run's NFE only (the cheaper NFEs get DP-GITS, whose
schedules all come from one cost matrix)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.policies.kinds import Explicit
from stepdrop_search.search.candidates import Candidate
from stepdrop_search.search.dp import oss_schedule
from stepdrop_search.search.sources.dp_gits import by_grid_size

if TYPE_CHECKING:
    from stepdrop_search.search.run import Run

#: A DP-OSS whose one-step form evaluates the network on every edge (Heun's) runs only when that costs at most this
#: many evaluations (levels × N²/2 edges × samples); otherwise that solver gets DDIM's schedule, and the log says so.
OSS_EDGE_EVALUATIONS = 20000


def plan(run: Run) -> dict[tuple[int, str], list[tuple[SolverSpec, int]]]:
    """The DP-OSS runs the run needs: (grid size, one-step form) → the (pool solver, NFE) pairs its schedule serves.
    A form that would cost more than :data:`OSS_EDGE_EVALUATIONS` falls back to DDIM's."""
    dp, runs = run.settings.search.dp, {}
    samples = min(dp.oss_samples, dp.samples)
    for steps, specs in by_grid_size(run, cheaper=False).items():
        for spec, nfe in specs:
            form = spec.solver.one_step_form
            if form != "ddim" and steps * dp.grid ** 2 // 2 * samples > OSS_EDGE_EVALUATIONS:
                form = "ddim"
            runs.setdefault((steps, form), []).append((spec, nfe))
    return runs


def forwards(run: Run) -> float:
    """Sample-forwards DP-OSS will take, estimated before it runs: per level, every reachable grid node for each
    sample with DDIM's one-step form (one evaluation per node), every edge with a form that evaluates per edge."""
    dp = run.settings.search.dp
    samples = min(dp.oss_samples, dp.samples)
    return sum(steps * dp.grid * (1 if form == "ddim" else dp.grid // 2) * samples for steps, form in plan(run))


class DPOss:
    name = "dp-oss"

    def candidates(self, run: Run, seconds: float | None = None) -> list[Candidate]:
        dp, out, runs = run.settings.search.dp, [], plan(run)
        trajectory = run.trajectory().subset(min(dp.oss_samples, dp.samples)) if runs else None
        for (steps, form), members in runs.items():
            fallback = [spec.name for spec, _ in members if spec.solver.one_step_form != form]
            if fallback:
                run.log(f"dp-oss: {', '.join(fallback)}'s one-step form would cost more than {OSS_EDGE_EVALUATIONS} "
                        "evaluations on this grid; it gets DDIM's schedule (a smaller --dp-grid runs its own)")
            res = oss_schedule(run.loaded, trajectory, steps, solver=form, runtime=run.runtime)
            run.log(f"dp-oss ({form} steps) on {steps} steps ({res.nfe_spent} NFE): "
                    f"{[round(float(t), 2) for t in res.steps]}")
            policy = Explicit(steps=tuple(res.steps.tolist()), schedule=run.loaded.schedule)
            out += [Candidate(run.row_name(spec.name, "dp-oss", nfe), run.document(policy, spec), "pool",
                              nfe_budget=nfe) for spec, nfe in members]
        return out
