"""The solver strategy: what one solver step needs, the per-sample state it keeps, and the registry.

A solver is a small object registered by name. The sampler loop (``diffusion.sampler.sample``) knows no
solver by name: at every grid step it gathers the active samples, evaluates ε once for them, and hands
the solver a :class:`Step` plus that solver's per-sample state (history of x̂0, ε or step sizes, as
batch-first tensors the loop gathers and scatters with the active sub-batch). The solver returns the next
state x_s and its updated state. A solver that needs more evaluations per step (Heun) asks for them through
``Step.evaluate``, which counts NFE like the loop's own evaluation.

Conventions shared by every solver: states are VP states x_t = α_t x0 + σ_t ε with α = √ᾱ, σ = √(1 − ᾱ);
coefficients are formed from float64 ᾱ (0-dim, or (n, 1, 1, 1) when samples jump to different targets) and
applied in the state's dtype (:func:`applied`);
``a_s = 1`` is the jump to x̂0 — the loop returns x̂0 there, so every solver's last step is first order
(the x̂0 of the last evaluation), as diffusers' ``final_sigmas_type="zero"`` does. No solver reads a value
back to the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from stepdrop_search.diffusion.runtimes import Runtime, runtime_named
from stepdrop_search.errors import UserError, unknown_name

Tensor = torch.Tensor
State = dict[str, Tensor]

#: name → solver class; filled by :func:`register_solver` as the solver modules are imported.
SOLVERS: dict[str, type[Solver]] = {}


def register_solver(cls: type[Solver]) -> type[Solver]:
    SOLVERS[cls.name] = cls
    return cls


def solver_class(name: str) -> type[Solver]:
    if name not in SOLVERS:
        raise unknown_name("solver", name, SOLVERS)
    return SOLVERS[name]


def applied(coefficient: Tensor, state: Tensor) -> Tensor:
    """A coefficient formed in float64 (0-dim or per-sample (n, 1, 1, 1)) in the state's dtype, to multiply a state.

    float64 is for *forming* coefficients (ratios like ᾱ_t/ᾱ_s drift by ~1e-4 in float32 over 1000 steps); a
    per-sample float64 factor applied as it is would promote the whole (n, C, H, W) product to float64, which made
    the multistep solvers' arithmetic 4–6× slower for nothing (DPM-Solver++(3M): 9.7 against 1.5 ms a step at batch 256). A 0-dim coefficient is
    applied in the state's dtype either way, so this changes no result of a one-step solver on a static plan."""
    return coefficient.to(state.dtype)


def predict_x0(x: Tensor, eps: Tensor, a_t: Tensor, clamp: bool) -> tuple[Tensor, Tensor]:
    """x̂0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t, clamped to the data range for pixel models.

    Returns (x̂0, ε′) where ε′ is the noise consistent with the clamped x̂0, so that every solver stays
    on the line through x_t and x̂0 (and DDIM with η = 1 equals the ancestral step exactly).
    """
    alpha, sigma = applied(a_t.sqrt(), x), applied((1 - a_t).sqrt(), x)
    x0 = (x - sigma * eps) / alpha
    if not clamp:
        return x0, eps
    x0 = x0.clamp(-1, 1)
    return x0, (x - alpha * x0) / sigma


def log_snr(a: Tensor) -> Tensor:
    return torch.log(a) - torch.log1p(-a)


