"""DPM-Solver++ (Lu et al. 2022): data prediction, multistep in λ = log(α/σ).

Three strategies share one per-sample history (the x̂0 of a sample's earlier evaluations and the λ-step sizes
that led to its current time, NaN where there is none): DPM-Solver++(2M), its SDE variant (k-diffusion's
``sample_dpmpp_2m_sde``) and DPM-Solver++(3M). Each sample warms up from its own history (order 1, 2, 3, …),
so with stochastic plans "the previous step" is that sample's previous evaluation. Every step uses the full
order its history allows — none of diffusers' ``lower_order_final`` reductions — except the last, which is x̂0
(the loop returns it there, as diffusers' ``final_sigmas_type="zero"``).
"""

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


def midpoint_data(x0: Tensor, prev_x0: Tensor, h: Tensor, h_prev: Tensor) -> Tensor:
    """The 2M data term D = (1 + 1/(2r)) x̂0 − 1/(2r) x̂0_prev with r = h_prev/h (diffusers' and k-diffusion's
    midpoint form); x̂0 itself where ``h_prev`` is not finite (no history yet: first order)."""
    has_history = torch.isfinite(h_prev)
    half_inv_r = torch.where(has_history, h / (2 * torch.where(has_history, h_prev, h)), torch.zeros_like(h))
    return (1 + half_inv_r) * x0 - half_inv_r * prev_x0


def dpmpp_2m_step(x: Tensor, x0: Tensor, a_t: Tensor, a_s: Tensor, prev_x0: Tensor, h_prev: Tensor) -> Tensor:
    """DPM-Solver++(2M), diffusers' form (``multistep_dpm_solver_second_order_update``, midpoint).

    h = λ_s − λ_t; first order (= DDIM) where ``h_prev`` is not finite (no history yet), otherwise
    x_s = (σ_s/σ_t) x_t − α_s (e^{−h} − 1) D with D from :func:`midpoint_data`.
    """
    h = half_log_snr(a_s) - half_log_snr(a_t)
    d = midpoint_data(x0, prev_x0, h, h_prev)
    sigma_ratio = ((1 - a_s) / (1 - a_t)).sqrt()
    return sigma_ratio * x - a_s.sqrt() * torch.expm1(-h) * d


def dpmpp_2m_sde_step(x: Tensor, x0: Tensor, a_t: Tensor, a_s: Tensor, prev_x0: Tensor, h_prev: Tensor,
                      eta: float, noise: Tensor | None) -> Tensor:
    """DPM-Solver++(2M) SDE, k-diffusion's ``sample_dpmpp_2m_sde`` (midpoint) in VP form:

    x_s = (σ_s/σ_t) e^{−ηh} x_t + α_s (1 − e^{−(1+η)h}) D + σ_s √(1 − e^{−2ηh}) z, D from :func:`midpoint_data`.

    η = 0 is the probability-flow ODE and *is* :func:`dpmpp_2m_step` (the same arithmetic, so the same
    numbers: no noise is drawn then); η = 1 is the reverse SDE, k-diffusion's default.
    """
    if eta == 0:
        return dpmpp_2m_step(x, x0, a_t, a_s, prev_x0, h_prev)
    h = half_log_snr(a_s) - half_log_snr(a_t)
    d = midpoint_data(x0, prev_x0, h, h_prev)
    sigma_ratio = ((1 - a_s) / (1 - a_t)).sqrt()
    eta_h = eta * h
    return (sigma_ratio * torch.exp(-eta_h) * x - a_s.sqrt() * torch.expm1(-h - eta_h) * d
            + (1 - a_s).sqrt() * (-torch.expm1(-2 * eta_h)).sqrt() * noise)


