"""What one ``optimize`` run is asked to do: small frozen parts, each checked where it is made.

``OptimizeSettings.from_flags(**flags)`` takes the command's flags by their names (``nfe``, ``budget``, ``dp_grid``,
``gradient_loss``, …) and routes each to its part, so the CLI and a notebook build the same settings from the same
words. Nothing here changes while a run goes on; what a run decides (rung sizes, the solvers it searches) lives in
:class:`~stepdrop_search.search.run.Run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from stepdrop_search.diffusion.runtimes import Runtime, runtime_named
from stepdrop_search.diffusion.solvers import SolverSpec, eta_solvers, fixed_solvers, spec_for_nfe
from stepdrop_search.errors import UserError
from stepdrop_search.files import check_writable
from stepdrop_search.objectives.residual import Teacher
from stepdrop_search.search.dp import GITS_TEACHER, GRID_SPACINGS
from stepdrop_search.search.gradient import LOSSES, SPACES
from stepdrop_search.search.space import SEARCHABLE
from stepdrop_search.seeds import search_seed

#: The ways of producing candidates besides the analytic schedules (always in the pool); ``--method`` takes any
#: comma-separated subset, ``all`` every one.
METHODS = ("gradient", "learned-solver", "dp-gits", "dp-oss", "optuna")
SAMPLERS = ("tpe", "cmaes", "gp", "nsga2")


@dataclass(frozen=True)
class ModelSettings:
    """Which model is sampled, which networks score it, where, and under which tool's conventions."""

    model: str | None = None
    features: str | None = None  # the coach (default: the shipped one for the model's data)
    judge: str | None = None  # the judge (default: the shipped one; without one the coach judges, and the log says so)
    device: str = "auto"
    runtime: str = "stepdrop"  # the conventions every candidate is sampled, scored and exported under

    def __post_init__(self) -> None:
        runtime_named(self.runtime)  # an unknown name is refused in one line here

    @property
    def run_runtime(self) -> Runtime:
        return runtime_named(self.runtime)


@dataclass(frozen=True)
class BudgetSettings:
    """How long the run may take: ``seconds`` for all of it (None: no limit), the study's trial count, each worker's
    ``timeout`` and the number of local workers."""

    seconds: float | None = 480.0
    trials: int = 10000
    timeout: float | None = None
    n_jobs: int = 1

    def __post_init__(self) -> None:
        if (self.seconds is not None and self.seconds <= 0) or (self.timeout is not None and self.timeout <= 0):
            raise UserError("--budget and --timeout are seconds > 0 (leave them out, or --budget 0, for no limit)")
        if self.trials < 1 or self.n_jobs < 1:
            raise UserError("--trials and --n-jobs must be ≥ 1")


@dataclass(frozen=True)
class DPSettings:
    """The DP searches' teacher (GITS's: iPNDM on 61 Karras nodes) and costs."""

    grid: int = GITS_TEACHER[1]
    samples: int = 64
    oss_samples: int = 8
    spacing: str = GITS_TEACHER[2]
    teacher: str = GITS_TEACHER[0]
    gits_cost: str = "dev"
    gits_gamma: float = 1.15

    def __post_init__(self) -> None:
        if self.spacing not in GRID_SPACINGS:
            raise UserError(f"unknown --dp-spacing {self.spacing!r}; choose one of {', '.join(GRID_SPACINGS)}")


@dataclass(frozen=True)
class GradientSettings:
    """The gradient (LD3-style) method: its loss, step space, data and optimiser."""

    loss: str = "fid"
    space: str = "logsnr"
    samples: int = 256
    epochs: int = 10
    batch: int = 64
    lr: float = 2e-3
    # the learned-solver method: Adam on its steps and coefficients, and its most epochs (--budget usually stops it)
    solver_lr: float = 1e-3
    solver_epochs: int = 20

    def __post_init__(self) -> None:
        if self.loss not in LOSSES or self.space not in SPACES:
            raise UserError(f"--gradient-loss is one of {', '.join(LOSSES)}; --gradient-space one of {', '.join(SPACES)}")
        if min(self.samples, self.epochs, self.batch, self.solver_epochs) < 1 or min(self.lr, self.solver_lr) <= 0:
            raise UserError("--gradient-samples, --gradient-epochs and the batch must be ≥ 1, the learning rate > 0")


