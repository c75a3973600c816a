"""A learned multistep solver: DPM-Solver++(3M) whose data term is re-weighted over the x̂0 history at every grid step.

Why this form. Below five evaluations the steps alone stop short (issue "Below five evaluations"): S4S (Frankel et al.,
2025) and learned Adams–Bashforth coefficients learn the weights a multistep solver puts on its earlier predictions.
DPM-Solver++(3M) steps x_s = (σ_s/σ_t) x_t + w0 x̂0 + w1 x̂0_prev + w2 x̂0_prev2 with w0 + w1 + w2 = α_s (1 − e^{−h}), which
makes the step exact for a constant x̂0 (consistency). Grid step i of this solver adds α_s (1 − e^{−h}) δ_{i,j} to w_j
(j = 1, 2) and takes their sum off w0, with δ_i its learned row. So:

* any δ keeps the weights' sum, hence consistency: training moves the order conditions, never the first;
* δ = 0 *is* DPM-Solver++(3M) on the same steps (its 2M warm-up included): training starts at that solver;
* δ is a weight *relative to the data term*, so rows of different steps are comparable numbers.

The last step (to x̂0) is the solver's own: x̂0 + δ_{L−1,1} (x̂0_prev − x̂0) + δ_{L−1,2} (x̂0_prev2 − x̂0), the same offsets
on the data term's weight at x̂0 (which is 1); δ = 0 returns the last evaluation's x̂0, as every solver does.

Row i holds (δ_{i,1}, δ_{i,2}); grid steps without that much history (row 0: none; row 1: no x̂0_prev2) must hold
zeros there. The coefficients belong to grid steps, so the solver runs dense (static) plans only, and no σ-list tool
runs it: ``policy export --format python`` writes a sampler that does (:mod:`stepdrop_search.export_python`).
"""

from __future__ import annotations

import torch

from stepdrop_search.diffusion.solvers.base import State, Step, Tensor, UserError, applied, per_sample, register_solver
from stepdrop_search.diffusion.solvers.dpmpp import DPMSolverPP3M, dpmpp_3m_weights, multistep_update, step_size

#: Which offsets exist at grid steps 0, 1 and later (an earlier x̂0 must exist to be weighted).
HISTORY_MASK = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0))


def history_mask(length: int) -> Tensor:
    """(length, 2) float64: 1 where grid step i has the earlier x̂0 that offset j weights."""
    rows = [HISTORY_MASK[min(i, len(HISTORY_MASK) - 1)] for i in range(length)]
    return torch.tensor(rows, dtype=torch.float64)


@register_solver
class LearnedMultistep(DPMSolverPP3M):
    """State per sample as DPM-Solver++(3M)'s (the last two x̂0 and λ-step sizes)."""

    name = "learned-3m"
    learned = True
    base = DPMSolverPP3M.name
    owns_last_step = True
    coefficient_width = 2

    @classmethod
    def checked_coefficients(cls, rows) -> tuple[tuple[float, ...], ...]:
        rows = super().checked_coefficients(rows)
        impossible = [i for i, (row, mask) in enumerate(zip(rows, history_mask(len(rows)).tolist(), strict=True))
                      if any(v and not m for v, m in zip(row, mask, strict=True))]
        if impossible:
            raise UserError(f"solver {cls.name}: coefficient rows {impossible} weight an x̂0 that does not exist yet "
                            "(row 0 must be [0, 0], row 1 [δ, 0])")
        return rows

    def check_plan(self, length: int, dense: bool) -> None:
        if not dense:
            raise UserError(f"solver {self.name}: its coefficients belong to grid steps, so it runs static policies only "
                            "(every sample evaluating every step)")
        rows = self.spec.coefficients if self.spec is not None else None
        if rows is not None and len(rows) != length:
            raise UserError(f"solver {self.name}: {len(rows)} coefficient rows for a {length}-step grid (one per step)")
        self.length = length

    def init_state(self, x: Tensor) -> State:
        # self.length: the grid's, from check_plan, which the loop calls first
        rows = self.spec.coefficients if self.spec is not None else None
        offsets = torch.zeros(self.length, 2, dtype=torch.float64) if rows is None else torch.as_tensor(rows)
        self.offsets = offsets.to(device=x.device, dtype=torch.float64) * history_mask(self.length).to(x.device)
        return super().init_state(x)

    def step(self, s: Step, state: State) -> tuple[Tensor, State]:
        d1, d2 = self.offsets[s.index]
        history = (s.x0, state["x0"], state["x0_prev"])
        if s.last:  # the data term's weight at x̂0 is 1 (σ_s = 0)
            x_next = s.x0 + applied(d1, s.x) * (state["x0"] - s.x0) + applied(d2, s.x) * (state["x0_prev"] - s.x0)
        else:
            decay, (w0, w1, w2) = dpmpp_3m_weights(s.a_t, s.a_s, per_sample(state["h"], s.x), per_sample(state["h_prev"], s.x))
            data = w0 + w1 + w2  # α_s (1 − e^{−h}), the weights' sum, which every offset keeps
            x_next = multistep_update(s.x, history, decay, (w0 - data * (d1 + d2), w1 + data * d1, w2 + data * d2))
        return x_next, {"x0": s.x0, "x0_prev": state["x0"], "h": step_size(s), "h_prev": state["h"]}
