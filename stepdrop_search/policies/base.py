"""The policy abstraction: a small immutable value (kind + parameters + noise schedule) and one registry.

A static policy yields a strictly decreasing tensor of distinct timesteps — integers (discrete time, long) or
real numbers in [0, T−1] (continuous time, float64); a stochastic or adaptive one
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
from stepdrop_search.errors import UserError, unknown_name

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
        raise unknown_name("policy kind", kind, sorted(POLICIES))
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
        """Static policies: (nfe,) strictly decreasing inside [0, T−1]; long when every step is a whole number,
        else float64 (see :func:`timestep_tensor`)."""
        raise NotImplementedError

    def fixed_timesteps(self, target: str) -> torch.Tensor:
        """:meth:`timesteps` for an export to ``target`` that takes one fixed list; one line for per-sample kinds."""
        if not self.static:
            raise UserError(f"policy kind {self.kind!r} draws its steps per sample; {target} needs one fixed list. "
                            "Export a static policy (explicit, uniform, karras, importance, …) instead")
        return self.timesteps()

    def to_sigmas(self) -> torch.Tensor:
        """The schedule as k-diffusion noise levels: descending σ = √((1 − ᾱ)/ᾱ) at each step, then a trailing 0
        (k-diffusion's ``append_zero``: the last step jumps to x̂0, as ours does)."""
        sigma = self.schedule.sigma_at(self.fixed_timesteps("the σ export"))
        return torch.cat([sigma, sigma.new_zeros(1)])

    def to_flow_sigmas(self) -> torch.Tensor:
        """A rectified flow's schedule as its tools' σ: the flow time s at each step, then a trailing 0."""
        s = self.schedule.flow_time(self.fixed_timesteps("the σ export"))
        return torch.cat([s, s.new_zeros(1)])

    def tool_sigmas(self) -> torch.Tensor:
        """The σ list the model's tools take: k-diffusion's σ for an ε model, the flow time s for a rectified flow."""
        return self.to_flow_sigmas() if self.schedule.is_flow else self.to_sigmas()

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


#: A computed real t this close to a whole number is that integer step. Formulas and σ → t conversions land a few
#: ulps off the integers they mean (Karras' (σ_max^{1/ρ})^ρ gives t = 998.9999999999999; σ exported from an integer t
#: maps back within ~1e-10 of it): snapping keeps such ends exact and an exported integer schedule integer.
WHOLE_STEP_TOLERANCE = 1e-6


def snap_whole(t: torch.Tensor) -> torch.Tensor:
    """Computed real timesteps with the ones within :data:`WHOLE_STEP_TOLERANCE` of an integer set to it."""
    return torch.where((t - t.round()).abs() < WHOLE_STEP_TOLERANCE, t.round(), t)


def timestep_tensor(values) -> torch.Tensor:
    """Timesteps as a tensor: long when every value is a whole number — discrete time, the schedule's own table, bit
    for bit what integer policies always gave, however the numbers were written (999 or 999.0) — else float64
    (continuous time: ᾱ interpolated in log-SNR, the network given the real t)."""
    steps = torch.as_tensor(values, dtype=torch.float64)
    return steps.long() if bool((steps == steps.round()).all()) else steps


def validate_timesteps(steps, T: int, where: str) -> torch.Tensor:
    """The one validator for a static schedule: real numbers inside [0, T−1], strictly decreasing, distinct."""
    if not isinstance(steps, (list, tuple)) or not steps:
        raise UserError(f"{where}: timesteps must be a non-empty list of numbers")
    not_numbers = [v for v in steps if isinstance(v, bool) or not isinstance(v, (int, float))]
    if not_numbers:
        raise UserError(f"{where}: timesteps must be numbers, got {not_numbers[:3]}")
    not_finite = [v for v in steps if isinstance(v, float) and not math.isfinite(v)]  # ints are (and may exceed a float)
    if not_finite:
        raise UserError(f"{where}: timesteps must be finite, got {not_finite[:3]}")
    outside = [v for v in steps if not 0 <= v <= T - 1]
    if outside:
        raise UserError(f"{where}: timesteps {outside[:5]} are outside [0, {T - 1}]")
    if len(set(steps)) != len(steps):
        dup = sorted({v for v in steps if steps.count(v) > 1})
        raise UserError(f"{where}: duplicate timesteps {dup[:5]}; every evaluated step must be distinct")
    if any(b >= a for a, b in zip(steps, steps[1:], strict=False)):
        raise UserError(f"{where}: timesteps must be strictly decreasing (from noise to data)")
    return timestep_tensor(steps)