def half_log_snr(a: Tensor) -> Tensor:
    """λ = log(α/σ), the time variable of DPM-Solver, UniPC and DEIS."""
    return log_snr(a) / 2


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """(n,) per-sample values shaped to broadcast against (n, C, H, W) states."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def flat(a: Tensor) -> Tensor:
    """A coefficient (0-dim or (n, 1, 1, 1)) as a (1,) or (n,) vector, for storing in per-sample state."""
    return a.reshape(-1)


@dataclass
class Step:
    """One solver step for the active samples, from the evaluated time t to each sample's target s.

    ``x``: states at t; ``x0``/``eps``: x̂0 (clamped for pixel models) and the ε consistent with it;
    ``a_t``: ᾱ at t (0-dim float64); ``a_s``: ᾱ at the target (0-dim or (n, 1, 1, 1); 1 = x̂0); ``t_s``: the
    target time(s) (0-dim or (n,)), for a solver that evaluates there; ``noise``: standard normals of this grid
    step for these samples (stochastic solvers only); ``eta``: the solver's stochasticity; ``evaluate(x, t,
    which=None)``: a counted network evaluation (raw ε) at states ``x`` and times ``t`` of the active samples
    (or of the positions ``which`` among them) — use :meth:`evaluate_at_targets`.
    """

    x: Tensor
    x0: Tensor
    eps: Tensor
    a_t: Tensor
    a_s: Tensor
    t_s: Tensor
    noise: Tensor | None
    eta: float
    evaluate: Callable[..., Tensor]
    clamp: bool = True
    index: int = 0  # the grid step (solvers that treat some steps differently, e.g. Heun's budget)
    last: bool = False  # every active sample's target is x̂0 (the loop returns x̂0 there)

    def evaluate_at_targets(self, x_s: Tensor) -> tuple[Tensor, Tensor | None]:
        """(x̂0, ε) evaluated at states ``x_s`` of the targets, for the samples whose target is not x̂0 (the others'
        rows are returned unchanged and cost nothing): a counted network evaluation, as the loop's own.

        With per-sample targets this needs one host sync to size the sub-batch, like the adaptive rule."""
        if self.a_s.dim() == 0:
            eps = self.evaluate(x_s, self.t_s)
            return predict_x0(x_s, eps, self.a_s, self.clamp)
        which = (flat(self.a_s) < 1).nonzero().squeeze(1)
        a_s = self.a_s.index_select(0, which)
        x_sub = x_s.index_select(0, which)
        x0_sub, eps_sub = predict_x0(x_sub, self.evaluate(x_sub, self.t_s.index_select(0, which), which), a_s, self.clamp)
        return x_s.index_copy(0, which, x0_sub.to(x_s.dtype)), self.eps.index_copy(0, which, eps_sub.to(self.eps.dtype))


class Solver:
    """Base of every solver strategy (see the module docstring). Subclasses set ``name`` and implement
    :meth:`step`; multistep solvers also :meth:`init_state`."""

    name: ClassVar[str] = ""
    #: whether the solver has a stochasticity knob η (it is refused for the others)
    has_eta: ClassVar[bool] = False
    #: η when none is given: what a user asking for the solver by name expects (DDIM: 0; an SDE solver: 1)
    default_eta: ClassVar[float] = 0.0
    #: whether its evaluations per grid step vary (then ``SolverSpec.nfe`` may set a run's budget)
    variable_cost: ClassVar[bool] = False
    #: whether it takes learned per-grid-step coefficients (``SolverSpec.coefficients``); such a solver runs dense plans
    #: only, since its coefficients belong to grid steps, and no σ-list tool runs it
    learned: ClassVar[bool] = False
    #: a learned solver's fixed-coefficient base: what it is with all-zero coefficients
    base: ClassVar[str] = ""
    #: whether its step to x̂0 (the last one) is its own; otherwise the loop returns the last evaluation's x̂0 there
    owns_last_step: ClassVar[bool] = False
    #: a learned solver's numbers per grid step (one row of its coefficients)
    coefficient_width: ClassVar[int] = 0
    #: the solver whose single step from a fresh state is this one's first step — one edge of DP-OSS for it: DDIM for
    #: every solver that starts first order (multistep ones have no history yet), and DDIM's probability-flow ODE
    #: for stochastic ones (a DP edge that drew noise would make the schedule depend on one draw)
    one_step_form: ClassVar[str] = "ddim"

    def __init__(self, spec: SolverSpec | None = None) -> None:
        self.spec = spec

    def stochastic(self, eta: float) -> bool:
        """Whether a step draws solver noise (then the loop hands it ``Step.noise``)."""
        return False

    def init_state(self, x: Tensor) -> State:
        """Per-sample state before the first step (batch-first tensors); none for one-step solvers."""
        return {}

    @classmethod
    def checked_coefficients(cls, rows) -> tuple[tuple[float, ...], ...]:
        """A learned solver's coefficients from a file: rows of finite numbers, refused in one line otherwise."""
        width = cls.coefficient_width
        if not isinstance(rows, (list, tuple)) or not rows or not all(
                isinstance(r, (list, tuple)) and len(r) == width
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in r) for r in rows):
            raise UserError(f"solver {cls.name}: coefficients must be a non-empty list of rows of {width} finite numbers, "
                            "one row per grid step")
        return tuple(tuple(float(v) for v in r) for r in rows)

    def check_plan(self, length: int, dense: bool) -> None:
        """Refuse, in one line and before any evaluation, a plan of ``length`` grid steps this solver cannot run.

        The loop calls it before :meth:`init_state`, so a solver whose state depends on the grid (a learned one's
        per-step coefficients) may keep ``length`` here."""

    def step(self, s: Step, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    def nfe(self, steps: int) -> int:
        """Network evaluations of a run over ``steps`` grid steps (the last one jumps to x̂0)."""
        return steps

    def steps_for_nfe(self, nfe: int) -> int:
        """The largest grid whose run spends at most ``nfe`` evaluations (``--nfe`` counts evaluations, a ceiling)."""
        return nfe

    def uncorrected_first(self, steps: int) -> bool:
        """Whether a multi-evaluation solver leaves its first interval without its extra evaluation."""
        return False


def no_history(batch: int, device: torch.device) -> Tensor:
    """A (batch,) float64 step-size history that says "no earlier step" (NaN) for every sample."""
    return torch.full((batch,), float("nan"), device=device, dtype=torch.float64)


@dataclass(frozen=True)
class SolverSpec:
    """Which solver a sampler uses, its stochasticity η (for solvers that have one; None: the solver's
    ``default_eta``), and — for solvers whose evaluations per step vary (Heun) — the NFE budget of a run, which
    decides where it saves an evaluation. A learned solver's ``coefficients`` are its per-grid-step parameters: a tuple
    of rows of floats (what files hold), or a tensor while they are being learned (then gradients reach it)."""

    name: str = "ddim"
    eta: float | None = None
    nfe: int | None = None
    coefficients: tuple[tuple[float, ...], ...] | Tensor | None = None

    def __post_init__(self) -> None:
        cls = solver_class(self.name)
        if self.coefficients is not None and not cls.learned:
            raise UserError(f"solver {self.name} takes no coefficients (learned solvers do: "
                            f"{', '.join(n for n, c in SOLVERS.items() if c.learned)})")
        if isinstance(self.coefficients, (list, tuple)):
            object.__setattr__(self, "coefficients", cls.checked_coefficients(self.coefficients))
        if self.eta is None:
            object.__setattr__(self, "eta", cls.default_eta)
        if not 0.0 <= self.eta <= 1.0:
            raise UserError(f"eta must be in [0, 1], got {self.eta}")
        if self.eta and not cls.has_eta:
            raise UserError(f"solver {self.name} has no η (eta {self.eta} would be ignored); η applies to "
                            f"{', '.join(eta_solvers())} only")
        if self.nfe is not None and (not cls.variable_cost or not isinstance(self.nfe, int) or self.nfe < 1):
            raise UserError(f"solver {self.name}: an NFE budget is only for solvers whose evaluations per step vary "
                            "(heun), and must be an integer ≥ 1")

    @property
    def solver(self) -> Solver:
        return solver_class(self.name)(self)

    @property
    def key(self) -> tuple:
        """What makes two specs the same solver (coefficients rounded as files write them)."""
        return self.name, self.eta, self.nfe, self.coefficient_rows()

    def coefficient_rows(self) -> tuple[tuple[float, ...], ...] | None:
        """The coefficients as rows of Python floats (a tensor being learned is read as it is now)."""
        if self.coefficients is None or not isinstance(self.coefficients, Tensor):
            return self.coefficients
        return tuple(tuple(row) for row in self.coefficients.detach().double().cpu().tolist())

    def to_dict(self) -> dict:
        rows = self.coefficient_rows()
        return ({"name": self.name, "eta": self.eta} | ({"nfe": self.nfe} if self.nfe is not None else {})
                | ({"coefficients": [list(r) for r in rows]} if rows is not None else {}))


def spec_for_nfe(name: str, nfe: int, eta: float | None = None, runtime: Runtime | str | None = None) -> tuple[SolverSpec, int]:
    """(solver spec, grid size) for a run of ``name`` that spends at most ``nfe`` network evaluations under ``runtime``
    (None: the default). A solver whose evaluations per step vary
    (Heun) spends an even budget exactly only under a runtime that does (``legacy``); elsewhere the budget is a ceiling."""
    cls = solver_class(name)
    exact = cls.variable_cost and runtime_named(runtime).spends_even_heun_budgets
    spec = SolverSpec(name, eta, nfe if exact else None)
    steps = spec.solver.steps_for_nfe(nfe)
    if steps < 1:
        raise UserError(f"solver {name} cannot run within {nfe} evaluations")
    return spec, steps


def eta_solvers() -> tuple[str, ...]:
    return tuple(name for name, cls in SOLVERS.items() if cls.has_eta)


def fixed_solvers() -> tuple[str, ...]:
    """The registered solvers whose coefficients are fixed: what a pool tries on every schedule (a learned solver
    without its coefficients is only its base solver)."""
    return tuple(name for name, cls in SOLVERS.items() if not cls.learned)