@dataclass(frozen=True)
class SearchSettings:
    """What is searched and how candidates are scored on the coach (rungs on the search seed's noise)."""

    nfe: int = 25
    method: str = "all"
    kind: str = "explicit"
    solver: str = "auto"
    sampler: str = "tpe"
    seed: int = 0
    samples: int | None = None  # rung 0 of the pool; None: by the NFE (rungs.rung_sizes)
    trial_samples: int = 64  # what each study trial is scored on: cheap, many trials; rung 1 re-scores the best
    promote_samples: int | None = None
    promote: int = 8
    residual_weight: float = 0.0
    teacher: str = "dpmpp-2m-200"
    free_boundary: bool = True
    search_eta: bool = False
    prune_samples: int = 32
    multi_objective: bool = False
    nfe_range: tuple[int, int] | None = None
    study: str | None = None
    storage: str | None = None
    dp: DPSettings = field(default_factory=DPSettings)
    gradient: GradientSettings = field(default_factory=GradientSettings)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise UserError(f"unknown --method {','.join(unknown) or self.method!r}; choose all or a comma-separated "
                            f"subset of {', '.join(METHODS)}")
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown --sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.kind not in SEARCHABLE:
            raise UserError(f"--kind {self.kind!r} cannot be searched; choose one of {', '.join(SEARCHABLE)}")
        if self.trial_samples < 2:
            raise UserError("--trial-samples must be ≥ 2")
        if self.nfe < 1 or self.promote < 1:
            raise UserError("--nfe and --promote must be ≥ 1")
        given = [n for n in (self.samples, self.promote_samples) if n is not None]
        if min(given, default=2) < 2 or (self.samples and self.promote_samples and self.promote_samples < self.samples):
            raise UserError("--samples and --promote-samples must be ≥ 2, and --promote-samples ≥ --samples (rung 1 "
                            "re-scores on a superset of rung 0's samples)")
        if self.multi_objective and (self.nfe_range is None or not 1 <= self.nfe_range[0] < self.nfe_range[1]):
            raise UserError("--multi-objective needs --nfe-range LO,HI with 1 ≤ LO < HI")
        if set(self.methods) & {"gradient", "learned-solver", "dp-gits", "dp-oss"} and self.kind != "explicit":
            raise UserError("gradient, learned-solver and DP methods produce explicit schedules; use --method optuna to search "
                            "another --kind")
        if self.solver.strip() != "auto" and (not self.solvers or "auto" in self.solvers
                                              or len(set(self.solvers)) != len(self.solvers)):
            raise UserError(f"--solver {self.solver!r} must be auto, one solver, or a list naming each solver once")
        if len(self.solvers) > 1 and (learned := [s for s in (SolverSpec(n).solver for n in self.solvers) if s.learned]):
            raise UserError(f"--solver lists {', '.join(c.name for c in learned)}, whose coefficients --method "
                            f"learned-solver learns from its base's steps; list {', '.join(c.base for c in learned)} instead")
        # one spelling per set of solvers (spaces and order aside), so a resumed study matches its own settings
        object.__setattr__(self, "solver", ",".join(sorted(self.solvers)) or "auto")
        if self.pinned_solver is None and (self.kind != "explicit" or self.search_eta):
            raise UserError(f"--solver {self.solver} searches step sets across solvers; name one --solver to search "
                            "--kind or --search-eta")
        if self.search_eta and self.pinned_solver not in eta_solvers():
            raise UserError(f"--search-eta searches η, which only {', '.join(eta_solvers())} has; drop it or use --solver ddim")
        search_seed(self.seed)  # in the search range
        Teacher.parse(self.teacher)

    @property
    def solvers(self) -> tuple[str, ...]:
        """``--solver`` as a tuple of names: ``auto`` → () (every solver the runtime has), else the comma list (sorted
        once the settings are made)."""
        return () if self.solver.strip() == "auto" else tuple(n.strip() for n in self.solver.split(",") if n.strip())

    @property
    def solver_label(self) -> str:
        """``--solver`` as a study's and an export's name part: ``auto``, or the names joined by ``+``."""
        return "+".join(self.solvers) or "auto"

    @property
    def pinned_solver(self) -> str | None:
        """The one solver searched when ``--solver`` names exactly one; None when the pool's rung 1 picks them."""
        return self.solvers[0] if len(self.solvers) == 1 else None

    @property
    def methods(self) -> tuple[str, ...]:
        """``--method`` as a tuple: ``all`` → every method of :data:`METHODS`."""
        return METHODS if self.method == "all" else tuple(m.strip() for m in self.method.split(",") if m.strip())

    @property
    def largest_nfe(self) -> int:
        """The NFE the rung sizes follow: the target, or the top of a multi-objective range."""
        return self.nfe_range[1] if self.multi_objective else self.nfe


@dataclass(frozen=True)
class SelectionSettings:
    """How the export is chosen on held-out noise: the selection's largest round (None: by the NFE)."""

    held_out_samples: int | None = None

    def __post_init__(self) -> None:
        if self.held_out_samples is not None and self.held_out_samples < 2:
            raise UserError("--held-out-samples must be ≥ 2")


@dataclass(frozen=True)
class OutputSettings:
    """Where the export (and, optionally, every pool row) goes, and the command line that made them."""

    out: str | None = None
    save_pool: str | None = None
    command: str = ""

    def check_writable(self) -> None:
        """Refuse, before any work, an export or pool folder the run could not write at its end."""
        check_writable(self.out or "policies/best.json", "--out")
        check_writable(self.save_pool, "--save-pool", folder=True)


