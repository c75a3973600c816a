"""The pool's analytic schedules: every solver × {uniform trailing, log-SNR, Karras, quadratic} at every pool NFE,
each solver on the grid that spends that NFE."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepdrop_search.errors import UserError
from stepdrop_search.policies.kinds import Karras, LogSNR, Quadratic, Uniform
from stepdrop_search.search.candidates import Candidate

if TYPE_CHECKING:
    from stepdrop_search.search.run import Run

SCHEDULES = {"uniform": Uniform, "logsnr": LogSNR, "karras": Karras, "quadratic": Quadratic}


class AnalyticSchedules:
    name = "analytic"

    def candidates(self, run: Run, seconds: float | None = None) -> list[Candidate]:
        out = []
        for spec, steps, nfe in run.grids():
            for label, kind in SCHEDULES.items():
                try:
                    policy = kind(nfe=steps, schedule=run.loaded.schedule)
                except UserError:
                    continue  # the schedule cannot place that many distinct steps
                out.append(Candidate(run.row_name(spec.name, label, nfe), run.document(policy, spec), "pool", nfe_budget=nfe))
        return out
