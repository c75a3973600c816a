"""Gradient-learned timesteps (LD3, Tong et al., ICLR 2025): descend on the steps themselves.

A K-evaluation schedule is K logits ξ. Their softmax is K positive increments of a coordinate u ∈ [0, 1] that
runs from t = T−1 (u = 0, where x_T lives: fixed) to t = 0 (u = 1); the evaluation times are u_0 = 0 < u_1 < … <
u_{K−1} < 1, so every schedule the logits can express is ordered, distinct and inside the range, and the last
evaluation may sit anywhere above t = 0 (its step then jumps to x̂0, as every schedule's last step does). u is
linear in the log-SNR λ (``space="logsnr"``, LD3's ``time_mode=lambda``) or in the noise level σ (``"sigma"``);
t = λ⁻¹(λ) is the schedule's own piecewise-linear inverse, so d(x0)/dξ flows through every solver coefficient and
the network's time input (``sample(..., differentiable=True)``).

The loss is the distance of the student's x0 to a teacher's x0 from the same x_T: per-pixel L2 by default (LD3's), or
the squared distance of the proxy feature network's features (``loss="features"``). ``loss="fid"`` needs no teacher:
the batch's proxy-FID against the feature file's reference statistics, differentiable (the matrix square root
through a symmetric eigendecomposition). On the shipped model it lowers proxy-FID the most (UniPC at NFE 5, 2000
held-out samples × 3 seeds: 2.92 against 3.69 for ``features`` and 4.77 for ``l2``, docs/methods.md); matching the
teacher pixel by pixel lowers the L2, but the output closest to it can be a blurrier one. Soft teacher
forcing lets each training sample's start x′_T move inside a ball of radius r = 0.001·D/K² around its x_T
(projected SGD, LD3's radius): the few-step student cannot reach the teacher's output exactly, and a nearby start
it *can* map there keeps the loss about the schedule rather than about the unreachable part. Validation uses
the true x_T of samples the training never saw; the schedule best on validation is kept.

Optimiser as LD3: RMSprop (lr 5e-3, momentum 0.9) on ξ, gradient norm clipped at 1, learning rate × 0.8 after
``patience`` validations without improvement. The model's weights are frozen: only ξ (and x′_T) get gradients.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from stepdrop_search.diffusion.runtimes import DEFAULT_RUNTIME, Runtime
from stepdrop_search.diffusion.sampler import Plan, sample
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.errors import UserError
from stepdrop_search.objectives.features import FeatureFile
from stepdrop_search.progress import advance

SPACES = ("logsnr", "sigma")
LOSSES = ("l2", "features", "fid")
#: The smallest increment of u an initial schedule is given (a step at t = 0 exactly has none: log 0).
MIN_INCREMENT = 1e-8

Tensor = torch.Tensor


class StepLogits:
    """The map ξ ∈ ℝ^K → K strictly decreasing timesteps (module docstring), and its inverse for a warm start."""

    def __init__(self, schedule: NoiseSchedule, steps: int, space: str = "logsnr") -> None:
        if space not in SPACES:
            raise UserError(f"unknown step space {space!r}; choose one of {', '.join(SPACES)}")
        if steps < 1:
            raise UserError("a learned schedule needs at least one step")
        self.schedule, self.steps, self.space = schedule, steps, space
        ends = torch.tensor([schedule.T - 1, 0], dtype=torch.float64)
        self.start, self.end = self._coordinate(ends)

    def _coordinate(self, t: Tensor) -> Tensor:
        lam = self.schedule.log_snr_at(t.double())
        return lam if self.space == "logsnr" else torch.exp(-lam / 2)

    def _time(self, z: Tensor) -> Tensor:
        lam = z if self.space == "logsnr" else -2 * torch.log(z)
        return self.schedule.timestep_at_log_snr(lam)

    def timesteps(self, logits: Tensor) -> Tensor:
        """(K,) float64 timesteps, t_0 = T−1 exactly; differentiable in ``logits``."""
        u = torch.cumsum(torch.softmax(logits.double(), 0), 0)[:-1]
        t = self._time(self.start + u * (self.end - self.start))
        return torch.cat([t.new_full((1,), float(self.schedule.T - 1)), t])

    def logits_for(self, steps: Tensor) -> Tensor:
        """The logits whose :meth:`timesteps` are ``steps`` (first step at T−1; a step at t = 0 gets the smallest
        increment): learning starts from a known schedule, not from scratch."""
        steps = torch.as_tensor(steps, dtype=torch.float64)
        if len(steps) != self.steps:
            raise UserError(f"an initial schedule of {len(steps)} steps for a {self.steps}-step learned schedule")
        u = (self._coordinate(steps) - self.start) / (self.end - self.start)
        u = torch.cat([u[1:], u.new_ones(1)])
        increments = torch.diff(torch.cat([u.new_zeros(1), u])).clamp(min=MIN_INCREMENT)
        return torch.log(increments / increments.sum())


@dataclass
class GradientResult:
    steps: Tensor  # (K,) float64 timesteps, the best on validation
    solver: SolverSpec  # the solver they were learned for; a learned solver's with its coefficients of the best epoch
    validation_loss: float
    initial_validation_loss: float
    epochs: int
    forward_nfe: int  # network evaluations run forward (training, forcing and validation)
    backward_nfe: int  # evaluations differentiated through (each costs about two forwards)
    seconds: float
    history: list[dict] = field(default_factory=list)  # per epoch: train loss, validation loss, learning rate


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """The model's weights without gradients (restored after): only the schedule learns."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def frozen_solver(solver: SolverSpec) -> SolverSpec:
    """The spec as it is now, for keeping: a learned solver's coefficient tensor read into rows of floats."""
    return replace(solver, coefficients=solver.coefficient_rows()) if isinstance(solver.coefficients, Tensor) else solver


