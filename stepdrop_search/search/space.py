"""Search spaces: turn an Optuna trial into a valid policy of any kind, and a policy back into parameters.

``explicit`` schedules are parameterised by positive gaps normalised to the span, so every trial is a
strictly decreasing set of distinct steps inside [0, T) whatever values the sampler proposes; the
boundary steps are parameters too unless fixed. The other kinds search their own parameters.
"""

from __future__ import annotations

import math

import optuna
import torch

from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.errors import UserError
from stepdrop_search.policies import PolicyDocument
from stepdrop_search.policies.base import distinct_decreasing
from stepdrop_search.policies.kinds import (
    PROFILES,
    SHIFT_SPACINGS,
    SPACINGS,
    Adaptive,
    Explicit,
    Importance,
    Karras,
    Shift,
    SkippedStep,
    StepDrop,
    Uniform,
)

SEARCHABLE = ("explicit", "uniform", "karras", "shift", "importance", "skipped-step", "stepdrop", "adaptive")
#: the time shifts a ``shift`` search tries (log-uniform): below 1 crowds steps at low noise, 16 at high noise
SHIFT_RANGE = (0.25, 16.0)
GAP_RANGE = (0.02, 1.0)


def last_step_range(T: int, nfe: int) -> tuple[int, int]:
    return 0, max(0, min(T // 5, T - nfe))


def gaps_to_steps(gaps: list[float], t_first: int, t_last: int, T: int) -> torch.Tensor:
    """t_0 = t_first, t_k = t_first − (t_first − t_last)·Σ_{i≤k} g_i / Σ g, then made distinct."""
    if not gaps:
        return torch.tensor([t_first])
    g = torch.tensor(gaps, dtype=torch.float64)
    cum = torch.cumsum(g, 0) / g.sum()
    values = torch.cat([torch.tensor([float(t_first)]), t_first - (t_first - t_last) * cum])
    return distinct_decreasing(values, T)


def steps_to_params(steps: list[int], free_boundary: bool, prefix: str = "") -> dict:
    """Inverse of :func:`gaps_to_steps` for seeding a study with a known schedule (``prefix`` as in
    :func:`suggest_document`). Gaps below 2% of the largest are raised to it, so a seed that crowds its steps
    more than that comes back slightly moved."""
    diffs = [a - b for a, b in zip(steps, steps[1:], strict=False)]
    top = max(diffs) if diffs else 1
    params = {f"{prefix}gap_{i}": min(GAP_RANGE[1], max(GAP_RANGE[0], d / top)) for i, d in enumerate(diffs)}
    if free_boundary:
        params |= {f"{prefix}t_first": round(steps[0]), f"{prefix}t_last": round(steps[-1])}
    return params


def suggest_document(trial: optuna.Trial, kind: str, nfe: int, schedule: NoiseSchedule, *, solver: SolverSpec = SolverSpec(),
                     free_boundary: bool = True, search_eta: bool = False, prefix: str = "") -> PolicyDocument:
    """A valid policy document from ``trial``'s suggestions. ``prefix`` names the explicit kind's parameters apart
    when one study searches several grid sizes (solvers that spend their NFE on different numbers of steps)."""
    T = schedule.T
    if kind == "explicit":
        t_first, t_last = T - 1, 0
        if free_boundary:
            t_first = trial.suggest_int(f"{prefix}t_first", T // 2, T - 1)
            lo, hi = last_step_range(T, nfe)
            t_last = trial.suggest_int(f"{prefix}t_last", lo, min(hi, t_first - nfe + 1))
        gaps = [trial.suggest_float(f"{prefix}gap_{i}", *GAP_RANGE, log=True) for i in range(nfe - 1)]
        policy = Explicit(steps=tuple(gaps_to_steps(gaps, t_first, t_last, T).tolist()), schedule=schedule)
    elif kind == "uniform":
        policy = Uniform(nfe=nfe, spacing=trial.suggest_categorical("spacing", list(SPACINGS)), schedule=schedule)
    elif kind == "karras":
        policy = Karras(nfe=nfe, rho=trial.suggest_float("rho", 1.0, 15.0), schedule=schedule)
    elif kind == "shift":
        policy = Shift(nfe=nfe, shift=trial.suggest_float("shift", *SHIFT_RANGE, log=True),
                       spacing=trial.suggest_categorical("spacing", list(SHIFT_SPACINGS)), schedule=schedule)
    elif kind == "importance":
        high = trial.suggest_float("fraction_high", 0.05, 0.45)
        low = trial.suggest_float("fraction_low", 0.05, 0.45)
        edges = (trial.suggest_int("edge_high", 600, T - 20), trial.suggest_int("edge_low", 20, 400))
        policy = Importance(nfe=nfe, fractions=(high, 1 - high - low, low), band_edges=edges, schedule=schedule)
    elif kind == "skipped-step":
        t_c = trial.suggest_int("t_c", 100, T - 100)
        m_min = max(1, math.ceil((T - 1 - t_c) / max(1, nfe - 1)))
        policy = SkippedStep(nfe=nfe, t_c=t_c, m=trial.suggest_int("m", m_min, max(m_min, 400)), schedule=schedule)
    elif kind in ("stepdrop", "adaptive"):
        cls = StepDrop if kind == "stepdrop" else Adaptive
        policy = cls(nfe=nfe, profile=trial.suggest_categorical("profile", list(PROFILES)),
                     protect=trial.suggest_int("protect", 1, 3),
                     base_steps=trial.suggest_int("base_steps", nfe + 6, min(T, 4 * nfe + 6)), schedule=schedule)
    else:
        raise UserError(f"policy kind {kind!r} has nothing to search; choose one of {', '.join(SEARCHABLE)}")
    eta = trial.suggest_float("eta", 0.0, 1.0) if search_eta and solver.solver.has_eta else solver.eta  # else its default
    return PolicyDocument(policy, SolverSpec(solver.name, eta, solver.nfe))
