"""Every built-in skip policy. Each class is a frozen dataclass whose fields are its JSON parameters.

Conventions: timesteps run from noise to data (strictly decreasing); the first evaluated step is T−1
unless a spacing says otherwise (``leading`` starts lower, as in DDIM's original code); the last
evaluation jumps to x̂0. Timesteps are integers unless a kind is asked for continuous time (real t in
[0, T−1]: ``continuous=true`` on karras and logsnr, real numbers in explicit, or a σ list).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from stepdrop_search.diffusion.flow import check_shift, time_shift
from stepdrop_search.diffusion.sampler import Plan, SampleStreams, batch_streams
from stepdrop_search.errors import UserError, unknown_name
from stepdrop_search.policies.base import (
    Policy,
    distinct_decreasing,
    policy_dataclass,
    register,
    snap_whole,
    timestep_tensor,
    validate_timesteps,
)

SPACINGS = ("leading", "trailing", "linspace")
#: how the shift kind spaces its unshifted flow times (see :class:`Shift`)
SHIFT_SPACINGS = ("trailing", "linspace")
PROFILES = ("constant", "linear", "quadratic", "cosine2")


def uniform_steps(T: int, n: int, spacing: str) -> torch.Tensor:
    """DDIM's three spacings (the diffusers names): leading arange(n)·(T//n), trailing round(T − k·T/n) − 1,
    linspace(T−1, 0, n). They differ in where the grid touches the ends, which moves FID noticeably."""
    if spacing == "leading":
        return torch.arange(n - 1, -1, -1, dtype=torch.long) * (T // n)
    if spacing == "trailing":
        return (T - torch.arange(n, dtype=torch.float64) * T / n).round().long() - 1
    if spacing == "linspace":
        return torch.linspace(T - 1, 0, n, dtype=torch.float64).round().long()
    raise UserError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")


@policy_dataclass
class _StaticPolicy(Policy):
    """Static kinds need an NFE (the number of timesteps they return)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nfe is None:
            raise UserError(f"{self.kind}: an nfe (number of timesteps) is required")


@register
class Uniform(_StaticPolicy):
    kind = "uniform"
    spacing: str = "trailing"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.spacing not in SPACINGS:
            raise UserError(f"uniform: unknown spacing {self.spacing!r}; choose one of {', '.join(SPACINGS)}")

    def timesteps(self) -> torch.Tensor:
        return uniform_steps(self.T, self.nfe, self.spacing)


def _unit_ramp(n: int) -> torch.Tensor:
    return torch.linspace(0, 1, n, dtype=torch.float64)


@register
class Quadratic(_StaticPolicy):
    """t_i = (T−1)(1 − s_i)², s uniform in [0, 1]: steps crowd near the data end (StepDrop's code)."""

    kind = "quadratic"

    def timesteps(self) -> torch.Tensor:
        return distinct_decreasing((self.T - 1) * (1 - _unit_ramp(self.nfe)) ** 2, self.T)


@register
class Cosine(_StaticPolicy):
    """t_i = (T−1) cos²(π s_i / 2): dense near both ends, sparse in the middle."""

    kind = "cosine"

    def timesteps(self) -> torch.Tensor:
        return distinct_decreasing((self.T - 1) * torch.cos(math.pi * _unit_ramp(self.nfe) / 2) ** 2, self.T)


def _interp_timesteps(values: torch.Tensor, curve: torch.Tensor) -> torch.Tensor:
    """Real-valued t where an increasing per-step ``curve`` takes ``values`` (linear interpolation)."""
    return torch.from_numpy(np.interp(values.numpy(), curve.numpy(), np.arange(len(curve), dtype=np.float64)))


@policy_dataclass
class _AnalyticSpacing(_StaticPolicy):
    """A spacing defined by a formula in real t. By default snapped to distinct integers (every file and figure
    made before continuous time stays what it was); ``continuous=true`` keeps the real t, so steps crowd as
    closely as the formula asks instead of being pushed apart one integer each (at NFE 100 integer Karras must
    end 3, 2, 1, 0; continuous Karras ends 1.86, 1.06, 0.53, 0)."""

    continuous: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.continuous:
            self.timesteps()  # a formula that cannot give distinct real steps is refused here, not when sampling

    def real_timesteps(self) -> torch.Tensor:
        """The formula's (nfe,) decreasing real timesteps, float64."""
        raise NotImplementedError

    def timesteps(self) -> torch.Tensor:
        if self.continuous:
            return validate_timesteps(snap_whole(self.real_timesteps()).tolist(), self.T, self.kind)
        return distinct_decreasing(self.real_timesteps(), self.T)


