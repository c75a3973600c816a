"""UniPC (Zhao et al. 2023), order 2, data prediction, B(h) = e^{−h} − 1 ("bh2"): diffusers'
``UniPCMultistepScheduler`` defaults, in λ = log(α/σ).

Each step corrects and then predicts, with one evaluation: the x̂0 m_t evaluated at the predicted x_t first
corrects x_t (UniC), then the predictor (UniP-2, which for order 2 is DPM-Solver++(2M)) steps from the corrected
x_t with the same m_t. The corrector costs no evaluation because it reuses the next one.

UniC-p at t, after the previous step s → t of order p (h = λ_t − λ_s, B = e^{−h} − 1):
x_t^c = (σ_t/σ_s) x_s − α_t B m_s − α_t B [ρ_1 D_1 + ρ_t (m_t − m_s)] for p = 2, with r = (λ_{s′} − λ_s)/h,
D_1 = (m_{s′} − m_s)/r (s′ the evaluation before s) and (ρ_1, ρ_t) = R⁻¹b, R = [[1, 1], [r, 1]], b_k = k!·g_k/B,
g_1 = B/(−h) − 1, g_2 = g_1/(−h) − ½; for p = 1, ρ_t = ½ and no D_1. The predictor that made x_t from x_s had
the same base and subtracted α_t B ½ D_1 (p = 2) or nothing (p = 1), so x_t^c is computed as x_t minus the
difference: this keeps no copy of x_s, and a state the loop changed after the predictor (amplitude
calibration) is corrected rather than replaced.

Orders: the predictor uses order 2 whenever the sample has an earlier evaluation (its first step is order 1:
DDIM), and the corrector uses the order of the predictor before it; none corrects a sample's first evaluation.
The last step goes to x̂0 of the last evaluation (the loop's convention), which is where diffusers'
``lower_order_final`` takes its last step to σ = 0 at order 1; no other step's order is lowered. Under StepDrop
or the adaptive rule, "previous" means the sample's own previous evaluation.
"""

from __future__ import annotations

import torch

from stepdrop_search.diffusion.solvers.base import (
    Solver,
    State,
    Step,
    Tensor,
    applied,
    flat,
    half_log_snr,
    no_history,
    per_sample,
    register_solver,
)
from stepdrop_search.diffusion.solvers.dpmpp import dpmpp_2m_step


def unic_weights(a_t: Tensor, h: Tensor, h_prev: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample weights (w_1, w_t), (n,) float64, of the correction x_t^c = x_t − w_1 (m_s − m_{s′}) − w_t (m_t − m_s).

    ``h``: the step that made x_t (λ_t − λ_s); ``h_prev``: the one before it (λ_s − λ_{s′}); NaN where there was
    none. Both weights are 0 after no step (a first evaluation), and w_1 is 0 after a first-order one (UniC-1).
    """
    has_step, has_order_2 = torch.isfinite(h), torch.isfinite(h_prev)
    # Where a step is missing, compute on a harmless 1 and discard it: NaN in the branch torch.where drops would
    # still poison the gradient (0 · NaN) when the steps are learned (search.gradient).
    h, h_prev = torch.where(has_step, h, 1.0), torch.where(has_order_2, h_prev, 1.0)
    hh = -h
    b_h = torch.expm1(hh)
    g1 = b_h / hh - 1
    g2 = g1 / hh - 0.5
    b1, b2 = g1 / b_h, 2 * g2 / b_h
    r = -h_prev / h
    rho_1, rho_t = (b1 - b2) / (1 - r), (b2 - r * b1) / (1 - r)  # R⁻¹b for R = [[1, 1], [r, 1]]
    zero = torch.zeros_like(h)
    scale = a_t.sqrt() * b_h
    # D_1 = (m_{s′} − m_s)/r = (m_s − m_{s′})·h/h_prev, of which the predictor already took ½
    w_1 = torch.where(has_order_2, scale * (rho_1 - 0.5) * h / h_prev, zero)
    w_t = torch.where(has_step, scale * torch.where(has_order_2, rho_t, zero + 0.5), zero)
    return w_1, w_t


@register_solver
class UniPC(Solver):
    """State per sample: the x̂0 of its last two evaluations (``x0``, ``x0_prev``) and its last two step sizes in
    λ (``h``, ``h_prev``; NaN before they exist — a finite ``h_prev`` also says the last predictor was order 2)."""

    name = "unipc"

    def init_state(self, x: Tensor) -> State:
        return {"x0": torch.zeros_like(x), "x0_prev": torch.zeros_like(x),
                "h": no_history(x.shape[0], x.device), "h_prev": no_history(x.shape[0], x.device)}

    def step(self, s: Step, state: State) -> tuple[Tensor, State]:
        w_1, w_t = unic_weights(s.a_t, state["h"], state["h_prev"])
        x = (s.x - applied(per_sample(w_1, s.x), s.x) * (state["x0"] - state["x0_prev"])
             - applied(per_sample(w_t, s.x), s.x) * (s.x0 - state["x0"]))
        x_next = dpmpp_2m_step(x, s.x0, s.a_t, s.a_s, state["x0"], per_sample(state["h"], s.x))
        h = flat(half_log_snr(s.a_s) - half_log_snr(s.a_t)).expand(s.x.shape[0])
        return x_next, {"x0": s.x0, "x0_prev": state["x0"], "h": h, "h_prev": state["h"]}