#: Flags routed to a nested part by their prefix: ``dp_grid`` → ``search.dp.grid``, ``gradient_lr`` → …``.lr``.
NESTED = {"dp_": ("dp", DPSettings), "gradient_": ("gradient", GradientSettings)}
#: Flags whose name differs from their part's field.
RENAMED = {"budget": "seconds", "gits_cost": "dp_gits_cost", "gits_gamma": "dp_gits_gamma"}


@dataclass(frozen=True)
class OptimizeSettings:
    model: ModelSettings = field(default_factory=ModelSettings)
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    output: OutputSettings = field(default_factory=OutputSettings)

    def __post_init__(self) -> None:
        """The checks that need two parts: each named solver must run at the NFE under the runtime."""
        runtime, search = self.model.run_runtime, self.search
        for name in search.solvers:
            SolverSpec(name)
            runtime.check_solver(name)
            spec_for_nfe(name, search.nfe, runtime=runtime)  # an NFE this solver cannot run in is refused here
        if search.search_eta and search.pinned_solver in runtime.fixed_eta:
            pinned = search.pinned_solver
            raise UserError(f"runtime {self.model.runtime} runs {pinned} at η = {runtime.fixed_eta[pinned]:g} "
                            "only; drop --search-eta")
        if not self.pool_solvers():
            raise UserError(f"runtime {self.model.runtime} has none of the solvers to search")

    @classmethod
    def from_flags(cls, **flags) -> OptimizeSettings:
        """Settings from the command's flags by name (any left out keep their defaults). ``budget=0`` means no limit,
        as on the command line; ``multi_objective`` with the default sampler searches with NSGA-II."""
        if flags.get("budget") == 0:
            flags["budget"] = None
        if flags.get("multi_objective") and flags.get("sampler", "tpe") == "tpe":
            flags["sampler"] = "nsga2"
        parts: dict[str, dict] = {"model": {}, "budget": {}, "search": {}, "selection": {}, "output": {}, "dp": {},
                                  "gradient": {}}
        owners = {f.name: part for part, kind in (("model", ModelSettings), ("budget", BudgetSettings),
                                                  ("search", SearchSettings), ("selection", SelectionSettings),
                                                  ("output", OutputSettings)) for f in fields(kind)}
        for name, value in flags.items():
            name = RENAMED.get(name, name)
            nested = next((prefix for prefix in NESTED if name.startswith(prefix)), None)
            if nested and name[len(nested):] in {f.name for f in fields(NESTED[nested][1])}:
                parts[NESTED[nested][0]][name[len(nested):]] = value
            elif name in owners and name not in ("dp", "gradient"):
                parts[owners[name]][name] = value
            else:
                raise TypeError(f"optimize has no setting {name!r}")
        if isinstance(parts["search"].get("nfe_range"), list):
            parts["search"]["nfe_range"] = tuple(parts["search"]["nfe_range"])
        search = SearchSettings(**parts["search"], dp=DPSettings(**parts["dp"]), gradient=GradientSettings(**parts["gradient"]))
        return cls(ModelSettings(**parts["model"]), BudgetSettings(**parts["budget"]), search,
                   SelectionSettings(**parts["selection"]), OutputSettings(**parts["output"]))

    def pool_solvers(self) -> tuple[str, ...]:
        """Every fixed-coefficient solver the runtime has (``--solver auto``; a learned solver is learned by its own method,
        not tried on the pool's schedules, where without coefficients it is its base solver), or the named ones."""
        return self.search.solvers or self.model.run_runtime.solver_names(fixed_solvers())

    @property
    def study_name(self) -> str:
        search = self.search
        if search.study:
            return search.study
        span = f"{search.nfe_range[0]}-{search.nfe_range[1]}" if search.multi_objective else str(search.nfe)
        return f"{search.kind}-{search.solver_label}-nfe{span}" + ("" if self.model.runtime == "stepdrop" else f"-{self.model.runtime}")

    @property
    def directions(self) -> list[str]:
        return ["minimize", "minimize"] if self.search.multi_objective else ["minimize"]

    def study_config(self, model_hash: str) -> dict:
        """What the study optimises; a resumed run must match it (rung sizes as asked, not as resolved)."""
        s = self.search
        keys = ("nfe", "kind", "solver", "seed", "trial_samples", "residual_weight", "teacher", "free_boundary",
                "search_eta", "prune_samples", "multi_objective", "nfe_range", "samples", "promote_samples")
        values = {k: list(v) if isinstance(v, tuple) else v for k in keys for v in [getattr(s, k)]}
        return {"model_hash": model_hash, **values, "runtime": self.model.runtime}

    def flags(self) -> dict:
        """The flat flag names and values these settings were made from (a policy file's provenance records them)."""
        out = {}
        for part in (self.model, self.budget, self.search, self.selection, self.output):
            for f in fields(part):
                value = getattr(part, f.name)
                if f.name in ("dp", "gradient"):
                    out |= {f"{f.name}_{g.name}": getattr(value, g.name) for g in fields(value)}
                else:
                    out[{v: k for k, v in RENAMED.items()}.get(f.name, f.name)] = list(value) if isinstance(value, tuple) else value
        return out
