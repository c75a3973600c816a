"""The pool's analytic schedules: every solver × {uniform trailing, log-SNR, Karras, quadratic} at every pool NFE,
each solver on the grid that spends that NFE; on a rectified flow also the time shifts its tools offer (uniform t,
and the shifts SD3 and Flux users pick), so that the export must beat the best fixed shift; on a class-conditional
model each also with constant classifier-free guidance (:mod:`~stepdrop_search.search.guided`), so that it must beat
the best constant guidance."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepdrop_search.diffusion.guidance import Guidance
from stepdrop_search.diffusion.solvers import spec_for_nfe
from stepdrop_search.errors import UserError
from stepdrop_search.policies.kinds import Karras, LogSNR, Quadratic, Shift, Uniform
from stepdrop_search.search.candidates import Candidate
from stepdrop_search.search.guided import POOL_SCALES

if TYPE_CHECKING:
    from stepdrop_search.search.run import Run

SCHEDULES = {"uniform": Uniform, "logsnr": LogSNR, "karras": Karras, "quadratic": Quadratic}
#: the time shifts a flow's pool holds, with the tools' trailing spacing (1: uniform t; 3: SD3's), and those it also
#: holds with diffusers' linspace one
FLOW_SHIFTS = (1.0, 2.0, 3.0, 6.0)
FLOW_LINSPACE_SHIFTS = (1.0, 3.0)


def schedules_for(schedule) -> dict:
    """Label → policy factory (nfe=…) of the pool's analytic rows for a model with this noise schedule."""
    rows = {label: (lambda steps, kind=kind: kind(nfe=steps, schedule=schedule)) for label, kind in SCHEDULES.items()}
    if schedule.is_flow:
        rows |= {f"shift{shift:g}": (lambda steps, shift=shift: Shift(nfe=steps, shift=shift, schedule=schedule))
                 for shift in FLOW_SHIFTS}
        rows |= {f"shift{shift:g}-linspace": (lambda steps, shift=shift: Shift(nfe=steps, shift=shift, spacing="linspace",
                                                                               schedule=schedule))
                 for shift in FLOW_LINSPACE_SHIFTS}
    return rows


class AnalyticSchedules:
    name = "analytic"

    def candidates(self, run: Run, seconds: float | None = None) -> list[Candidate]:
        """Every row of the module docstring; for a class-conditional model each also with constant guidance at the
        :data:`~stepdrop_search.search.guided.POOL_SCALES` on the grid half the NFE buys (every step evaluated twice)."""
        out = []
        rows = schedules_for(run.loaded.schedule)
        for spec, steps, nfe in run.grids():
            for label, make in rows.items():
                try:
                    policy = make(steps)
                except UserError:
                    continue  # the schedule cannot place that many distinct steps
                out.append(Candidate(run.row_name(spec.name, label, nfe), run.document(policy, spec), "pool", nfe_budget=nfe))
            if not run.guided:
                continue
            try:
                half_spec, half = spec_for_nfe(spec.name, nfe // 2, runtime=run.runtime)
            except UserError:
                continue  # too few evaluations to guide every step
            for label, make in rows.items():
                try:
                    policy = make(half)
                except UserError:
                    continue
                out += [Candidate(run.row_name(spec.name, f"{label}+cfg{scale:g}", nfe),
                                  run.document(policy, half_spec, guidance=Guidance(scale)), "pool", nfe_budget=nfe)
                        for scale in POOL_SCALES]
        return out
