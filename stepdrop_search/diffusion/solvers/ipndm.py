"""iPNDM (Zhang & Chen 2023, "Fast sampling of diffusion models with exponential integrator"; zju-pi/diff-sampler
``ipndm_sampler``): fixed-coefficient Adams–Bashforth in ε on the probability-flow ODE, up to order 4.

In x̃ = x/α and σ̃ = σ/α the ODE is dx̃/dσ̃ = ε̂, and iPNDM steps it with the Adams–Bashforth combination of the
current and up to three earlier ε̂: x̃_s = x̃_t + (σ̃_s − σ̃_t)·Σ_j c^p_j ε̂_{t−j}. The coefficients are the
constant-step ones whatever the spacing (that is the "improved" PNDM: no pseudo steps, no variable-step weights).
In VP form the step is DDIM's η = 0 step (Euler in σ̃) with ε̂ replaced by that combination, which is how it is
computed here. Warm start: a sample's order is 1 + the number of its earlier evaluations, capped at 4, so under
StepDrop or the adaptive rule each sample's history is its own evaluations, whatever the other samples did.

The last step to x̂0 (σ̃ = 0) returns x̂0 of the last evaluation, as for every solver (the loop does it).
Decided rather than taking the Adams–Bashforth step to σ̃ = 0 (x̃_t − σ̃_t·Σ_j c_j ε̂_{t−j}, which is x̂0 only for
order 1) because that is also where diff-sampler's iPNDM ends: it never steps to σ̃ = 0, it stops at σ̃_min and
``denoise_to_zero`` returns the denoiser output there. Ours is that run with the last grid step as σ̃_min, without
its extra evaluation.
"""

from __future__ import annotations

import torch

from stepdrop_search.diffusion.solvers.base import Solver, State, Step, Tensor, predict_x0, register_solver
from stepdrop_search.diffusion.solvers.first_order import ddim_step

#: Row p − 1: the Adams–Bashforth weights of ε̂_t, ε̂_{t−1}, ε̂_{t−2}, ε̂_{t−3} for order p (zero-padded).
ADAMS_BASHFORTH = torch.tensor([
    [1, 0, 0, 0],
    [3 / 2, -1 / 2, 0, 0],
    [23 / 12, -16 / 12, 5 / 12, 0],
    [55 / 24, -59 / 24, 37 / 24, -9 / 24],
], dtype=torch.float64)
MAX_ORDER = len(ADAMS_BASHFORTH)


@register_solver
class IPNDM(Solver):
    """State per sample: ``eps`` (n, 3, …), its last three ε̂ newest first (zeros before they exist, where their
    weight is 0), and ``seen``, how many of them exist (0…3)."""

    name = "ipndm"

    def init_state(self, x: Tensor) -> State:
        # The weight table lives on the device so that choosing each sample's row never copies from the host.
        self.weights = ADAMS_BASHFORTH.to(device=x.device, dtype=x.dtype)
        return {"eps": x.new_zeros((x.shape[0], MAX_ORDER - 1, *x.shape[1:])),
                "seen": torch.zeros(x.shape[0], dtype=torch.long, device=x.device)}

    def step(self, s: Step, state: State) -> tuple[Tensor, State]:
        history = torch.cat([s.eps.unsqueeze(1), state["eps"]], dim=1)  # (n, 4, …): ε̂_t, ε̂_{t−1}, …
        eps = torch.einsum("nk,nk...->n...", self.weights[state["seen"]], history)
        x0, _ = predict_x0(s.x, eps, s.a_t, clamp=False)  # the x̂0 on the line through x_t along the combined ε
        x_next = ddim_step(s.x, x0, eps, s.a_t, s.a_s, None, 0.0)
        return x_next, {"eps": history[:, :-1], "seen": (state["seen"] + 1).clamp(max=MAX_ORDER - 1)}
