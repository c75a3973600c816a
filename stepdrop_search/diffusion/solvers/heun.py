"""Heun's second-order method on the probability-flow ODE (EDM's deterministic sampler, k-diffusion's
``sample_heun`` with s_churn = 0), in VP form.

In x̃ = x/α and σ̃ = σ/α the ODE is dx̃/dσ̃ = ε. A step from t to s takes the Euler (= DDIM) predictor
x̃′ = x̃_t + (σ̃_s − σ̃_t) ε_t, evaluates ε′ at (x′, s) and averages: x̃_s = x̃_t + (σ̃_s − σ̃_t)(ε_t + ε′)/2. The
step to x̂0 (σ̃ = 0) stays Euler, so K grid steps cost 2K − 1 evaluations, as in k-diffusion, ComfyUI, A1111 and
diffusers: ``--nfe N`` takes K = ⌈N/2⌉ grid steps and an even N is a ceiling (N − 1 are spent).

The ``legacy`` runtime (this project before 2026-12) spent an even N exactly: K = N/2 + 1 steps with the first one
left Euler. A spec carries that budget (``SolverSpec.nfe``) only under such a runtime (:func:`spec_for_nfe`); no other
tool runs that pattern from a σ list, so its export takes two calls (Euler over the first interval, Heun after).
"""

from __future__ import annotations

from stepdrop_search.diffusion.solvers.base import Solver, State, Step, Tensor, applied, register_solver
from stepdrop_search.diffusion.solvers.first_order import ddim_step


@register_solver
class Heun(Solver):
    name = "heun"
    variable_cost = True
    one_step_form = "heun"

    def corrects(self, index: int) -> bool:
        """Whether grid step ``index`` (not the last) spends its second evaluation."""
        budget = self.spec.nfe if self.spec is not None else None
        return not (index == 0 and budget is not None and budget % 2 == 0)

    def step(self, s: Step, state: State) -> tuple[Tensor, State]:
        predicted = ddim_step(s.x, s.x0, s.eps, s.a_t, s.a_s, None, 0.0)
        if s.last or not self.corrects(s.index):
            return predicted, state
        _, eps_next = s.evaluate_at_targets(predicted)
        # x_s = α_s (x̃_t + (σ̃_s − σ̃_t)(ε_t + ε′)/2) with x̃_t = x_t/α_t, σ̃ = σ/α
        alpha_t, alpha_s = s.a_t.sqrt(), s.a_s.sqrt()
        sigma_t, sigma_s = (1 - s.a_t).sqrt(), (1 - s.a_s).sqrt()
        return (applied(alpha_s / alpha_t, s.x) * s.x
                + applied((sigma_s - alpha_s * sigma_t / alpha_t) / 2, s.x) * (s.eps + eps_next)), state

    def nfe(self, steps: int) -> int:
        return 2 * steps - 1 - (0 if self.corrects(0) or steps < 2 else 1)

    def steps_for_nfe(self, nfe: int) -> int:
        spends_even = self.spec is not None and self.spec.nfe is not None
        return nfe // 2 + 1 if spends_even else (nfe + 1) // 2

    def uncorrected_first(self, steps: int) -> bool:
        """Whether a run over ``steps`` grid steps leaves its first interval uncorrected (the legacy even budget)."""
        return steps >= 2 and not self.corrects(0)