@register
class Karras(_AnalyticSpacing):
    """EDM spacing: σ_i = (σ_max^{1/ρ} + s_i (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, mapped to t on the schedule's log-σ
    interpolation (snapped to the nearest distinct integers unless ``continuous``)."""

    kind = "karras"
    rho: float = 7.0

    def __post_init__(self) -> None:
        if not self.rho > 0:
            raise UserError("karras: rho must be > 0")
        super().__post_init__()

    def real_timesteps(self) -> torch.Tensor:
        lo, hi = self.schedule.sigmas[0] ** (1 / self.rho), self.schedule.sigmas[-1] ** (1 / self.rho)
        sigma = (hi + _unit_ramp(self.nfe) * (lo - hi)) ** self.rho
        if self.schedule.is_flow:  # its σ has an exact inverse; the table's would bend the formula between steps
            return self.schedule.timestep_at_sigma(sigma)
        return _interp_timesteps(sigma.log(), self.schedule.sigmas.log())


@register
class LogSNR(_AnalyticSpacing):
    """Uniform in λ = log(ᾱ/(1−ᾱ)) between λ(T−1) and λ(0) (the DPM-Solver default)."""

    kind = "logsnr"

    def real_timesteps(self) -> torch.Tensor:
        neg = -self.schedule.log_snr
        levels = neg[-1] + _unit_ramp(self.nfe) * (neg[0] - neg[-1])
        if self.schedule.is_flow:  # exact λ → t, evenly spaced in λ as the formula says
            return self.schedule.timestep_at_log_snr(-levels)
        return _interp_timesteps(levels, neg)


@register
class Shift(_AnalyticSpacing):
    """A rectified flow's steps as flow tools pick them: N flow times s spaced evenly from 1, then SD3's time shift
    s′ = shift·s/(1 + (shift − 1)·s) (diffusers' ``FlowMatchEulerDiscreteScheduler(shift=…)``, ComfyUI's
    ModelSamplingSD3/Flux), the first step at the grid's top (s = T/(T + 1), where the tools have 1). ``shift`` 1 is
    uniform t; > 1 puts more steps at high noise (SD3 samples at 3).

    ``spacing``: ``trailing`` — s = 1 − k/N, the last evaluation at s = 1/N before shifting (Flux's pipelines, ComfyUI's
    ``simple`` scheduler); ``linspace`` — from 1 down to the grid's bottom, the last evaluation near s = 0 (diffusers'
    ``set_timesteps(N)``, which shifts its bottom twice where this shifts once, and ComfyUI's ``normal``). Continuous
    time by default: the shifted s rarely land on whole steps. Flow models only."""

    kind = "shift"
    shift: float = 3.0
    spacing: str = "trailing"
    continuous: bool = True

    def __post_init__(self) -> None:
        if not self.schedule.is_flow:
            raise UserError(f"shift: the time shift spaces a rectified flow's steps, and this noise schedule is "
                            f"{self.schedule.kind} (an ε model); use uniform, karras or logsnr")
        check_shift(self.shift, "shift")
        if self.spacing not in SHIFT_SPACINGS:
            raise UserError(f"shift: unknown spacing {self.spacing!r}; choose one of {', '.join(SHIFT_SPACINGS)}")
        super().__post_init__()

    def real_timesteps(self) -> torch.Tensor:
        top, bottom = self.schedule.flow_time(torch.tensor([self.T - 1, 0]))
        last = 1 - (self.nfe - 1) / self.nfe if self.spacing == "trailing" else bottom
        s = time_shift(1 + _unit_ramp(self.nfe) * (last - 1), self.shift)
        return self.schedule.flow_step(s.clamp(bottom, top))


#: σ outside the schedule's [σ(0), σ(T−1)] by at most this fraction is taken as the end: printed σ lists are
#: rounded (ComfyUI shows 4 decimals, k-diffusion models store σ_min/σ_max in float32).
SIGMA_SLACK = 1e-3


