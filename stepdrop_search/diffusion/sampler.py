"""One sampler loop for every policy and solver.

A policy hands the sampler a :class:`Plan`: a grid of candidate timesteps, the solver of each grid
step, and who evaluates where — everyone everywhere (static policies: the dense fast path), a
pre-drawn per-sample mask (StepDrop's coin flips), or an online rule that decides from the ε just
computed (the adaptive policy). Samples that skip a grid step are *not* evaluated: the loop gathers
the active sub-batch, and the model wrapper counts NFE per sample, so reported NFE is measured.

No value is read back to the host inside the loop for static and pre-drawn plans: coefficients live
on the device and every index list is prepared before the first step. The adaptive rule needs one
``nonzero`` per step to size its sub-batch (data-dependent control flow cannot avoid it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.diffusion.solvers import ancestral_step, ddim_step, dpmpp_2m_step, log_snr, predict_x0
from stepdrop_search.errors import UserError

Tensor = torch.Tensor


@dataclass(frozen=True)
class Plan:
    """What a policy asks of the sampler for one batch.

    ``grid``: (L,) strictly decreasing candidate timesteps. ``solvers``: solver name per grid step.
    ``evaluate``: (B, L) bool, pre-drawn per-sample decisions (column 0 must be all True), or None.
    ``skip_base``: (L,) base skip probabilities of the adaptive rule p = min(1, base/r), r = ‖ε‖/√D,
    decided for the following grid steps from the ε of the current evaluation; or None.
    """

    grid: Tensor
    solvers: tuple[str, ...]
    evaluate: Tensor | None = None
    skip_base: Tensor | None = None

    @property
    def dense(self) -> bool:
        return self.evaluate is None and self.skip_base is None


@dataclass
class SampleResult:
    x0: Tensor
    nfe: Tensor  # (B,) network evaluations per sample, counted by the model wrapper
    evaluated: Tensor  # (B, L) bool: which grid steps each sample evaluated (the "barcode")
    grid: Tensor
    trajectory: Tensor | None = None  # (L, B, …): the state at each grid step, when asked for
    denoised: Tensor | None = None  # (L, B, …): x̂0 predicted at each grid step, when asked for


class NFECounter:
    """Wraps ε_θ and counts evaluations per sample on the device (no host sync)."""

    def __init__(self, model: torch.nn.Module, batch: int, device: torch.device) -> None:
        self.model = model
        self.counts = torch.zeros(batch, dtype=torch.long, device=device)

    def __call__(self, x: Tensor, t: Tensor, idx: Tensor | None) -> Tensor:
        if idx is None:
            self.counts += 1
        else:
            self.counts.index_add_(0, idx, torch.ones_like(idx))
        return self.model(x, t.expand(x.shape[0]))


class AmplitudeCalibration:
    """OSS amplitude calibration: after each step, affinely map every sample's 5%/95% quantiles onto
    a teacher's quantiles at the target timestep (``profile``: (T, 2) tensor of [q05, q95])."""

    def __init__(self, profile: Tensor) -> None:
        self.profile = profile

    def __call__(self, x: Tensor, t_target: Tensor) -> Tensor:
        flat = x.flatten(1)
        q = torch.quantile(flat, torch.tensor([0.05, 0.95], device=x.device, dtype=x.dtype), dim=1)  # (2, n)
        lo, hi = q[0], q[1]
        target = self.profile.to(x.device)[t_target.expand(flat.shape[0])]
        scale = (target[:, 1] - target[:, 0]) / (hi - lo).clamp(min=1e-6)
        shape = (-1,) + (1,) * (x.dim() - 1)
        return (x - lo.view(shape)) * scale.view(shape) + target[:, 0].view(shape)


def next_evaluated(evaluate: Tensor) -> Tensor:
    """(B, L) mask → (B, L) index of each sample's next evaluated grid step after i (L = the final x̂0)."""
    batch, length = evaluate.shape
    table = torch.empty(batch, length, dtype=torch.long)
    upcoming = torch.full((batch,), length, dtype=torch.long)
    for i in range(length - 1, -1, -1):
        table[:, i] = upcoming
        upcoming = torch.where(evaluate[:, i], torch.tensor(i), upcoming)
    return table


