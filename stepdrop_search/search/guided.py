"""Guidance in the search, for a class-conditional model: what the pool holds and how a trial proposes an interval.

A guided step costs two evaluations, so at a budget of N evaluations a policy with k guided steps has N − k steps (for
a solver that evaluates once per step). The pool holds every solver × schedule unguided (N steps), with constant
guidance at the scales :data:`POOL_SCALES` (N/2 steps, every one guided), and with the published interval
:data:`POOL_INTERVAL` at :data:`POOL_INTERVAL_SCALES` (as many steps as N buys once the guided ones are counted twice):
the best constant-guidance policy is a pool row, which the export must beat like any other, and the interval a user
would try first reaches the judge's race even when the coach, whose pooled FID barely sees class fidelity, would not
propose it. A trial picks k (0 … N/2), the scale, and where the k guided steps
sit among the N − k: a run of consecutive steps, i.e. an interval of σ (Kynkäänniemi et al. 2024), whose edges are
placed halfway (in log σ) between the first guided step and its unguided neighbour, so the exported interval reads
the same whatever the tool's rounding. Solvers whose evaluations per step vary (Heun) are searched unguided here:
their pool rows carry constant guidance.
"""

from __future__ import annotations

import math

import optuna
import torch

from stepdrop_search.diffusion.guidance import Guidance
from stepdrop_search.policies.base import Policy

#: the pool's constant-guidance scales (w = 1 is the unguided row)
POOL_SCALES = (1.5, 2.0, 3.0, 4.0)
#: the interval Kynkäänniemi et al. (2024) publish for EDM2, (0.28, 5.42] (closed here, as every interval of
#: :class:`Guidance`), and the scales the pool holds it at
POOL_INTERVAL = (0.28, 5.42)
POOL_INTERVAL_SCALES = (2.0, 3.0)
#: the scales a trial may propose (log-uniform)
SCALE_RANGE = (1.0, 8.0)


def pool_guidances() -> list[Guidance]:
    """The guidance of the pool's guided rows: constant at :data:`POOL_SCALES`, then the published interval."""
    return [Guidance(scale) for scale in POOL_SCALES] + [Guidance(scale, *POOL_INTERVAL) for scale in POOL_INTERVAL_SCALES]


def guides_some_steps(policy: Policy, guidance: Guidance) -> bool:
    """Whether ``guidance`` guides some but not all of ``policy``'s steps: an interval row that guides none is the
    unguided row, one that guides all is the constant row (both already in the pool)."""
    if guidance.constant:
        return True
    active = guidance.active(step_sigmas(policy))
    return bool(active.any()) and not bool(active.all())


def step_sigmas(policy: Policy) -> torch.Tensor:
    """k-diffusion's σ = √((1 − ᾱ)/ᾱ) at each of a static policy's steps, highest first."""
    abar = policy.schedule.alphas_cumprod_at(policy.timesteps())
    return ((1 - abar) / abar).sqrt().double()


def interval_over(policy: Policy, start: int, count: int, scale: float) -> Guidance:
    """Guidance at steps ``start`` … ``start + count − 1`` of ``policy`` (0 = the noisiest): the σ interval that holds
    exactly those steps, its edges halfway in log σ to the unguided neighbours (open-ended at either end of the grid)."""
    sigmas = step_sigmas(policy).tolist()
    if count <= 0 or scale == 1:
        return Guidance()
    end = start + count - 1
    high = math.inf if start == 0 else math.sqrt(sigmas[start - 1] * sigmas[start])
    low = 0.0 if end == len(sigmas) - 1 else math.sqrt(sigmas[end] * sigmas[end + 1])
    return Guidance(scale, low, high)


def suggest_guided_steps(trial: optuna.Trial, nfe: int) -> int:
    """How many of a single-evaluation solver's steps a trial guides (each costs one more evaluation)."""
    return trial.suggest_int("guided_steps", 0, nfe // 2)


def suggest_guidance(trial: optuna.Trial, policy: Policy, guided: int) -> Guidance:
    """The scale and the position of the ``guided`` steps among ``policy``'s (a fraction of the free positions, so the
    parameter's range is the same in every trial)."""
    if guided == 0:
        return Guidance()
    scale = trial.suggest_float("guidance", *SCALE_RANGE, log=True)
    free = len(policy.timesteps()) - guided
    start = round(trial.suggest_float("guided_position", 0.0, 1.0) * free)
    return interval_over(policy, start, guided, scale)