def batch_fid(features: torch.Tensor, mu: Tensor, sqrt_sigma: Tensor, trace_sigma: Tensor) -> Tensor:
    """Fréchet distance of a batch of features (B, d) to N(mu, Σ) given Σ^{1/2}, differentiable:
    ‖m − mu‖² + tr C + tr Σ − 2 tr (Σ^{1/2} C Σ^{1/2})^{1/2}, the last through eigenvalues of a symmetric matrix."""
    f = features.double()
    m = f.mean(0)
    centred = f - m
    cov = centred.T @ centred / (len(f) - 1)
    inner = sqrt_sigma @ cov @ sqrt_sigma
    roots = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=1e-12).sqrt()
    return (m - mu).pow(2).sum() + cov.trace() + trace_sigma - 2 * roots.sum()


def batch_loss(kind: str, features: FeatureFile | None) -> Callable[[Tensor, Tensor], Tensor]:
    """(student x0, teacher x0) → the loss to descend (scalar, a mean over the batch for the per-sample kinds)."""
    if kind not in LOSSES:
        raise UserError(f"unknown gradient loss {kind!r}; choose one of {', '.join(LOSSES)}")
    if kind == "l2":
        return lambda x, y: (x - y).pow(2).mean()
    if features is None:
        raise UserError(f"the {kind} loss needs a feature file (--features)")
    net = features.net
    if kind == "features":
        def feature_loss(x: Tensor, y: Tensor) -> Tensor:
            with torch.no_grad():
                target = net(y)[0]
            return (net(x)[0] - target).pow(2).mean()
        return feature_loss
    device = next(net.parameters()).device  # the reference statistics load on the CPU; the features come from the net's
    sigma = features.reference["sigma"].double().to(device)
    values, vectors = torch.linalg.eigh(sigma)
    sqrt_sigma = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
    mu, trace = features.reference["mu"].double().to(device), sigma.trace()
    return lambda x, y: batch_fid(net(x)[0], mu, sqrt_sigma, trace)