@torch.no_grad()
def sample(model: torch.nn.Module, schedule: NoiseSchedule, x: Tensor, plan: Plan, *, eta: float = 0.0,
           clamp: bool = True, generator: torch.Generator | None = None,
           calibration: AmplitudeCalibration | None = None, trajectory: bool = False) -> SampleResult:
    """Denoise ``x`` (pure noise at grid[0]) along ``plan``; the last step of every sample goes to x̂0.

    ``trajectory=True`` (dense plans only: teacher runs) also returns the state and the x̂0 prediction at
    every grid step (what the DP searches compare against).
    """
    device, batch, length = x.device, x.shape[0], len(plan.grid)
    if plan.evaluate is not None and not bool(plan.evaluate[:, 0].all()):
        raise UserError("every sample must evaluate the first grid step (x_T is only defined there)")
    grid = plan.grid.to(device)
    # Coefficients are formed in float64 (0-dim or (n,1,1,1) operands) and applied to float32 states:
    # over 1000 steps float32 ratios like ᾱ_t/ᾱ_s drift by ~1e-4.
    abar = schedule.alphas_cumprod.to(device=device, dtype=torch.float64)
    a_ext = torch.cat([abar[grid], torch.ones(1, device=device, dtype=torch.float64)])  # index L = "jump to x̂0"
    t_ext = torch.cat([grid, torch.zeros(1, dtype=torch.long, device=device)])
    counter = NFECounter(model, batch, device)
    evaluated = torch.zeros(batch, length, dtype=torch.bool, device=device)
    x = x.clone()
    if trajectory and not plan.dense:
        raise UserError("trajectories are recorded for static policies only")
    states = torch.empty((length, *x.shape), device=device, dtype=x.dtype) if trajectory else None
    denoised = torch.empty_like(states) if trajectory else None
    use_dpm = "dpmpp-2m" in plan.solvers
    if use_dpm:
        prev_x0 = torch.zeros_like(x)
        h_prev = torch.full((batch,), float("nan"), device=device, dtype=torch.float64)

    # Who is active at each grid step, prepared before the loop.
    if plan.evaluate is not None:
        targets = next_evaluated(plan.evaluate).to(device)
        lists = [plan.evaluate[:, i].nonzero().squeeze(1) for i in range(length)]
        sizes = [len(ix) for ix in lists]
        active_lists = torch.split(torch.cat(lists).to(device), sizes)
    if plan.skip_base is not None:
        skip_base = plan.skip_base.to(device=device, dtype=torch.float32)
        next_eval = torch.zeros(batch, dtype=torch.long, device=device)

    for i in range(length):
        if plan.dense:
            idx = None
        elif plan.evaluate is not None:
            if sizes[i] == 0:
                continue
            idx = active_lists[i]
        else:
            idx = (next_eval == i).nonzero().squeeze(1)  # the adaptive rule's one sync per step
            if idx.numel() == 0:
                continue
        if states is not None:
            states[i] = x
        xi = x if idx is None else x.index_select(0, idx)
        eps = counter(xi, grid[i], idx)
        a_t = a_ext[i]
        x0, eps_c = predict_x0(xi, eps, a_t, clamp)
        if denoised is not None:
            denoised[i] = x0

        if idx is None:
            target = i + 1
            a_s = a_ext[target]
        else:
            if plan.evaluate is not None:
                target = targets[idx, i]
            else:
                r = eps.flatten(1).norm(dim=1) / eps[0].numel() ** 0.5
                p = (skip_base[i + 1:][None] / r[:, None]).clamp(max=1.0)
                keep = torch.rand(p.shape, generator=generator, device=device) >= p
                keep = torch.cat([keep, torch.ones(len(idx), 1, dtype=torch.bool, device=device)], dim=1)
                target = i + 1 + keep.to(torch.uint8).argmax(dim=1)
                next_eval[idx] = target
            a_s = a_ext[target].view(-1, *([1] * (x.dim() - 1)))

        solver = plan.solvers[i]
        needs_noise = solver == "ddpm" or (solver == "ddim" and eta > 0)
        noise = None
        if needs_noise:
            noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
            noise = noise if idx is None else noise.index_select(0, idx)
        if solver == "ddim":
            x_next = ddim_step(xi, x0, eps_c, a_t, a_s, noise, eta)
        elif solver == "ddpm":
            x_next = ancestral_step(xi, x0, a_t, a_s, noise)
        else:
            px = prev_x0 if idx is None else prev_x0.index_select(0, idx)
            hp = h_prev if idx is None else h_prev.index_select(0, idx)
            hp = hp.view(-1, *([1] * (x.dim() - 1)))
            x_next = dpmpp_2m_step(xi, x0, a_t, a_s, px, hp)
            h = ((log_snr(a_s) - log_snr(a_t)) / 2).reshape(-1)
            if idx is None:
                prev_x0, h_prev = x0, h.expand(batch)
            else:
                prev_x0 = prev_x0.index_copy(0, idx, x0)
                h_prev = h_prev.index_copy(0, idx, h)

        x_next = x_next.to(x.dtype)
        x0 = x0.to(x.dtype)
        final = a_s == 1
        if calibration is not None:
            x_next = calibration(x_next, t_ext[target] if idx is not None else t_ext[target].view(1))
        x_next = torch.where(final, x0, x_next) if idx is not None else (x0 if target == length else x_next)
        if idx is None:
            x = x_next
            evaluated[:, i] = True
        else:
            x = x.index_copy(0, idx, x_next)
            evaluated[idx, i] = True
    return SampleResult(x, counter.counts, evaluated, plan.grid, states, denoised)
