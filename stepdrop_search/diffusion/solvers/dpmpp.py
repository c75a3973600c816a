"""DPM-Solver++ (Lu et al. 2022): data prediction, multistep in λ = log(α/σ)."""

from __future__ import annotations

import torch

from stepdrop_search.diffusion.solvers.base import (
    Solver,
    State,
    Step,
    Tensor,
    flat,
    half_log_snr,
    no_history,
    per_sample,
    register_solver,
)


def dpmpp_2m_step(x: Tensor, x0: Tensor, a_t: Tensor, a_s: Tensor, prev_x0: Tensor, h_prev: Tensor) -> Tensor:
    """DPM-Solver++(2M), diffusers' form (``multistep_dpm_solver_second_order_update``, midpoint).

    h = λ_s − λ_t; first order (= DDIM) where ``h_prev`` is not finite (no history yet), otherwise
    D = (1 + 1/(2r)) x̂0 − 1/(2r) x̂0_prev with r = h_prev/h; x_s = (σ_s/σ_t) x_t − α_s (e^{−h} − 1) D.
    """
    h = half_log_snr(a_s) - half_log_snr(a_t)
    has_history = torch.isfinite(h_prev)
    half_inv_r = torch.where(has_history, h / (2 * torch.where(has_history, h_prev, h)), torch.zeros_like(h))
    d = (1 + half_inv_r) * x0 - half_inv_r * prev_x0
    sigma_ratio = ((1 - a_s) / (1 - a_t)).sqrt()
    return sigma_ratio * x - a_s.sqrt() * torch.expm1(-h) * d


@register_solver
class DPMSolverPP2M(Solver):
    """Second-order multistep; the first step of each sample (no history) is DDIM."""

    name = "dpmpp-2m"

    def init_state(self, x: Tensor) -> State:
        return {"x0": torch.zeros_like(x), "h": no_history(x.shape[0], x.device)}

    def step(self, s: Step, state: State) -> tuple[Tensor, State]:
        x_next = dpmpp_2m_step(s.x, s.x0, s.a_t, s.a_s, state["x0"], per_sample(state["h"], s.x))
        h = flat(half_log_snr(s.a_s) - half_log_snr(s.a_t)).expand(s.x.shape[0])
        return x_next, {"x0": s.x0, "h": h}
