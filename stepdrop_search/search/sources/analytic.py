"""The pool's analytic schedules: every solver × {uniform trailing, log-SNR, Karras, quadratic} at every pool NFE,
each solver on the grid that spends that NFE; on a rectified flow also the time shifts its tools offer (uniform t,
and the shifts SD3 and Flux users pick), so that the export must beat the best fixed shift; on a class-conditional
model each also with constant classifier-free guidance and with the published guidance interval
(:mod:`~stepdrop_search.search.guided`), so that it must beat the best constant guidance and the interval a user would
try first."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepdrop_search.diffusion.guidance import Guidance
from stepdrop_search.errors import UserError
from stepdrop_search.generation import largest_within
from stepdrop_search.policies.kinds import Karras, LogSNR, Quadratic, Shift, Uniform
from stepdrop_search.search.candidates import Candidate
from stepdrop_search.search.guided import guides_some_steps, pool_guidances

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


def guided_document(run: Run, make, steps: int, spec, guidance: Guidance):
    """``make(steps)`` under ``spec`` and ``guidance``, or None where the schedule cannot place that many steps."""
    try:
        policy = make(steps)
    except UserError:
        return None
    return run.document(policy, spec, guidance=guidance)


class AnalyticSchedules:
    name = "analytic"

    def candidates(self, run: Run, seconds: float | None = None) -> list[Candidate]:
        """Every row of the module docstring; for a class-conditional model each also under every
        :func:`~stepdrop_search.search.guided.pool_guidances` on the largest grid the NFE buys, guided steps counted
        twice (an interval row that guides none or all of its steps is left out: the pool has that row already; a row
        that a larger pool NFE repeats is dropped where the pool is built, ``optimize.build_pool``)."""
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
            for label, make in rows.items():
                for guidance in pool_guidances():
                    doc = largest_within(spec.name, nfe, lambda grid, n, make=make, guidance=guidance:
                                         guided_document(run, make, n, grid, guidance), run.runtime)
                    if doc is not None and guides_some_steps(doc.policy, guidance):
                        out.append(Candidate(run.row_name(spec.name, f"{label}+{guidance.label()}", nfe), doc, "pool",
                                             nfe_budget=nfe))
        return out
