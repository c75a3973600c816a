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
    applied,
    flat,
    half_log_snr,
    no_history,
    per_sample,
    register_solver,
)


def midpoint_weight(h: Tensor, h_prev: Tensor) -> Tensor:
    """c = 1/(2r), r = h_prev/h, of the 2M data term D = (1 + c) x̂0 − c x̂0_prev (diffusers' and k-diffusion's
    midpoint form); 0 where ``h_prev`` is not finite (no history yet: D = x̂0, first order)."""
    has_history = torch.isfinite(h_prev)
    return torch.where(has_history, h / (2 * torch.where(has_history, h_prev, h)), torch.zeros_like(h))


def dpmpp_2m_step(x: Tensor, x0: Tensor, a_t: Tensor, a_s: Tensor, prev_x0: Tensor, h_prev: Tensor) -> Tensor:
    """DPM-Solver++(2M), diffusers' form (``multistep_dpm_solver_second_order_update``, midpoint).

    h = λ_s − λ_t; first order (= DDIM) where ``h_prev`` is not finite (no history yet), otherwise
    x_s = (σ_s/σ_t) x_t − α_s (e^{−h} − 1) D with D from :func:`midpoint_weight`.
    """
    return dpmpp_2m_sde_step(x, x0, a_t, a_s, prev_x0, h_prev, 0.0, None)


def dpmpp_2m_sde_step(x: Tensor, x0: Tensor, a_t: Tensor, a_s: Tensor, prev_x0: Tensor, h_prev: Tensor,
                      eta: float, noise: Tensor | None) -> Tensor:
    """DPM-Solver++(2M) SDE, k-diffusion's ``sample_dpmpp_2m_sde`` (midpoint) in VP form:

    x_s = (σ_s/σ_t) e^{−ηh} x_t + α_s (1 − e^{−(1+η)h}) D + σ_s √(1 − e^{−2ηh}) z, D from :func:`midpoint_weight`.

    η = 0 is the probability-flow ODE, :func:`dpmpp_2m_step` (no noise is drawn then); η = 1 is the reverse SDE,
    k-diffusion's default. Each state is multiplied once, by a coefficient formed in float64.
    """
    h = half_log_snr(a_s) - half_log_snr(a_t)
    c = midpoint_weight(h, h_prev)
    decay = ((1 - a_s) / (1 - a_t)).sqrt()
    data = -a_s.sqrt() * torch.expm1(-h * (1 + eta))  # the weight of D
    if eta:
        decay = decay * torch.exp(-eta * h)
    x_s = applied(decay, x) * x + applied(data * (1 + c), x) * x0 - applied(data * c, x) * prev_x0
    if eta == 0:
        return x_s
    return x_s + applied((1 - a_s).sqrt() * (-torch.expm1(-2 * eta * h)).sqrt(), x) * noise


def dpmpp_3m_step(x: Tensor, x0: Tensor, a_t: Tensor, a_s: Tensor, prev_x0: Tensor, prev2_x0: Tensor,
                  h_prev: Tensor, h_prev2: Tensor) -> Tensor:
    """DPM-Solver++(3M), diffusers' ``multistep_dpm_solver_third_order_update`` (η = 0); see :func:`dpmpp_3m_weights`."""
    return multistep_update(x, (x0, prev_x0, prev2_x0), *dpmpp_3m_weights(a_t, a_s, h_prev, h_prev2))


def multistep_update(x: Tensor, history: tuple[Tensor, ...], decay: Tensor, weights: tuple[Tensor, ...]) -> Tensor:
    """x_s = decay·x_t + Σ_j weights_j·x̂0_{−j}: each state multiplied once by a coefficient formed in float64."""
    out = applied(decay, x) * x
    for weight, x0 in zip(weights, history, strict=True):
        out = out + applied(weight, x) * x0
    return out


def dpmpp_3m_weights(a_t: Tensor, a_s: Tensor, h_prev: Tensor, h_prev2: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """(σ_s/σ_t, (w0, w1, w2)): DPM-Solver++(3M)'s update x_s = (σ_s/σ_t) x_t + w0 x̂0 + w1 x̂0_prev + w2 x̂0_prev2.

    with r0 = h_prev/h, r1 = h_prev2/h, D1_0 = (x̂0 − x̂0_prev)/r0, D1_1 = (x̂0_prev − x̂0_prev2)/r1,
    D1 = D1_0 + r0/(r0 + r1) (D1_0 − D1_1), D2 = (D1_0 − D1_1)/(r0 + r1), φ₁ = e^{−h} − 1, φ₂ = φ₁/h + 1,
    φ₃ = φ₂/h − ½: x_s = (σ_s/σ_t) x_t − α_s (φ₁ x̂0 − φ₂ D1 + φ₃ D2).

    The update is linear in x̂0, x̂0_prev and x̂0_prev2, so it is computed as one weight per sample for each,
    formed in float64 and applied once. Samples with fewer than two earlier steps take the weights of
    :func:`dpmpp_2m_step` (orders 1 and 2, exactly diffusers' warm-up), chosen per sample with ``torch.where`` on the
    weights (no host sync); the third-order weights run on stand-in step sizes (r = 1) for those samples so that
    they stay finite.
    """
    h = half_log_snr(a_s) - half_log_snr(a_t)
    has_two = torch.isfinite(h_prev2)  # a sample's second earlier step implies its first
    r0 = torch.where(has_two, h_prev, h) / h
    r1 = torch.where(has_two, h_prev2, h) / h
    phi1 = torch.expm1(-h)
    phi2 = phi1 / h + 1
    phi3 = phi2 / h - 0.5
    # D1_0 = u (x̂0 − x̂0_prev), D1_1 = v (x̂0_prev − x̂0_prev2); D1 = (1 + k) D1_0 − k D1_1; D2 = m (D1_0 − D1_1)
    u, v, k, m = 1 / r0, 1 / r1, r0 / (r0 + r1), 1 / (r0 + r1)
    third = (phi1 - phi2 * (1 + k) * u + phi3 * m * u,
             phi2 * ((1 + k) * u + k * v) - phi3 * m * (u + v),
             -phi2 * k * v + phi3 * m * v)
    c = midpoint_weight(h, h_prev)
    second = (phi1 * (1 + c), -phi1 * c, torch.zeros_like(phi1))  # α_s φ₁ D of dpmpp_2m_step, as the same weights
    weights = tuple(-a_s.sqrt() * torch.where(has_two, a, b) for a, b in zip(third, second, strict=True))
    return ((1 - a_s) / (1 - a_t)).sqrt(), weights


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
