"""The policy abstraction: a small immutable value (kind + parameters + noise schedule) and one registry.

A static policy yields a strictly decreasing tensor of distinct timesteps; a stochastic or adaptive one
yields a per-batch :class:`~stepdrop_search.diffusion.sampler.Plan` whose decisions vary by sample.
Every policy answers ``plan(batch, streams, solver)``, so the sampler never needs to know the kind.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import ClassVar

import torch

from stepdrop_search.diffusion.sampler import Plan, SampleStreams
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.errors import UserError

POLICIES: dict[str, type[Policy]] = {}


def policy_dataclass(cls: type) -> type:
    """Every policy is a frozen, keyword-only dataclass: immutable, hashable, comparable by value."""
    return dataclass(frozen=True, kw_only=True)(cls)


def register(cls: type[Policy]) -> type[Policy]:
    """Make ``cls`` a policy dataclass and list it under its ``kind`` (the CLI and loader use this registry)."""
    cls = policy_dataclass(cls)
    POLICIES[cls.kind] = cls
    return cls


def policy_class(kind: str) -> type[Policy]:
    if kind not in POLICIES:
        raise UserError(f"unknown policy kind {kind!r}; choose one of {', '.join(sorted(POLICIES))}")
    return POLICIES[kind]


@dataclass(frozen=True, kw_only=True)
class Policy:
    """Base of every skip policy. ``nfe`` is the target NFE (the expected NFE for stochastic kinds)."""

    kind: ClassVar[str] = ""
    static: ClassVar[bool] = True
    nfe: int | None = None
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)

    def __post_init__(self) -> None:
        if self.nfe is not None and (not isinstance(self.nfe, int) or isinstance(self.nfe, bool)
                                     or not 1 <= self.nfe <= self.schedule.T):
            raise UserError(f"{self.kind}: nfe must be an integer in 1..{self.schedule.T}, got {self.nfe!r}")

    @property
    def T(self) -> int:
        return self.schedule.T

    def params(self) -> dict:
        """The kind-specific parameters (everything except nfe and schedule), JSON-ready."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self) if f.name not in ("nfe", "schedule")}

    def timesteps(self) -> torch.Tensor:
        """Static policies: (nfe,) long tensor, strictly decreasing, inside [0, T)."""
        raise NotImplementedError

    def expected_nfe(self) -> float:
        return float(self.nfe)

    def solvers(self, solver: str, length: int) -> tuple[str, ...]:
        return (solver,) * length

    def plan(self, batch: int, streams: SampleStreams | None = None, solver: str = "ddim") -> Plan:
        steps = self.timesteps()
        return Plan(steps, self.solvers(solver, len(steps)))

    @classmethod
    def from_params(cls, params: dict, *, nfe: int | None, schedule: NoiseSchedule) -> Policy:
        """Build from JSON parameters, checking names and types before any value is used."""
        if not isinstance(params, dict):
            raise UserError(f"{cls.kind}: params must be a JSON object")
        known = {f.name: f for f in fields(cls) if f.name not in ("nfe", "schedule")}
        unknown = set(params) - set(known)
        if unknown:
            raise UserError(f"{cls.kind}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(known) or 'none'}")
        values = {name: _coerce(cls.kind, name, value, known[name]) for name, value in params.items()}
        return cls(nfe=nfe, schedule=schedule, **values)


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def _coerce(kind: str, name: str, value, spec):
    """Check a JSON value against the parameter's default type (int, float, str, bool, tuple, optional)."""
    default = spec.default if spec.default is not MISSING else spec.default_factory()
    where = f"{kind}: parameter {name!r}"
    if value is None:
        if default is None:
            return None
        raise UserError(f"{where} must not be null")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise UserError(f"{where} must be a list of numbers, got {value!r}")
        return tuple(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, got {value!r}")
        return value
    expects_int = isinstance(default, int) or (default is None and "int" in str(spec.type) and "float" not in str(spec.type))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where} must be a number, got {value!r}")
    if expects_int:
        if not float(value).is_integer():
            raise UserError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if not math.isfinite(value):
        raise UserError(f"{where} must be finite, got {value!r}")
    return float(value)


def distinct_decreasing(values: torch.Tensor, T: int) -> torch.Tensor:
    """Round real timesteps to integers and nudge collisions apart, keeping order and [0, T).

    Analytic spacings crowd near one end (quadratic near t = 0, Karras near σ_min); plain rounding then
    yields duplicates and fewer than NFE distinct steps, StepDrop's bug. Each step is pushed just far
    enough to be distinct, from the bottom up, then capped from the top down.
    """
    n = len(values)
    if n > T:
        raise UserError(f"cannot place {n} distinct timesteps in [0, {T})")
    ascending = values.flip(0).round().clamp(0, T - 1).long().tolist()
    for j in range(1, n):
        ascending[j] = max(ascending[j], ascending[j - 1] + 1)
    ascending[-1] = min(ascending[-1], T - 1)
    for j in range(n - 2, -1, -1):
        ascending[j] = min(ascending[j], ascending[j + 1] - 1)
    return torch.tensor(ascending[::-1], dtype=torch.long)


def validate_timesteps(steps, T: int, where: str) -> torch.Tensor:
    """The one validator for a static schedule: integers, inside [0, T), strictly decreasing, distinct."""
    if not isinstance(steps, (list, tuple)) or not steps:
        raise UserError(f"{where}: timesteps must be a non-empty list of integers")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in steps):
        raise UserError(f"{where}: timesteps must be integers, got {[v for v in steps if not isinstance(v, int)][:3]}")
    outside = [v for v in steps if not 0 <= v < T]
    if outside:
        raise UserError(f"{where}: timesteps {outside[:5]} are outside [0, {T - 1}]")
    if len(set(steps)) != len(steps):
        dup = sorted({v for v in steps if steps.count(v) > 1})
        raise UserError(f"{where}: duplicate timesteps {dup[:5]}; every evaluated step must be distinct")
    if any(b >= a for a, b in zip(steps, steps[1:], strict=False)):
        raise UserError(f"{where}: timesteps must be strictly decreasing (from noise to data)")
    return torch.tensor(steps, dtype=torch.long)
