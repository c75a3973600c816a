"""DP-GITS schedules: dynamic programming over a teacher's trajectories with GITS's cost
(:func:`~stepdrop_search.search.dp.gits_schedule`).

GITS prices edges with one Euler step whatever the solver, so one schedule per grid size serves every pool solver of
that size."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.policies.kinds import Explicit
from stepdrop_search.search.candidates import Candidate
from stepdrop_search.search.dp import gits_schedule

if TYPE_CHECKING:
    from stepdrop_search.search.run import Run


def by_grid_size(run: Run, cheaper: bool = True) -> dict[int, list[tuple[SolverSpec, int]]]:
    """(pool solver, NFE) pairs by the grid size they need, for the sizes the DP teacher's grid can hold (at the run's
    NFE only, without ``cheaper``)."""
    sizes: dict[int, list[tuple[SolverSpec, int]]] = {}
    for spec, steps, nfe in run.grids():
        if steps <= run.settings.search.dp.grid and (cheaper or nfe == run.settings.search.nfe):
            sizes.setdefault(steps, []).append((spec, nfe))
    return dict(sorted(sizes.items()))


class DPGits:
    name = "dp-gits"

    def candidates(self, run: Run, seconds: float | None = None) -> list[Candidate]:
        dp, out = run.settings.search.dp, []
        for steps, specs in by_grid_size(run).items():
            res = gits_schedule(run.trajectory(), steps, cost=dp.gits_cost, gamma=dp.gits_gamma)
            run.log(f"dp-gits on {steps} steps ({res.nfe_spent} NFE): {[round(float(t), 2) for t in res.steps]}")
            policy = Explicit(steps=tuple(res.steps.tolist()), schedule=run.loaded.schedule)
            out += [Candidate(run.row_name(spec.name, "dp-gits", nfe), run.document(policy, spec), "pool", nfe_budget=nfe)
                    for spec, nfe in specs]
        return out