@register
class Sigmas(_StaticPolicy):
    """A schedule given as k-diffusion noise levels σ = √((1−ᾱ)/ᾱ), descending — what k-diffusion, ComfyUI
    (SIGMAS) and ``policy export --format sigmas`` use. A trailing 0 (k-diffusion's ``append_zero``) is allowed:
    the last step always jumps to x̂0. Each σ becomes its real t by the schedule's log-σ interpolation
    (continuous time), which is how diffusers' ``_sigma_to_t`` and k-diffusion's ``sigma_to_t`` read them.

    On a rectified flow, σ is what flow tools call σ: the flow time s in (0, 1] (ComfyUI's SIGMAS for SD3/Flux, diffusers'
    FlowMatch ``sigmas``); their top, 1, is this model's top step, s = T/(T + 1)."""

    kind = "sigmas"
    sigmas: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        levels = self.levels()
        if self.nfe is None:
            object.__setattr__(self, "nfe", len(levels))
        super().__post_init__()
        if self.nfe != len(levels):
            raise UserError(f"sigmas: nfe {self.nfe} does not match the {len(levels)} σ values (a trailing 0 is not a step)")
        self.timesteps()  # σ too close together to give distinct steps is refused here, not when sampling

    def levels(self) -> torch.Tensor:
        """The σ of the evaluated steps (without the trailing 0), checked and brought inside the schedule's range."""
        values = list(self.sigmas)
        if values[-1:] == [0]:
            values.pop()
        if not values:
            raise UserError("sigmas: give a descending list of noise levels σ (a trailing 0 is allowed), e.g. what "
                            "`stepdrop-search policy export karras --nfe 10 --format sigmas` prints")
        if any(not v > 0 or v == math.inf for v in values):  # not math.isfinite: a huge JSON int overflows a float
            raise UserError(f"sigmas: every σ but a trailing 0 must be a positive finite number, got {list(self.sigmas)[:6]}")
        if any(b >= a for a, b in zip(values, values[1:], strict=False)):
            raise UserError("sigmas: σ must be strictly decreasing (from noise to data)")
        if self.schedule.is_flow:
            lo, hi = (float(v) for v in self.schedule.flow_time(torch.tensor([0, self.T - 1])))
            ceiling = 1.0  # the tools' pure noise
        else:
            lo, hi = float(self.schedule.sigmas[0]), float(self.schedule.sigmas[-1])
            ceiling = hi * (1 + SIGMA_SLACK)
        outside = [v for v in values if not lo * (1 - SIGMA_SLACK) <= v <= ceiling]
        if outside:
            raise UserError(f"sigmas: σ {outside[:3]} outside this noise schedule's range [{lo:.6g}, {hi:.6g}] "
                            f"(σ at t = 0 and t = {self.T - 1}); a σ list belongs to one noise schedule")
        return torch.tensor(values, dtype=torch.float64).clamp(lo, hi)

    def timesteps(self) -> torch.Tensor:
        levels = self.levels()
        steps = self.schedule.flow_step(levels) if self.schedule.is_flow else self.schedule.timestep_at_sigma(levels)
        return validate_timesteps(snap_whole(steps).tolist(), self.T, "sigmas")


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


@register
class Importance(_StaticPolicy):
    """StepDrop's target-NFE heuristic: fractions of the NFE in the noisy band [hi, T), the middle
    (lo, hi) and the data band [0, lo), each spread evenly, giving exactly NFE distinct steps
    (StepDrop's linspace + set() produced 900/899, 101/100 and fewer steps than asked)."""

    kind = "importance"
    fractions: tuple[float, ...] = (0.3, 0.4, 0.3)
    band_edges: tuple[int, ...] = (900, 100)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.fractions) != 3 or any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1) > 1e-6:
            raise UserError("importance: fractions must be three non-negative numbers (high, middle, low) summing to 1")
        if len(self.band_edges) != 2 or not 0 < self.band_edges[1] < self.band_edges[0] < self.T:
            raise UserError(f"importance: band_edges must be [high, low] with 0 < low < high < {self.T}")
        hi_edge, lo_edge = (int(v) for v in self.band_edges)
        counts = self.band_counts()
        room = (self.T - hi_edge, hi_edge - lo_edge - 1, lo_edge)
        for name, n, space in zip(("high", "middle", "low"), counts, room, strict=True):
            if n > space:
                raise UserError(f"importance: {n} steps do not fit the {name} band ({space} timesteps); "
                                "lower nfe or change fractions/band_edges")

    def band_counts(self) -> tuple[int, int, int]:
        high = _round_half_up(self.fractions[0] * self.nfe)
        low = min(_round_half_up(self.fractions[2] * self.nfe), self.nfe - high)
        return high, self.nfe - high - low, low

    def timesteps(self) -> torch.Tensor:
        hi_edge, lo_edge = (int(v) for v in self.band_edges)
        n_high, n_mid, n_low = self.band_counts()
        high = torch.linspace(self.T - 1, hi_edge, n_high, dtype=torch.float64)
        mid = hi_edge - torch.arange(1, n_mid + 1, dtype=torch.float64) * (hi_edge - lo_edge) / (n_mid + 1)
        low = torch.linspace(lo_edge - 1, 0, n_low, dtype=torch.float64)
        return distinct_decreasing(torch.cat([high, mid, low]), self.T)