def learn_schedule(model: nn.Module, schedule: NoiseSchedule, solver: SolverSpec, steps: int, *,
                   train: tuple[Tensor, Tensor], validation: tuple[Tensor, Tensor], init: Tensor | None = None,
                   space: str = "logsnr", loss: str = "l2", features: FeatureFile | None = None,
                   epochs: int = 20, batch_size: int = 16, lr: float = 5e-3, patience: int = 5,
                   forcing: bool = True, seconds: float | None = None, seed: int = 0, runtime: Runtime = DEFAULT_RUNTIME,
                   coefficient_lr: float | None = None, log: Callable[[str], None] = lambda m: None) -> GradientResult:
    """Learn ``steps`` evaluation times for ``solver`` (LD3; module docstring), and with them a learned solver's
    coefficients (``solver.learned``: :mod:`~stepdrop_search.diffusion.solvers.learned`), from the spec's own or from 0,
    which is its base solver; ``coefficient_lr`` is their learning rate (default ``lr``).

    ``train`` / ``validation``: (x_T, teacher x0) pairs, disjoint (the ``fid`` loss reads no teacher: pass x_T twice);
    ``init``: the starting schedule (default: uniform in the chosen space); ``seconds``: stop after the epoch that
    passes it (the best schedule so far is kept). Soft teacher forcing is off for ``fid`` (there is no teacher output
    to make reachable; moving x_T would only fit the noise).
    """
    if solver.solver.stochastic(solver.eta):
        raise UserError(f"solver {solver.name} draws noise; gradient-learned steps need a deterministic solver "
                        "(ddim, dpmpp-2m, dpmpp-3m, ipndm, unipc, heun)")
    if epochs < 1 or batch_size < 1:
        raise UserError("--gradient-epochs and the batch size must be ≥ 1")
    (x_train, y_train), (x_val, y_val) = train, validation
    device, dtype = x_train.device, x_train.dtype
    param = StepLogits(schedule, steps, space)
    logits = nn.Parameter(param.logits_for(init) if init is not None else torch.zeros(steps, dtype=torch.float64))
    if solver.solver.learned:
        # Adam for both, not LD3's RMSprop: RMSprop's first steps are ~10× its learning rate (its square average starts
        # at 0, with no bias correction). Alone on the steps that is a harmless early jump; next to learned coefficients
        # it moved the steps away while the coefficients fitted them, and validation FID rose every epoch (measured at
        # NFE 4 and 5 on the previous shipped model, 152bff3d, docs/methods.md).
        start_rows = solver.coefficients if solver.coefficients is not None else torch.zeros(steps, solver.solver.coefficient_width)
        coefficients = nn.Parameter(torch.as_tensor(start_rows, dtype=torch.float64).to(device).clone())
        optimisers = [torch.optim.Adam([logits], lr=lr), torch.optim.Adam([coefficients], lr=coefficient_lr or lr)]
        solver = replace(solver, coefficients=coefficients)
    else:
        optimisers = [torch.optim.RMSprop([logits], lr=lr, momentum=0.9)]
    learned = [p for o in optimisers for group in o.param_groups for p in group["params"]]
    distance = batch_loss(loss, features)
    forcing = forcing and loss != "fid"
    dim = x_train[0].numel()
    radius = 0.001 * dim / steps ** 2
    forcing_lr = 12.0 / steps
    start = x_train.clone()
    nfe = {"forward": 0, "backward": 0}

    def student(x: Tensor, grid: Tensor, grad: bool) -> Tensor:
        run = sample(model, schedule, x, Plan(grid, (solver.name,) * steps), eta=solver.eta, solver=solver,
                     runtime=runtime, differentiable=grad)
        spent = int(run.nfe.sum())
        nfe["forward"] += spent
        nfe["backward"] += spent if grad else 0
        return run.x0

    def validate(grid: Tensor) -> float:
        """The loss on the whole validation set (one batch for ``fid``: its value depends on the batch size)."""
        with torch.no_grad():
            if loss == "fid":
                return float(distance(student(x_val, grid, False), y_val))
            return sum(float(distance(student(x_val[s:s + 256], grid, False), y_val[s:s + 256])) * len(x_val[s:s + 256])
                       for s in range(0, len(x_val), 256)) / len(x_val)

    clock = time.perf_counter()
    # the start as given (not its round trip through the logits): when no epoch improves, the result *is* the start
    best_steps = torch.as_tensor(init, dtype=torch.float64) if init is not None else param.timesteps(logits.detach())
    best_solver = frozen_solver(solver)
    initial = best = validate(best_steps)
    log(f"gradient ({solver.name}, {steps} steps, {space}): validation loss {initial:.5f} at the start")
    history: list[dict] = []
    generator = torch.Generator().manual_seed(seed)
    stale = 0
    with frozen(model):
        for epoch in range(1, epochs + 1):
            order = torch.randperm(len(x_train), generator=generator).to(device)
            seen = 0.0
            for batch in order.split(batch_size):
                x = start[batch].clone().requires_grad_(forcing)
                value = distance(student(x, param.timesteps(logits), True), y_train[batch])
                for o in optimisers:
                    o.zero_grad()
                value.backward()
                nn.utils.clip_grad_norm_(learned, 1.0)
                for o in optimisers:
                    o.step()
                seen += float(value.detach()) * len(batch)
                if forcing:  # projected SGD of each start inside its ball around x_T
                    with torch.no_grad():
                        moved = x - forcing_lr * x.grad - x_train[batch]
                        norm = moved.flatten(1).norm(dim=1).clamp(min=1e-12)
                        scale = (radius / norm).clamp(max=1.0).view(-1, *([1] * (x.dim() - 1)))
                        start[batch] = (x_train[batch] + moved * scale).to(dtype)
            grid = param.timesteps(logits.detach())
            value = validate(grid)
            if value < best:
                best, best_steps, best_solver, stale = value, grid, frozen_solver(solver), 0
            else:
                stale += 1
                if stale >= patience:
                    for group in (g for o in optimisers for g in o.param_groups):
                        group["lr"] *= 0.8
                    stale = 0
            history.append({"epoch": epoch, "train": seen / len(x_train), "validation": value,
                            "lr": optimisers[0].param_groups[0]["lr"]})
            advance(log, f"gradient epoch {epoch}: train {seen / len(x_train):.5f}, validation {value:.5f} "
                         f"(best {best:.5f}); {time.perf_counter() - clock:.0f} s")
            if seconds is not None and time.perf_counter() - clock > seconds:
                break
    if not math.isfinite(best):
        raise UserError("the gradient-learned schedule diverged (validation loss not finite); lower the learning rate")
    return GradientResult(best_steps, best_solver, best, initial, len(history), nfe["forward"], nfe["backward"],
                          time.perf_counter() - clock, history)