def dpmpp_3m_step(x: Tensor, x0: Tensor, a_t: Tensor, a_s: Tensor, prev_x0: Tensor, prev2_x0: Tensor,
                  h_prev: Tensor, h_prev2: Tensor) -> Tensor:
    """DPM-Solver++(3M), diffusers' ``multistep_dpm_solver_third_order_update`` (η = 0):

    with r0 = h_prev/h, r1 = h_prev2/h, D1_0 = (x̂0 − x̂0_prev)/r0, D1_1 = (x̂0_prev − x̂0_prev2)/r1,
    D1 = D1_0 + r0/(r0 + r1) (D1_0 − D1_1), D2 = (D1_0 − D1_1)/(r0 + r1), φ₁ = e^{−h} − 1, φ₂ = φ₁/h + 1,
    φ₃ = φ₂/h − ½: x_s = (σ_s/σ_t) x_t − α_s (φ₁ x̂0 − φ₂ D1 + φ₃ D2).

    Samples with fewer than two earlier steps take :func:`dpmpp_2m_step` (orders 1 and 2, exactly diffusers'
    warm-up), chosen per sample with ``torch.where``: both updates are elementwise and cheap next to the network,
    and choosing on the device needs no host sync. The third-order arithmetic runs on stand-in step sizes
    (r = 1) for those samples so that it stays finite.
    """
    second = dpmpp_2m_step(x, x0, a_t, a_s, prev_x0, h_prev)
    h = half_log_snr(a_s) - half_log_snr(a_t)
    has_two = torch.isfinite(h_prev2)  # a sample's second earlier step implies its first
    r0 = torch.where(has_two, h_prev, h) / h
    r1 = torch.where(has_two, h_prev2, h) / h
    d1_0 = (x0 - prev_x0) / r0
    d1_1 = (prev_x0 - prev2_x0) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi1 = torch.expm1(-h)
    phi2 = phi1 / h + 1
    phi3 = phi2 / h - 0.5
    sigma_ratio = ((1 - a_s) / (1 - a_t)).sqrt()
    third = sigma_ratio * x - a_s.sqrt() * (phi1 * x0 - phi2 * d1 + phi3 * d2)
    return torch.where(has_two, third, second)


def step_size(s: Step) -> Tensor:
    """(n,) this step's h = λ_s − λ_t per active sample: the history the next step of each sample reads."""
    return flat(half_log_snr(s.a_s) - half_log_snr(s.a_t)).expand(s.x.shape[0])


@register_solver
class DPMSolverPP2M(Solver):
    """Second-order multistep; the first step of each sample (no history) is DDIM."""

    name = "dpmpp-2m"

    def init_state(self, x: Tensor) -> State:
        return {"x0": torch.zeros_like(x), "h": no_history(x.shape[0], x.device)}

    def step(self, s: Step, state: State) -> tuple[Tensor, State]:
        x_next = dpmpp_2m_step(s.x, s.x0, s.a_t, s.a_s, state["x0"], per_sample(state["h"], s.x))
        return x_next, {"x0": s.x0, "h": step_size(s)}


@register_solver
class DPMSolverPP2MSDE(DPMSolverPP2M):
    """DPM-Solver++(2M) SDE (see :func:`dpmpp_2m_sde_step`). Without an explicit η it runs with η = 1, as
    k-diffusion does: asking for the SDE solver and getting its deterministic special case (η = 0, which is
    ``dpmpp-2m``) would surprise. Its noise is the run's per-sample stream (``Step.noise``), so every policy of a
    seed gets the same solver noise at a grid step (common random numbers)."""

    name = "dpmpp-2m-sde"
    has_eta = True
    default_eta = 1.0

    def stochastic(self, eta: float) -> bool:
        return eta > 0

    def step(self, s: Step, state: State) -> tuple[Tensor, State]:
        x_next = dpmpp_2m_sde_step(s.x, s.x0, s.a_t, s.a_s, state["x0"], per_sample(state["h"], s.x), s.eta, s.noise)
        return x_next, {"x0": s.x0, "h": step_size(s)}


@register_solver
class DPMSolverPP3M(Solver):
    """Third-order multistep (see :func:`dpmpp_3m_step`); each sample warms up with orders 1 and 2."""

    name = "dpmpp-3m"

    def init_state(self, x: Tensor) -> State:
        batch = x.shape[0]
        return {"x0": torch.zeros_like(x), "x0_prev": torch.zeros_like(x),
                "h": no_history(batch, x.device), "h_prev": no_history(batch, x.device)}

    def step(self, s: Step, state: State) -> tuple[Tensor, State]:
        x_next = dpmpp_3m_step(s.x, s.x0, s.a_t, s.a_s, state["x0"], state["x0_prev"],
                               per_sample(state["h"], s.x), per_sample(state["h_prev"], s.x))
        return x_next, {"x0": s.x0, "x0_prev": state["x0"], "h": step_size(s), "h_prev": state["h"]}