@register
class Explicit(_StaticPolicy):
    """A given list of timesteps (what DP and Optuna searches export); real numbers in [0, T−1] are continuous time."""

    kind = "explicit"
    steps: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.nfe is None:
            object.__setattr__(self, "nfe", len(self.steps))
        super().__post_init__()
        validate_timesteps(list(self.steps), self.T, "explicit")
        if self.nfe != len(self.steps):
            raise UserError(f"explicit: nfe {self.nfe} does not match the {len(self.steps)} timesteps")

    def timesteps(self) -> torch.Tensor:
        return timestep_tensor(self.steps)


@register
class SkippedStep(_StaticPolicy):
    """Seed "skipped-step sampling": ancestral jumps of size m from T−1 while t > t_c, then the chosen
    solver on an even grid from t_c down to 0 with the remaining NFE. ``m = None`` picks the size that
    spends about half the NFE above t_c, or more where the rest would not fit below t_c.

    Only t_c + 1 distinct timesteps exist in [0, t_c]: more steps below it would repeat timesteps (a step of
    zero length, which DPM-Solver++ divides by), so such a combination is refused."""

    kind = "skipped-step"
    t_c: int = 600
    m: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.t_c < self.T - 1:
            raise UserError(f"skipped-step: t_c must be in [0, {self.T - 2}]")
        if self.m is None:
            object.__setattr__(self, "m", self._default_m())
        if self.m < 1:
            raise UserError("skipped-step: m must be ≥ 1")
        jumps = self.jumps()
        if self.nfe - jumps < 1:
            raise UserError(f"skipped-step: {jumps} jumps of m={self.m} above t_c={self.t_c} leave no step of the "
                            f"{self.nfe} below it; raise m or nfe, or lower t_c")
        if self.nfe - jumps > self.t_c + 1:
            raise UserError(f"skipped-step: {self.nfe - jumps} steps below t_c={self.t_c} (nfe {self.nfe} − {jumps} jumps "
                            f"of m={self.m}) do not fit: at most t_c + 1 = {self.t_c + 1} distinct timesteps lie in "
                            "[0, t_c]; lower m or nfe, or raise t_c")

    def _default_m(self) -> int:
        """About nfe/2 jumps; if that leaves more than t_c + 1 steps below t_c, the largest m that jumps often enough."""
        span, room = self.T - 1 - self.t_c, self.t_c + 1
        m = max(1, math.ceil(span / max(1, self.nfe // 2)))
        needed = self.nfe - room  # fewest jumps that leave at most `room` steps below t_c
        if math.ceil(span / m) < needed:
            # ceil(span/m) ≥ needed ⇔ m < span/(needed − 1); needed ≥ 2 here, and needed ≤ span since nfe ≤ T.
            m = max(1, math.ceil(span / (needed - 1)) - 1)
        return m

    def jumps(self) -> int:
        return math.ceil((self.T - 1 - self.t_c) / self.m)

    def timesteps(self) -> torch.Tensor:
        above = (self.T - 1) - torch.arange(self.jumps()) * self.m
        # At most t_c + 1 points evenly spread over [0, t_c] are ≥ 1 apart, so rounding keeps them distinct.
        below = torch.linspace(self.t_c, 0, self.nfe - self.jumps(), dtype=torch.float64).round().long()
        return torch.cat([above, below])

    def solvers(self, solver: str, length: int) -> tuple[str, ...]:
        return ("ddpm",) * self.jumps() + (solver,) * (length - self.jumps())


def skip_profile(name: str, u: torch.Tensor) -> torch.Tensor:
    """StepDrop's f(u): constant 1, linear 4u(1−u), quadratic 16u²(1−u)², cosine² sin²(πu) — all
    largest mid-trajectory, where steps are least important."""
    if name == "constant":
        return torch.ones_like(u)
    if name == "linear":
        return 4 * u * (1 - u)
    if name == "quadratic":
        return 16 * u**2 * (1 - u) ** 2
    if name == "cosine2":
        return torch.sin(math.pi * u) ** 2
    raise unknown_name("skip profile", name, PROFILES)


@policy_dataclass
class _CoinFlipPolicy(Policy):
    """Shared by StepDrop and adaptive: a base grid and per-step skip probabilities p_i = min(1, p0·f(u_i)),
    zero on the first and last ``protect`` steps. ``p0 = None`` calibrates p0 so the expected NFE is ``nfe``."""

    static = False
    base_steps: int | None = None
    base_spacing: str = "trailing"
    profile: str = "constant"
    p0: float | None = None
    protect: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base_steps is None:
            if self.nfe is None:
                raise UserError(f"{self.kind}: give nfe (a target expected NFE) or base_steps and p0")
            object.__setattr__(self, "base_steps", min(self.T, 2 * self.nfe))
        if not 2 <= self.base_steps <= self.T:
            raise UserError(f"{self.kind}: base_steps must be in 2..{self.T}")
        if self.protect < 0 or 2 * self.protect > self.base_steps:
            raise UserError(f"{self.kind}: protect must be in 0..base_steps/2")
        if self.protect < 1:
            raise UserError(f"{self.kind}: protect must be ≥ 1 (the first step starts from x_T)")
        uniform_steps(self.T, 2, self.base_spacing)  # validates the spacing name
        skip_profile(self.profile, torch.zeros(1))  # validates the profile name
        if self.p0 is None:
            if self.nfe is None:
                raise UserError(f"{self.kind}: give nfe or p0")
            object.__setattr__(self, "p0", self._calibrate(self.nfe))
        elif self.p0 < 0:
            raise UserError(f"{self.kind}: p0 must be ≥ 0")
        expected = self.expected_nfe()
        if self.nfe is None:
            object.__setattr__(self, "nfe", max(1, _round_half_up(expected)))
        elif abs(expected - self.nfe) > 0.5:
            raise UserError(f"{self.kind}: nfe {self.nfe} does not match the expected NFE {expected:.2f} of p0={self.p0}; "
                            "omit p0 to calibrate it, or omit nfe")

    def grid(self) -> torch.Tensor:
        return uniform_steps(self.T, self.base_steps, self.base_spacing)

    def skip_probabilities(self, p0: float | None = None) -> torch.Tensor:
        n = self.base_steps
        p = (self.p0 if p0 is None else p0) * skip_profile(self.profile, torch.arange(n, dtype=torch.float64) / (n - 1))
        p = p.clamp(max=1.0)
        p[: self.protect] = 0
        p[n - self.protect:] = 0
        return p

    def expected_nfe(self) -> float:
        return float((1 - self.skip_probabilities()).sum())

    def _calibrate(self, target: int) -> float:
        """Bisect p0 so that Σ(1 − p_i) = target; errors if the target is out of reach."""
        fewest = float((1 - self.skip_probabilities(1e9)).sum())
        if not fewest - 1e-9 <= target <= self.base_steps:
            raise UserError(f"{self.kind}: expected NFE {target} is out of reach with base_steps={self.base_steps}, "
                            f"protect={self.protect}, profile={self.profile} (possible: {fewest:.1f}..{self.base_steps})")
        lo, hi = 0.0, 1.0
        while float((1 - self.skip_probabilities(hi)).sum()) > target:
            hi *= 2
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if float((1 - self.skip_probabilities(mid)).sum()) > target else (lo, mid)
        return round(hi, 12)


@register
class StepDrop(_CoinFlipPolicy):
    """StepDrop's coin flip: each base step i is skipped with p_i, independently per sample. Measured NFE
    varies by sample; its mean is the expected NFE (StepDrop reported 50 for runs that averaged 668–850)."""

    kind = "stepdrop"
    profile: str = "cosine2"

    def plan(self, batch: int, streams: SampleStreams | None = None, solver: str = "ddim") -> Plan:
        evaluate = batch_streams(streams, batch).uniforms(self.base_steps) >= self.skip_probabilities().float()
        return Plan(self.grid(), self.solvers(solver, self.base_steps), evaluate=evaluate)


@register
class Adaptive(_CoinFlipPolicy):
    """StepDrop's adaptive rule p_skip ∝ 1/‖ε_θ‖ (which its code never implemented): after each evaluation
    the following base steps are skipped with min(1, p0·f(u)/r), r = ‖ε‖/√D from the ε just computed,
    so it costs no extra NFE. p0 is calibrated for r = 1 (a well-trained ε has unit scale); the measured
    NFE is reported and moves with r."""

    kind = "adaptive"

    def plan(self, batch: int, streams: SampleStreams | None = None, solver: str = "ddim") -> Plan:
        return Plan(self.grid(), self.solvers(solver, self.base_steps), skip_base=self.skip_probabilities().float(),
                    uniforms=batch_streams(streams, batch).uniforms(self.base_steps))
