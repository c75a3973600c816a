"""The one-step solvers: DDIM (with η) and the DDPM ancestral / skipped-step posterior step."""

from __future__ import annotations

from stepdrop_search.diffusion.solvers.base import Solver, State, Step, Tensor, applied, register_solver


def ddim_step(x: Tensor, x0: Tensor, eps: Tensor, a_t: Tensor, a_s: Tensor, noise: Tensor | None, eta: float) -> Tensor:
    """DDIM (Song et al. eq. 12): x_s = √ᾱ_s x̂0 + √(1 − ᾱ_s − σ²) ε + σ z,
    σ = η √((1−ᾱ_s)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_s). StepDrop's code drops σ² from the direction term."""
    if eta == 0 or noise is None:
        return applied(a_s.sqrt(), x0) * x0 + applied((1 - a_s).sqrt(), x0) * eps
    var = eta**2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
    return (applied(a_s.sqrt(), x0) * x0 + applied((1 - a_s - var).clamp(min=0).sqrt(), x0) * eps
            + applied(var.sqrt(), x0) * noise)


def ancestral_step(x: Tensor, x0: Tensor, a_t: Tensor, a_s: Tensor, noise: Tensor | None) -> Tensor:
    """Sample the Markovian posterior q(x_s | x_t, x̂0) for any s < t.

    With α_{t|s} = ᾱ_t/ᾱ_s, β_{t|s} = 1 − α_{t|s}: mean = √ᾱ_s β_{t|s}/(1−ᾱ_t) x̂0 + √α_{t|s}(1−ᾱ_s)/(1−ᾱ_t) x_t,
    variance = β_{t|s}(1−ᾱ_s)/(1−ᾱ_t). For s = t − 1 this is DDPM's ancestral step; for larger gaps it is the
    skipped-step jump of "Pretrained diffusion models are inherently skipped-step samplers".
    """
    alpha_ts = a_t / a_s
    beta_ts = 1 - alpha_ts
    mean = applied(a_s.sqrt() * beta_ts / (1 - a_t), x) * x0 + applied(alpha_ts.sqrt() * (1 - a_s) / (1 - a_t), x) * x
    if noise is None:
        return mean
    return mean + applied((beta_ts * (1 - a_s) / (1 - a_t)).sqrt(), x) * noise


@register_solver
class DDIM(Solver):
    """DDIM; η = 0 is the probability-flow ODE's Euler step in σ̃ = σ/α (k-diffusion's ``sample_euler``)."""

    name = "ddim"
    has_eta = True

    def stochastic(self, eta: float) -> bool:
        return eta > 0

    def step(self, s: Step, state: State) -> tuple[Tensor, State]:
        return ddim_step(s.x, s.x0, s.eps, s.a_t, s.a_s, s.noise, s.eta), state


@register_solver
class DDPM(Solver):
    """The ancestral posterior step; with gaps larger than one it is the skipped-step jump."""

    name = "ddpm"

    def stochastic(self, eta: float) -> bool:
        return True

    def step(self, s: Step, state: State) -> tuple[Tensor, State]:
        return ancestral_step(s.x, s.x0, s.a_t, s.a_s, s.noise), state
