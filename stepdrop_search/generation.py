"""Sampling a policy with common random numbers: the bridge between policies and the sampler.

For a given seed, sample i of every policy starts from the same x_T, flips the same coin-flip uniform at
grid step j (StepDrop's plan, the adaptive rule) and gets the same solver noise at grid step j; differences
between policies are then differences of the policies, not of the noise. Every number is drawn on the CPU
(so results match across devices) from streams of (seed, stream, sample index), so sample i's result does
not depend on the batch size, on the samples beside it or on which steps they skip
(:class:`~stepdrop_search.diffusion.sampler.SampleStreams`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import SimpleNamespace

import numpy as np
import torch

from stepdrop_search.diffusion.guidance import Guidance, check_conditioning, class_labels, conditional_classes
from stepdrop_search.diffusion.runtimes import DEFAULT_RUNTIME, Runtime
from stepdrop_search.diffusion.sampler import AmplitudeCalibration, SampleResult, SampleStreams, sample
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.diffusion.solvers import SolverSpec, spec_for_nfe
from stepdrop_search.errors import UserError
from stepdrop_search.policies.base import Policy
from stepdrop_search.progress import advance, phase


def initial_noise(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """x_T for sample indices 0..n−1 of ``seed``: the same tensor for every policy and device.

    Drawn as it always was (torch's CPU generator seeded with ``seed``), so deterministic results published
    before the per-sample streams still reproduce bit for bit; the other streams are derived elsewhere."""
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


def noise_batches(network: torch.nn.Module, n: int, seed: int, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(first sample index, that batch of our x_T on the network's device and in its dtype) over ``n`` samples of
    ``seed``: how every external tool's loop (diffusers, k-diffusion, ComfyUI's path) starts where our sampler does."""
    param = next(network.parameters())
    cfg = network.config
    x_T = initial_noise(n, (cfg.in_channels, cfg.image_size, cfg.image_size), seed)
    for start in range(0, n, batch_size):
        yield start, x_T[start:start + batch_size].to(param.device, param.dtype)


def generate(model: torch.nn.Module, schedule: NoiseSchedule, policy: Policy, solver: SolverSpec, *, n: int,
             seed: int = 0, batch_size: int = 256, runtime: Runtime = DEFAULT_RUNTIME,
             calibration: AmplitudeCalibration | None = None, x_T: torch.Tensor | None = None,
             log: Callable[[str], None] | None = None, first: int = 0, guidance: Guidance | None = None,
             classes: tuple[int, ...] | None = None) -> SampleResult:
    """Draw ``n`` samples of ``policy`` in batches; returns the concatenated :class:`SampleResult` (on CPU).

    A class-conditional model samples class i mod K for sample i (or the requested ``classes``, in turn), with
    ``guidance`` (:mod:`stepdrop_search.diffusion.guidance`).

    Sample i uses x_T[i] and the streams of (``seed``, i), whatever ``batch_size`` is; ``first`` starts at sample index
    ``first`` of the seed (so samples ``first … first+n−1`` are those of a run of ``first + n``); an explicit ``x_T``
    replaces only the starting noise (which lets a study vary x_T and solver noise separately). ``runtime``: the conventions
    sampled under (:mod:`stepdrop_search.diffusion.runtimes`). ``log`` hears a phase of as many items as batches, and each
    batch done (:mod:`stepdrop_search.progress`)."""
    if policy.schedule.hash != schedule.hash:
        raise UserError(f"the policy was made for noise schedule {policy.schedule.hash}, the model uses {schedule.hash}")
    if n < 1 or batch_size < 1:
        raise UserError("the number of samples and the batch size must be ≥ 1")
    runtime.check_solver(solver.name, solver.eta)  # before any network evaluation (the sampler checks a plan's others)
    param = next(model.parameters())
    cfg = model.config
    if x_T is None:
        x_T = initial_noise(first + n, (cfg.in_channels, cfg.image_size, cfg.image_size), seed)[first:]
    check_conditioning(model, guidance, classes)
    num_classes = conditional_classes(model)
    parts = []
    if log is not None:
        phase(log, f"sampling {n} images in batches of {batch_size}", -(-n // batch_size))
    for start in range(0, n, batch_size):
        x = x_T[start:start + batch_size].to(param.device, param.dtype)
        streams = SampleStreams(seed, range(first + start, first + start + x.shape[0]))
        plan = policy.plan(x.shape[0], streams, solver.name)
        labels = class_labels(streams.indices, num_classes, classes) if num_classes else None
        parts.append(sample(model, schedule, x, plan, eta=solver.eta, solver=solver, runtime=runtime, streams=streams,
                            calibration=calibration, labels=labels, guidance=guidance))
        if log is not None:
            advance(log, f"{start + x.shape[0]}/{n} images")
    return SampleResult(torch.cat([p.x0.cpu() for p in parts]), torch.cat([p.nfe.cpu() for p in parts]),
                        torch.cat([p.evaluated.cpu() for p in parts]), parts[0].grid)


def amplitude_profile(model: torch.nn.Module, schedule: NoiseSchedule, *, n: int = 64, steps: int = 100,
                      seed: int = 1234, runtime: Runtime = DEFAULT_RUNTIME) -> torch.Tensor:
    """Teacher 5%/95% quantile profile over t for OSS amplitude calibration: (T, 2), linearly interpolated
    in t from the states of a ``steps``-step DDIM teacher run on ``n`` samples."""
    from stepdrop_search.policies.kinds import Uniform

    teacher = Uniform(nfe=steps, schedule=schedule)
    cfg = model.config
    x = initial_noise(n, (cfg.in_channels, cfg.image_size, cfg.image_size), seed).to(next(model.parameters()).device)
    run = sample(model, schedule, x, teacher.plan(n), trajectory=True, runtime=runtime)
    levels = torch.tensor([0.05, 0.95], device=x.device)
    quantiles = torch.quantile(run.trajectory.flatten(2), levels, dim=2).mean(2).T.cpu().double()  # (L, 2)
    t = run.grid.flip(0).double().numpy()
    all_t = np.arange(schedule.T, dtype=np.float64)
    return torch.from_numpy(np.stack([np.interp(all_t, t, quantiles.flip(0)[:, k].numpy()) for k in range(2)], 1)).float()


class _StandIn(torch.nn.Module):
    """A network that returns its input, conditional on one class: what :func:`document_nfe` runs the sampler with
    to count a guided document's evaluations (which depend on the steps, the solver and the interval, not on ε)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(num_classes=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return x


def document_nfe(document, *, expected: bool = True) -> float:
    """Network evaluations per sample that ``document`` spends: the solver's NFE for its steps (the expected steps of
    a stochastic kind, or its nominal ``nfe`` with ``expected=False``) plus, under guidance, each guided evaluation's
    second (unconditional) one — counted by running the sampler on a stand-in network over 64 samples, so every
    solver and kind counts as it samples (an adaptive kind's skips follow the stand-in's ε, so its figure is an
    estimate)."""
    solver, policy = document.solver, document.policy
    steps = policy.expected_nfe() if expected else policy.nfe
    guidance = document.guidance
    if guidance is None or guidance.scale == 1:
        return solver.solver.nfe(steps)
    n = 1 if policy.static else 64
    streams = SampleStreams(0, range(n))
    plan = policy.plan(n, streams, solver.name)
    with torch.no_grad():
        run = sample(_StandIn(), policy.schedule, torch.zeros(n, 1, 2, 2), plan, eta=solver.eta, solver=solver,
                     runtime=document.runtime, streams=streams, labels=torch.zeros(n, dtype=torch.long),
                     guidance=guidance)
    return float(run.nfe.float().mean())


def largest_within(solver: str, nfe: int, build: Callable[[SolverSpec, int], object | None],
                   runtime: Runtime = DEFAULT_RUNTIME):
    """``build(spec, steps)`` on the largest grid of ``solver`` whose run spends at most ``nfe`` evaluations per sample
    (expected evaluations for a stochastic kind), a guided document's second evaluations counted
    (:func:`document_nfe`); None when no grid fits. Why a search down from ``nfe``: how many steps a guidance interval
    covers depends on where the steps fall, so the cost of a grid is known only once it is built. ``build`` returns
    None for a grid it cannot make (a schedule that cannot place that many steps); the next smaller one is tried."""
    tried = None
    for budget in range(nfe, 0, -1):
        try:
            spec, steps = spec_for_nfe(solver, budget, runtime=runtime)
        except UserError:
            return None  # too few evaluations for one step, and fewer will not do
        if (spec, steps) == tried:
            continue  # the same grid as the last budget (Heun's steps change every other one)
        tried = spec, steps
        document = build(spec, steps)
        if document is not None and document_nfe(document) <= nfe:
            return document
    return None


def generate_document(loaded, document, *, n: int, seed: int = 0, batch_size: int = 256, first: int = 0,
                      classes: tuple[int, ...] | None = None, calibration: AmplitudeCalibration | None = None,
                      log: Callable[[str], None] | None = None) -> SampleResult:
    """:func:`generate` of a policy document (steps, solver, runtime and guidance) on a loaded model."""
    return generate(loaded.model, loaded.schedule, document.policy, document.solver, n=n, seed=seed,
                    batch_size=batch_size, runtime=document.runtime, calibration=calibration, log=log, first=first,
                    guidance=document.guidance, classes=classes)


def sample_policy(loaded, document, *, n: int, seed: int = 0, batch_size: int = 256, calibrate: bool = False,
                  classes: tuple[int, ...] | None = None, log: Callable[[str], None] | None = None) -> SampleResult:
    """What ``stepdrop-search sample`` computes: ``n`` samples of a policy document on a loaded model under the document's
    runtime, optionally with OSS amplitude calibration against a 100-step DDIM teacher's quantile profile."""
    calibration = AmplitudeCalibration(amplitude_profile(loaded.model, loaded.schedule, runtime=document.runtime)) \
        if calibrate else None
    return generate_document(loaded, document, n=n, seed=seed, batch_size=batch_size, classes=classes,
                             calibration=calibration, log=log)
