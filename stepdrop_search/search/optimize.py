"""`stepdrop-search optimize`: find the best way to sample — solver and steps together — and prove it on held-out noise.

``optimize(config)`` runs, in this order (each phase logs what it does and how much of ``--budget`` is left):

1. **checks** every input — model, feature file, ``--storage`` and a resumed study's settings — before any work;
2. **teacher** (only with ``residual_weight`` > 0): a cheap, accurate one (DPM-Solver++(2M) on 200 steps: its x0
   lies 2e-5 from DDIM-1000's, at a fifth of the cost), cached on disk. The default objective is proxy-FID alone:
   on the shipped model the residual ranks few-step samplers against what proxy-FID measures (README);
3. **pool**: every solver (``--solver auto``) × {uniform trailing, log-SNR, Karras, quadratic, DP-GITS, DP-OSS} at the
   target NFE, each solver on the grid that spends exactly that NFE;
4. **rung 0**: every pool candidate scored on ``samples`` x_T of the *search* seed (proxy-FID, plus w · residual when
   ``residual_weight`` > 0; common random numbers: one x_T and one noise stream per sample for every candidate);
5. **rung 1 of the pool**: each solver's best rung-0 row and the 6 best overall, scored on ``promote_samples``
   samples (proxy-FID's small-sample bias depends on the solver, so rung 0 is trusted within a solver only);
6. **search**: an Optuna study over the best solvers of that rung (a categorical) and free step sets, seeded with
   the pool's schedules, each trial scored on ``trial_samples`` (64: many cheap trials), for what the budget leaves;
   its ``promote`` best trials go to rung 1;
7. **held-out selection**: the ``finalists`` best of rung 1, with the two best pool candidates and the best searched
   one always among them, sampled on ``held_out_samples`` x_T of the *selection* seed (disjoint from the search seed and
   from every ``evaluate`` seed, :mod:`stepdrop_search.seeds`). Each finalist's paired proxy-FID difference to the
   best pool finalist gets a 95% paired-bootstrap interval; a searched finalist is exported only when its interval
   lies below zero and KID agrees in sign; otherwise the best pool finalist is exported and the log says so.

Studies live in any Optuna storage (several workers, local or on other machines, share one); ``--kind`` searches
another policy kind's parameters instead of step sets, and ``--multi-objective`` runs NSGA-II over (objective,
measured NFE) and exports the Pareto set.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import optuna
import torch

from stepdrop_search.checkpoint import LoadedModel
from stepdrop_search.devices import resolve_device
from stepdrop_search.diffusion.runtimes import Runtime, runtime_named
from stepdrop_search.diffusion.solvers import SOLVERS, SolverSpec, eta_solvers, spec_for_nfe
from stepdrop_search.errors import UserError
from stepdrop_search.generation import generate, initial_noise
from stepdrop_search.loading import load_model
from stepdrop_search.objectives.features import load_features_for_model
from stepdrop_search.objectives.metrics import fid_of_features, kid_of_features, paired_fid_difference, proxy_features
from stepdrop_search.objectives.objective import Objective, Scores
from stepdrop_search.objectives.residual import Teacher, teacher_outputs
from stepdrop_search.policies import PolicyDocument, save_policy
from stepdrop_search.policies.io import provenance
from stepdrop_search.policies.kinds import Explicit, Karras, LogSNR, Quadratic, Uniform
from stepdrop_search.policies.transfer import export_problems
from stepdrop_search.progress import advance, phase
from stepdrop_search.report import plot_pareto_front
from stepdrop_search.search.dp import GITS_TEACHER, GRID_SPACINGS, gits_schedule, oss_schedule, teacher_trajectory
from stepdrop_search.search.gradient import LOSSES, SPACES, learn_schedule
from stepdrop_search.search.space import SEARCHABLE, steps_to_params, suggest_document
from stepdrop_search.search.study import check_resumable, make_storage, open_study, shown
from stepdrop_search.seeds import search_seed, selection_seed

#: The ways of producing candidates besides the analytic schedules (always in the pool); ``--method`` takes any
#: comma-separated subset, ``all`` every one.
METHODS = ("gradient", "dp-gits", "dp-oss", "optuna")
SAMPLERS = ("tpe", "cmaes", "gp", "nsga2")
#: Analytic schedules of the pool (each solver gets each at the grid size that spends the target NFE).
POOL_SCHEDULES = {"uniform": Uniform, "logsnr": LogSNR, "karras": Karras, "quadratic": Quadratic}
#: How many of the pool's rung-1 best solvers the study searches over when ``--solver auto``.
SEARCHED_SOLVERS = 3


@dataclass(frozen=True)
class OptimizeConfig:
    nfe: int = 25
    method: str = "all"
    kind: str = "explicit"
    solver: str = "auto"
    model: str | None = None
    features: str | None = None
    device: str = "auto"
    samples: int | None = None  # rung 0 of the pool; None: by the NFE (rung_sizes)
    trial_samples: int = 64  # what each study trial is scored on: cheap, many trials; rung 1 re-scores the best
    promote_samples: int | None = None
    promote: int = 8
    finalists: int = 3
    held_out_samples: int | None = None
    seed: int = 0
    residual_weight: float = 0.0
    teacher: str = "dpmpp-2m-200"
    trials: int = 10000
    timeout: float | None = None
    budget: float | None = 270.0
    sampler: str = "tpe"
    study: str | None = None
    storage: str | None = None
    n_jobs: int = 1
    free_boundary: bool = True
    search_eta: bool = False
    prune_samples: int = 32
    dp_grid: int = GITS_TEACHER[1]
    dp_samples: int = 64
    dp_oss_samples: int = 8
    dp_spacing: str = GITS_TEACHER[2]
    dp_teacher: str = GITS_TEACHER[0]
    gits_cost: str = "dev"
    gits_gamma: float = 1.15
    gradient_loss: str = "fid"
    gradient_space: str = "logsnr"
    gradient_samples: int = 256
    gradient_epochs: int = 10
    gradient_batch: int = 64
    gradient_lr: float = 2e-3
    multi_objective: bool = False
    nfe_range: tuple[int, int] | None = None
    out: str | None = None
    save_pool: str | None = None
    command: str = ""
    runtime: str = "stepdrop"  # the conventions every candidate is sampled, scored and exported under
    search_solvers: tuple[str, ...] = ()  # set by optimize() from rung 1 (or the pinned --solver)
    requested_samples: tuple[int | None, int | None] | None = None  # (samples, promote_samples) as asked, before resolved()

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise UserError(f"unknown --method {','.join(unknown) or self.method!r}; choose all or a comma-separated "
                            f"subset of {', '.join(METHODS)}")
        if self.gradient_loss not in LOSSES or self.gradient_space not in SPACES:
            raise UserError(f"--gradient-loss is one of {', '.join(LOSSES)}; --gradient-space one of {', '.join(SPACES)}")
        if min(self.gradient_samples, self.gradient_epochs, self.gradient_batch) < 1 or self.gradient_lr <= 0:
            raise UserError("--gradient-samples, --gradient-epochs and the batch must be ≥ 1, the learning rate > 0")
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown --sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.kind not in SEARCHABLE:
            raise UserError(f"--kind {self.kind!r} cannot be searched; choose one of {', '.join(SEARCHABLE)}")
        if (self.budget is not None and self.budget <= 0) or (self.timeout is not None and self.timeout <= 0):
            raise UserError("--budget and --timeout are seconds > 0 (leave them out for no limit)")
        if self.trial_samples < 2:
            raise UserError("--trial-samples must be ≥ 2")
        if self.nfe < 1 or self.trials < 1 or self.n_jobs < 1 or self.promote < 1 or self.finalists < 1:
            raise UserError("--nfe, --trials, --n-jobs, --promote and --finalists must be ≥ 1")
        given = [n for n in (self.samples, self.promote_samples, self.held_out_samples) if n is not None]
        if min(given, default=2) < 2 or (self.samples and self.promote_samples and self.promote_samples < self.samples):
            raise UserError("--samples, --promote-samples and --held-out-samples must be ≥ 2, and --promote-samples "
                            "≥ --samples (rung 1 re-scores on a superset of rung 0's samples)")
        if self.multi_objective and (self.nfe_range is None or not 1 <= self.nfe_range[0] < self.nfe_range[1]):
            raise UserError("--multi-objective needs --nfe-range LO,HI with 1 ≤ LO < HI")
        if set(self.methods) & {"gradient", "dp-gits", "dp-oss"} and self.kind != "explicit":
            raise UserError("gradient and DP methods produce explicit schedules; use --method optuna to search another --kind")
        if self.solver != "auto":
            SolverSpec(self.solver)
            self.run_runtime.check_solver(self.solver)
            spec_for_nfe(self.solver, self.nfe, runtime=self.run_runtime)  # an NFE this solver cannot run in is refused here
        elif self.kind != "explicit" or self.search_eta:
            raise UserError("--solver auto searches step sets across solvers; name one --solver to search "
                            "--kind or --search-eta")
        if self.dp_spacing not in GRID_SPACINGS:
            raise UserError(f"unknown --dp-spacing {self.dp_spacing!r}; choose one of {', '.join(GRID_SPACINGS)}")
        if self.search_eta and self.solver in self.run_runtime.fixed_eta:
            raise UserError(f"runtime {self.runtime} runs {self.solver} at η = {self.run_runtime.fixed_eta[self.solver]:g} only; "
                            "drop --search-eta")
        if self.search_eta and self.solver not in eta_solvers():
            raise UserError(f"--search-eta searches η, which only {', '.join(eta_solvers())} has; drop it or use --solver ddim")
        if self.save_pool and Path(self.save_pool).is_file():
            raise UserError(f"--save-pool {self.save_pool} is a file; name a folder (it is created if missing)")
        search_seed(self.seed)  # in the search range
        Teacher.parse(self.teacher)
        if not self.pool_solvers():
            raise UserError(f"runtime {self.runtime} has none of the solvers to search")

    @property
    def run_runtime(self) -> Runtime:
        """``runtime`` as the preset (an unknown name is refused in one line when the config is made)."""
        return runtime_named(self.runtime)

    def document(self, policy, spec: SolverSpec, provenance: dict | None = None) -> PolicyDocument:
        """A candidate of this run: ``policy`` with ``spec`` under the run's runtime."""
        return PolicyDocument(policy, spec, provenance or {}, self.run_runtime)

    @property
    def methods(self) -> tuple[str, ...]:
        """``--method`` as a tuple: ``all`` → every method of :data:`METHODS`."""
        return METHODS if self.method == "all" else tuple(m.strip() for m in self.method.split(",") if m.strip())

    @property
    def study_name(self) -> str:
        if self.study:
            return self.study
        span = f"{self.nfe_range[0]}-{self.nfe_range[1]}" if self.multi_objective else str(self.nfe)
        return f"{self.kind}-{self.solver}-nfe{span}" + ("" if self.runtime == "stepdrop" else f"-{self.runtime}")

    @property
    def directions(self) -> list[str]:
        return ["minimize", "minimize"] if self.multi_objective else ["minimize"]

    def study_config(self, model_hash: str) -> dict:
        """What the study optimises; a resumed run must match it."""
        keys = ("nfe", "kind", "solver", "seed", "trial_samples", "residual_weight", "teacher", "free_boundary",
                "search_eta", "prune_samples", "multi_objective", "nfe_range", "runtime")
        samples, promote_samples = self.requested_samples or (self.samples, self.promote_samples)
        return {"model_hash": model_hash, **{k: _jsonable(getattr(self, k)) for k in keys}, "samples": samples,
                "promote_samples": promote_samples}

    def pool_solvers(self) -> tuple[str, ...]:
        """Every solver the runtime has (``--solver auto``), or the pinned one."""
        return self.run_runtime.solver_names(SOLVERS) if self.solver == "auto" else (self.solver,)


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


@dataclass
class SearchCandidate:
    """A policy the search scored: a pool member or an Optuna trial (not an evaluation row).

    ``rungs`` maps a sample count to the objective there; ``scores`` are the full scores of the largest rung;
    ``held_out`` the selection check of a finalist."""

    name: str
    document: PolicyDocument
    source: str  # "pool" (analytic, dp-gits, dp-oss) or "optuna"
    scores: dict = field(default_factory=dict)
    rungs: dict[int, float] = field(default_factory=dict)
    held_out: dict | None = None
    details: dict = field(default_factory=dict)  # how a method made it (the gradient method's losses and costs)

    @property
    def key(self) -> tuple:
        """What makes two candidates the same sampler: solver, η, its NFE budget (Heun), steps (one run has one runtime)."""
        return candidate_key(self.document)

    def value(self, samples: int | None = None) -> float:
        """The objective at rung ``samples`` (default: the largest rung it reached)."""
        if not self.rungs:
            return math.inf
        return self.rungs.get(samples, math.inf) if samples is not None else self.rungs[max(self.rungs)]


def candidate_key(doc: PolicyDocument) -> tuple:
    steps = tuple(round(float(t), 6) for t in doc.policy.timesteps().tolist()) if doc.policy.static else \
        json.dumps(doc.policy.params(), sort_keys=True)
    return (doc.solver.name, doc.solver.eta, doc.solver.nfe, doc.policy.kind if not doc.policy.static else "steps", steps)


@dataclass
class OptimizeResult:
    best: SearchCandidate | None  # what was exported (single-objective)
    candidates: list[SearchCandidate]
    finalists: list[SearchCandidate]
    exported: list[Path]
    study_name: str | None
    trials: int
    wall_time_s: float
    fallback: bool = False  # True when nothing searched beat the best pool candidate on held-out noise
    config: OptimizeConfig | None = None  # the configuration as run: rung sizes and searched solvers resolved


class Clock:
    """Wall time of a run against its ``--budget``, for the log's "… s left" and the search's share."""

    def __init__(self, budget: float | None) -> None:
        self.start, self.budget = time.perf_counter(), budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> str:
        return f"{self.elapsed():.0f} s" + (f", {self.budget - self.elapsed():.0f} s of the budget left" if self.budget else "")


class Context:
    """The loaded model, features, study storage and objective, built once per process in this order:
    the model, the feature file, ``--storage`` and a resumed study's settings are all checked before the
    objective computes its teacher, the first expensive step (and the DP and scoring come later still)."""

    def __init__(self, cfg: OptimizeConfig, log: Callable[[str], None] = lambda m: None) -> None:
        self.device = resolve_device(cfg.device)
        self.loaded: LoadedModel = load_model(cfg.model, device=self.device)
        self.features = load_features_for_model(cfg.features, self.loaded.config, self.loaded.dataset, device=self.device)
        self.storage: optuna.storages.BaseStorage | None = None
        if "optuna" in cfg.methods:
            self.storage = make_storage(cfg.storage, cfg.study_name)
            check_resumable(cfg.study_name, self.storage, directions=cfg.directions,
                            config=cfg.study_config(self.loaded.weights_hash))
        self.log = log
        self.objective: Objective | None = None  # built by prepare() once the rung sizes are known
        self.known: dict[tuple, Scores] = {}  # scores by (candidate key, samples): seeded trials are not sampled twice
        if cfg.samples is not None and cfg.promote_samples is not None:
            self.prepare(cfg)

    def prepare(self, cfg: OptimizeConfig) -> None:
        """The objective on the search seed's first ``promote_samples`` x_T (its teacher, if any, is computed here)."""
        largest = max(cfg.trial_samples, cfg.samples if cfg.multi_objective else cfg.promote_samples)
        self.objective = Objective(self.loaded, self.features, samples=largest, seed=search_seed(cfg.seed),
                                   residual_weight=cfg.residual_weight, teacher=Teacher.parse(cfg.teacher),
                                   runtime=cfg.run_runtime, log=self.log)

    def score(self, doc: PolicyDocument, samples: int) -> Scores:
        """The objective of ``doc`` on the first ``samples`` x_T of the search seed (remembered for rung 0)."""
        key = (candidate_key(doc), samples)
        if key not in self.known:
            self.known[key] = self.objective(doc, samples=samples)
        return self.known[key]


# ---------------------------------------------------------------------------------------------------- the pool


def pool_grids(cfg: OptimizeConfig) -> list[tuple[SolverSpec, int]]:
    """(solver spec, grid size) of every pool solver, on the largest grid that runs within ``cfg.nfe`` under the run's
    runtime."""
    out = []
    for name in cfg.pool_solvers():
        try:
            out.append(spec_for_nfe(name, cfg.nfe, runtime=cfg.run_runtime))
        except UserError:
            continue
    return out


def analytic_pool(cfg: OptimizeConfig, loaded: LoadedModel) -> list[SearchCandidate]:
    """Every pool solver × every analytic schedule, each solver on the grid that spends ``cfg.nfe``."""
    out = []
    for spec, steps in pool_grids(cfg):
        name = spec.name
        for label, cls in POOL_SCHEDULES.items():
            try:
                policy = cls(nfe=steps, schedule=loaded.schedule)
            except UserError:
                continue  # the schedule cannot place that many distinct steps
            out.append(SearchCandidate(f"{name}/{label}", cfg.document(policy, spec), "pool"))
    return out


#: A DP-OSS whose one-step form evaluates the network on every edge (Heun's) runs only when that costs at most this
#: many evaluations (levels × N²/2 edges × samples); otherwise that solver gets DDIM's schedule, and the log says so.
OSS_EDGE_EVALUATIONS = 20000


def dp_pool(cfg: OptimizeConfig, ctx: Context, log: Callable[[str], None]) -> list[SearchCandidate]:
    """DP-GITS and DP-OSS schedules for every grid size the pool solvers need, each run with those solvers.

    GITS prices edges with one Euler step whatever the solver, so one schedule per grid size serves every solver of
    that size; DP-OSS steps with each solver's one-step form (``Solver.one_step_form``), so one schedule per size and
    form. The teacher is ``dp_teacher`` on ``dp_grid`` ``dp_spacing`` nodes (GITS's: iPNDM, 61, Karras); DP-OSS runs
    on its first ``dp_oss_samples`` trajectories (one NFE per reachable node per level per sample)."""
    wanted = [m for m in ("dp-gits", "dp-oss") if m in cfg.methods]
    if not wanted:
        return []
    by_size: dict[int, list[SolverSpec]] = {}
    for spec, steps in pool_grids(cfg):
        if steps <= cfg.dp_grid:
            by_size.setdefault(steps, []).append(spec)
    if not by_size:
        return []
    phase(log, f"DP: {cfg.dp_teacher} teacher trajectories on a {cfg.dp_grid}-node {cfg.dp_spacing} grid for {cfg.dp_samples} samples")
    traj = teacher_trajectory(ctx.loaded, grid_size=cfg.dp_grid, n=cfg.dp_samples, seed=search_seed(cfg.seed),
                              spacing=cfg.dp_spacing, solver=cfg.dp_teacher, runtime=cfg.run_runtime)
    oss_traj = traj.subset(min(cfg.dp_oss_samples, cfg.dp_samples))
    out = []
    for steps, specs in sorted(by_size.items()):
        if "dp-gits" in wanted:
            res = gits_schedule(traj, steps, cost=cfg.gits_cost, gamma=cfg.gits_gamma)
            log(f"dp-gits on {steps} steps ({res.nfe_spent} NFE): {[round(float(t), 2) for t in res.steps]}")
            policy = Explicit(steps=tuple(res.steps.tolist()), schedule=ctx.loaded.schedule)
            out += [SearchCandidate(f"{spec.name}/dp-gits", cfg.document(policy, spec), "pool") for spec in specs]
        if "dp-oss" not in wanted:
            continue
        forms: dict[str, list[SolverSpec]] = {}
        for spec in specs:
            form = spec.solver.one_step_form
            if form != "ddim" and steps * cfg.dp_grid ** 2 // 2 * oss_traj.states.shape[1] > OSS_EDGE_EVALUATIONS:
                log(f"dp-oss: {spec.name}'s one-step form would cost more than {OSS_EDGE_EVALUATIONS} evaluations on "
                    f"this grid; it gets DDIM's schedule (a smaller --dp-grid runs its own)")
                form = "ddim"
            forms.setdefault(form, []).append(spec)
        for form, members in forms.items():
            res = oss_schedule(ctx.loaded, oss_traj, steps, solver=form, runtime=cfg.run_runtime)
            log(f"dp-oss ({form} steps) on {steps} steps ({res.nfe_spent} NFE): {[round(float(t), 2) for t in res.steps]}")
            policy = Explicit(steps=tuple(res.steps.tolist()), schedule=ctx.loaded.schedule)
            out += [SearchCandidate(f"{spec.name}/dp-oss", cfg.document(policy, spec), "pool") for spec in members]
    return out


def runnable(cfg: OptimizeConfig, candidates: list[SearchCandidate], log: Callable[[str], None]) -> list[SearchCandidate]:
    """The candidates the run's tool can run as measured: under a tool's runtime (a preset with its own solver set) one
    whose steps that tool cannot take (diffusers' integer-only schedulers and real-valued DP or learned steps) is dropped,
    so the export always runs there."""
    if cfg.run_runtime.solvers is None:
        return candidates
    kept = []
    for candidate in candidates:
        problems = export_problems(candidate.document, cfg.run_runtime)
        if problems:
            log(f"{candidate.name}: {cfg.runtime} cannot run it as measured ({'; '.join(problems)})")
        else:
            kept.append(candidate)
    return kept


def gradient_pool(cfg: OptimizeConfig, ctx: Context, rung1: list[SearchCandidate], seconds: float | None,
                  log: Callable[[str], None]) -> list[SearchCandidate]:
    """LD3-style learned steps (:mod:`~stepdrop_search.search.gradient`) for each deterministic solver the search works
    on, starting from that solver's best rung-1 schedule, given ``seconds`` each (None: ``gradient_epochs``).

    Training and validation take x_T the rungs never see: samples after the largest rung of the search seed (the
    training set first, then the validation set). The ``fid`` loss needs no teacher; the others use ``teacher``."""
    solvers = [name for name in search_solvers_of(cfg) if not SolverSpec(name).solver.stochastic(SolverSpec(name).eta)]
    if not solvers:
        log("gradient: no deterministic solver to learn steps for (it needs one: ddim, dpmpp-2m, unipc, …)")
        return []
    n, offset, seed = cfg.gradient_samples, max(cfg.promote_samples, cfg.trial_samples), search_seed(cfg.seed)
    shape = (ctx.loaded.config.in_channels, ctx.loaded.config.image_size, ctx.loaded.config.image_size)
    device = next(ctx.loaded.model.parameters()).device
    x_T = initial_noise(offset + 2 * n, shape, seed)[offset:].to(device)
    target = x_T if cfg.gradient_loss == "fid" else teacher_outputs(
        ctx.loaded, Teacher.parse(cfg.teacher), n=offset + 2 * n, seed=seed, runtime=cfg.run_runtime, log=log)[offset:].to(device)
    out = []
    for name in solvers:
        start = ranked([c for c in rung1 if c.document.solver.name == name], cfg.promote_samples)[0]
        spec, steps = start.document.solver, len(start.document.policy.timesteps())
        phase(log, f"gradient: {name} from {start.name}, {cfg.gradient_loss} loss on {n} + {n} samples"
              + (f", {seconds:.0f} s" if seconds is not None else ""), cfg.gradient_epochs)
        res = learn_schedule(ctx.loaded.model, ctx.loaded.schedule, spec, steps, train=(x_T[:n], target[:n]),
                             validation=(x_T[n:], target[n:]), init=start.document.policy.timesteps(),
                             space=cfg.gradient_space, loss=cfg.gradient_loss, features=ctx.features,
                             epochs=cfg.gradient_epochs, batch_size=cfg.gradient_batch, lr=cfg.gradient_lr,
                             seconds=seconds, seed=cfg.seed, runtime=cfg.run_runtime, log=log)
        log(f"gradient: {name} validation {cfg.gradient_loss} {res.initial_validation_loss:.4f} → {res.validation_loss:.4f} "
            f"in {res.epochs} epochs, {res.seconds:.0f} s, {res.forward_nfe} forward + {res.backward_nfe} backward NFE: "
            f"{[round(float(t), 2) for t in res.steps]}")
        policy = Explicit(steps=tuple(res.steps.tolist()), schedule=ctx.loaded.schedule)
        if candidate_key(cfg.document(policy, spec)) == start.key:
            log(f"gradient: {name} kept its start (no epoch improved on validation)")
            continue
        out.append(SearchCandidate(f"{name}/gradient", cfg.document(policy, spec), "pool", details={
            "method": "gradient", "init": start.name, "loss": cfg.gradient_loss, "space": cfg.gradient_space,
            "validation_loss": [res.initial_validation_loss, res.validation_loss], "epochs": res.epochs,
            "seconds": round(res.seconds, 1), "forward_nfe": res.forward_nfe, "backward_nfe": res.backward_nfe}))
    return out


#: The held-out check's smallest sample count. At 1024 the NFE-10 check once exported DPM-Solver++(2M) SDE on DP-OSS
#: steps (held-out 3.27), which the first 2048 samples of the same seed put 1.04 behind Heun on learned steps and the
#: evaluation seeds 1.12 ± 0.47 behind: a stochastic sampler's difference to a deterministic one does not cancel under
#: common x_T, and 1024 samples left the class mix to decide (README, "Learned steps and the published DPs").
HELD_OUT_MIN = 2048
#: Network evaluations per sample that rung 0 spends on each candidate, about: rung 0 takes 1280/NFE samples.
RUNG0_FORWARDS = 1280


def rung_sizes(nfe: int) -> tuple[int, int, int]:
    """(rung 0, rung 1, held-out) sample counts for a search at ``nfe``: rung 0 the power of two nearest below
    1280/NFE, within 64..512 (proxy-FID at 64 samples ranks near-equal samplers poorly, so a cheap NFE buys more
    samples, not only more trials), rung 1 four times that (at most 1024), the held-out check twice rung 1 and at
    least 2048. They depend on the NFE only, so a search gives the same result on any machine."""
    rung0 = 64
    while rung0 * 2 <= min(512, RUNG0_FORWARDS / nfe):
        rung0 *= 2
    rung1 = min(4 * rung0, 1024)
    return rung0, rung1, max(HELD_OUT_MIN, 2 * rung1)


def resolved(cfg: OptimizeConfig, ctx: Context, study: optuna.Study | None, log: Callable[[str], None]) -> OptimizeConfig:
    """cfg with its rung sizes fixed: as given, as a resumed study recorded them, or by :func:`rung_sizes` (recorded,
    so every worker and every resume scores trials on the same samples even if the rule changes)."""
    recorded = study.user_attrs.get("rung_sizes") if study is not None else None
    if cfg.samples is None and recorded:
        sizes = tuple(recorded)
    else:
        auto = rung_sizes(cfg.nfe_range[1] if cfg.multi_objective else cfg.nfe)
        given = (cfg.samples, cfg.promote_samples, cfg.held_out_samples)
        sizes = tuple(g if g is not None else a for g, a in zip(given, auto, strict=True))
        sizes = (sizes[0], max(sizes[1], sizes[0]), sizes[2])
        if study is not None:
            study.set_user_attr("rung_sizes", list(sizes))
    log(f"rungs: {sizes[0]} samples for rung 0 and the search, {sizes[1]} for rung 1, {sizes[2]} for the held-out check")
    out = replace(cfg, samples=sizes[0], promote_samples=sizes[1], held_out_samples=sizes[2],
                  requested_samples=cfg.requested_samples or (cfg.samples, cfg.promote_samples))
    ctx.prepare(out)
    return out


def score_rung(ctx: Context, candidates: list[SearchCandidate], samples: int, label: str,
               log: Callable[[str], None], clock: Clock) -> None:
    """Score ``candidates`` on the first ``samples`` x_T of the search seed; every one gets the same noise."""
    phase(log, f"{label}: {len(candidates)} candidates on {samples} samples ({clock.left()})", len(candidates))
    for i, cand in enumerate(candidates, 1):
        scores = ctx.score(cand.document, samples)
        cand.rungs[samples] = scores.value
        cand.scores = scores.to_dict() | {"samples": samples}
        parts = [f"proxy-FID {scores.fid:.3f}"] if scores.fid is not None else []
        parts += [f"residual {scores.residual:.5f}"] if scores.residual is not None else []
        advance(log, f"  [{i}/{len(candidates)}] {cand.name}: objective {scores.value:.4f}" + (f" ({', '.join(parts)})" if parts else ""))


def ranked(candidates: list[SearchCandidate], samples: int | None = None) -> list[SearchCandidate]:
    return sorted(candidates, key=lambda c: c.value(samples))


# ---------------------------------------------------------------------------------------------------- the study


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        with warnings.catch_warnings():  # group=True is "experimental" since Optuna 2.8 and is what conditional spaces need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, deterministic_objective=True)
    return optuna.samplers.NSGAIISampler(seed=seed)


def search_solvers_of(cfg: OptimizeConfig) -> tuple[str, ...]:
    return cfg.search_solvers or cfg.pool_solvers()


def trial_document(trial: optuna.Trial, cfg: OptimizeConfig, ctx: Context, nfe: int) -> PolicyDocument:
    """The policy a trial proposes: a solver (categorical when the study searches several), then its schedule.
    Step-set parameters are named per grid size, since solvers that spend one NFE differently need other counts."""
    solvers = search_solvers_of(cfg)
    name = trial.suggest_categorical("solver", list(solvers)) if len(solvers) > 1 else solvers[0]
    spec, steps = spec_for_nfe(name, nfe, runtime=cfg.run_runtime)
    prefix = f"k{steps}_" if len(solvers) > 1 else ""
    doc = suggest_document(trial, cfg.kind, steps, ctx.loaded.schedule, solver=spec, free_boundary=cfg.free_boundary,
                           search_eta=cfg.search_eta, prefix=prefix)
    return cfg.document(doc.policy, doc.solver)


def trial_function(cfg: OptimizeConfig, ctx: Context):
    """The Optuna objective: rung 0's objective (a cheap residual-only rung first, which the pruner can stop)."""

    def run(trial: optuna.Trial):
        nfe = trial.suggest_int("nfe", *cfg.nfe_range) if cfg.multi_objective else cfg.nfe
        try:
            doc = trial_document(trial, cfg, ctx, nfe)
        except UserError as exc:
            trial.set_user_attr("invalid", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        trial.set_user_attr("policy", doc.to_dict())
        seen = (candidate_key(doc), cfg.trial_samples) in ctx.known
        if not cfg.multi_objective and cfg.prune_samples < cfg.trial_samples and not seen:
            cheap = ctx.objective(doc, samples=cfg.prune_samples, with_fid=cfg.residual_weight == 0)
            trial.report(cheap.value, 0)
            if trial.should_prune():
                raise optuna.TrialPruned()
        scores = ctx.score(doc, cfg.trial_samples)
        trial.set_user_attr("scores", scores.to_dict())
        if scores.failed:
            trial.set_user_attr("failed", scores.failed)
            raise optuna.TrialPruned(scores.failed)
        return (scores.value, scores.nfe) if cfg.multi_objective else scores.value

    return run


def _counted(study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def progress_callback(cfg: OptimizeConfig, log: Callable[[str], None], clock: Clock | None = None):
    """An Optuna callback that reports each finished trial, the best value so far and the time left."""

    pruned = 0

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal pruned
        if trial.state != optuna.trial.TrialState.COMPLETE:
            pruned += 1  # most trials end at the cheap rung: counted here, not logged one by one
            return
        if cfg.multi_objective:
            outcome = f"Pareto set {len(study.best_trials)}"
        else:
            outcome = f"objective {trial.value:.4f}, best {study.best_value:.4f}"
        solver = trial.params.get("solver", "")
        advance(log, f"trial {trial.number}{' ' + solver if solver else ''}: {outcome}; {pruned} pruned so far"
            + (f" ({clock.left()})" if clock else ""))

    return report


def open_search_study(cfg: OptimizeConfig, ctx: Context) -> tuple[optuna.Study, bool]:
    """cfg's study in the storage ctx opened; returns (study, created_here)."""
    return open_study(cfg.study_name, ctx.storage, sampler=make_sampler(cfg.sampler, cfg.seed),
                      pruner=optuna.pruners.MedianPruner(n_startup_trials=5), directions=cfg.directions,
                      config=cfg.study_config(ctx.loaded.weights_hash))


def worker(cfg: OptimizeConfig, ctx: Context | None = None, log: Callable[[str], None] = lambda m: None,
           clock: Clock | None = None) -> int:
    """One search worker: load the shared study and run trials until the study holds ``trials`` finished
    (complete or pruned) trials or the timeout passes. Returns the trials this worker finished."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = ctx or Context(cfg, log)
    study, _ = open_search_study(cfg, ctx)
    before = _counted(study)
    objective = trial_function(cfg, ctx)
    deadline = time.monotonic() + cfg.timeout if cfg.timeout else math.inf
    callbacks = [progress_callback(cfg, log, clock)]
    while _counted(study) < cfg.trials and time.monotonic() < deadline:
        try:
            study.optimize(objective, n_trials=1, gc_after_trial=False, callbacks=callbacks)
        except ValueError as exc:
            # SQLite can hand one enqueued (seed) trial to two workers at once; the second worker's
            # result is refused ("Cannot tell a COMPLETE trial") and discarded: the study keeps one.
            if "Cannot tell" not in str(exc):
                raise
    return _counted(study) - before


def _worker_process(cfg: OptimizeConfig, index: int) -> int:
    torch.set_num_threads(1)  # n_jobs processes share the cores
    return worker(cfg, log=lambda m: print(f"[worker {index}] {m}", file=sys.stderr, flush=True))


def seed_study(cfg: OptimizeConfig, study: optuna.Study, seeds: list[SearchCandidate]) -> None:
    """Enqueue the pool's step sets of the searched solvers as the first trials (explicit kind only)."""
    if cfg.kind != "explicit" or cfg.multi_objective:
        return
    solvers = search_solvers_of(cfg)
    for cand in seeds:
        name = cand.document.solver.name
        if name not in solvers or not cand.document.policy.static:
            continue
        steps = cand.document.policy.timesteps().tolist()
        fits_fixed_ends = steps[0] == cand.document.policy.T - 1 and steps[-1] == 0
        if len(steps) != spec_for_nfe(name, cfg.nfe, runtime=cfg.run_runtime)[1] or not (cfg.free_boundary or fits_fixed_ends):
            continue
        params = steps_to_params(steps, cfg.free_boundary, f"k{len(steps)}_" if len(solvers) > 1 else "")
        study.enqueue_trial(params | ({"solver": name} if len(solvers) > 1 else {}), user_attrs={"source": cand.name},
                            skip_if_exists=True)


def chosen_search_solvers(cfg: OptimizeConfig, study: optuna.Study | None, rung1: list[SearchCandidate]) -> tuple[str, ...]:
    """The solvers the study searches: the pinned one, or the ``SEARCHED_SOLVERS`` best of the pool's rung 1 (which
    depends only on what the study's settings fix, so a resumed study gets the same set; a study that recorded its
    set keeps it)."""
    if cfg.solver != "auto":
        return (cfg.solver,)
    recorded = study.user_attrs.get("search_solvers") if study is not None else None
    if recorded:
        return tuple(recorded)
    order = ranked(rung1, cfg.promote_samples)
    chosen = tuple(dict.fromkeys(c.document.solver.name for c in order if math.isfinite(c.value())))[:SEARCHED_SOLVERS]
    if study is not None:
        study.set_user_attr("search_solvers", list(chosen))
    return chosen


def search_seconds(cfg: OptimizeConfig, elapsed: float, reserve: float) -> float | None:
    """Seconds the workers may search: ``--timeout``, capped by what is left of ``--budget`` after the
    work done so far and the reserve for the later phases; None means no limit."""
    left = cfg.budget - elapsed - reserve if cfg.budget is not None else math.inf
    limit = min(left, cfg.timeout if cfg.timeout is not None else math.inf)
    return None if math.isinf(limit) else limit


def study_candidates(cfg: OptimizeConfig, study: optuna.Study, known: set[tuple]) -> list[SearchCandidate]:
    """The study's Pareto set, or its ``promote`` best complete trials that are not already pool candidates."""
    if cfg.multi_objective:
        trials = study.best_trials
    else:
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        trials = sorted(complete, key=lambda t: t.value)
    out = []
    for t in trials:
        doc = PolicyDocument.from_dict(t.user_attrs["policy"], f"trial {t.number}")
        if candidate_key(doc) in known:
            continue  # a seeded trial that reproduced its pool candidate: that candidate stands for it
        known.add(candidate_key(doc))
        name = f"optuna-trial-{t.number} ({doc.solver.name})"
        cand = SearchCandidate(name, doc, "optuna", dict(t.user_attrs.get("scores", {})) | {"samples": cfg.trial_samples})
        cand.rungs[cfg.trial_samples] = t.values[0] if cfg.multi_objective else t.value
        out.append(cand)
        if not cfg.multi_objective and len(out) >= cfg.promote:
            break
    return out


# ---------------------------------------------------------------------------------------------------- selection


#: Pool candidates promoted to rung 1 besides each solver's best, and pool candidates always among the finalists: the
#: reference a searched candidate must beat is the best pool candidate on held-out noise, so the pool's best must not
#: be lost to rung 0's noise.
POOL_PROMOTED, POOL_FINALISTS = 6, 2


def pool_promoted(cfg: OptimizeConfig, pool: list[SearchCandidate]) -> list[SearchCandidate]:
    """The pool's part of rung 1: each solver's best rung-0 row and the ``POOL_PROMOTED`` best overall.

    Each solver's best goes on because proxy-FID's finite-sample bias (FID_N ≈ FID_∞ + k/N) has a solver-dependent k:
    at 64 samples Heun's NFE-10 row scores 7.5 against 4.5–5.3 for the multistep solvers, at 256 samples it is the
    best of them (3.8), as at 2000 (README). Within a solver rung 0 compares like with like."""
    order = [c for c in ranked(pool, cfg.samples) if math.isfinite(c.value(cfg.samples))]
    best_per_solver = list({c.document.solver.name: c for c in reversed(order)}.values())
    chosen = order[:POOL_PROMOTED]
    return chosen + [c for c in ranked(best_per_solver, cfg.samples) if c not in chosen]


def choose_finalists(cfg: OptimizeConfig, rung1: list[SearchCandidate]) -> list[SearchCandidate]:
    """The held-out check's candidates: rung 1's ``finalists`` best, the best pool candidates and the best searched one."""
    order = [c for c in ranked(rung1, cfg.promote_samples) if math.isfinite(c.value(cfg.promote_samples))]
    chosen = order[:cfg.finalists]
    pool = [c for c in order if c.source == "pool"][:POOL_FINALISTS]
    searched = [c for c in order if c.source != "pool"][:1]
    return chosen + [c for c in pool + searched if c not in chosen]


def held_out_check(cfg: OptimizeConfig, ctx: Context, finalists: list[SearchCandidate], log: Callable[[str], None],
                   clock: Clock) -> SearchCandidate | None:
    """Sample every finalist on the selection seed's x_T; fill each one's ``held_out`` with its proxy-FID, KID and
    paired difference (95% bootstrap interval) to the best pool finalist there. Returns that reference."""
    seed = selection_seed(cfg.seed)
    device = next(ctx.loaded.model.parameters()).device
    feats = {}
    phase(log, f"held-out check: {len(finalists)} finalists on {cfg.held_out_samples} samples ({clock.left()})", len(finalists))
    for i, cand in enumerate(finalists, 1):
        advance(log, f"held-out check [{i}/{len(finalists)}] {cand.name}: {cfg.held_out_samples} samples of seed {seed} "
                     f"({clock.left()})")
        run = generate(ctx.loaded.model, ctx.loaded.schedule, cand.document.policy, cand.document.solver,
                       n=cfg.held_out_samples, seed=seed, runtime=cand.document.runtime)
        if not torch.isfinite(run.x0).all():
            continue
        feats[cand.name] = proxy_features(run.x0, ctx.features, device=device)[0]
        kid = kid_of_features(feats[cand.name], ctx.features, seed=seed)[0]
        cand.held_out = {"seed": seed, "samples": cfg.held_out_samples, "fid": fid_of_features(feats[cand.name], ctx.features),
                         "kid": kid}
    scored = [c for c in finalists if c.held_out is not None]
    pool = [c for c in scored if c.source == "pool"]
    if not pool:
        return None
    reference = min(pool, key=lambda c: c.held_out["fid"])
    for cand in scored:
        diff, low, high = paired_fid_difference(feats[cand.name], feats[reference.name], ctx.features, seed=seed)
        cand.held_out |= {"reference": reference.name, "fid_difference": diff, "ci95": [low, high],
                          "kid_difference": cand.held_out["kid"] - reference.held_out["kid"]}
    return reference


def significantly_better(cand: SearchCandidate) -> bool:
    """Its whole 95% interval of the paired proxy-FID difference lies below zero and KID agrees in sign."""
    h = cand.held_out
    return h is not None and "ci95" in h and h["ci95"][1] < 0 and h["kid_difference"] < 0


def pick_export(finalists: list[SearchCandidate], reference: SearchCandidate | None) -> tuple[SearchCandidate | None, bool]:
    """(what to export, whether it is the fallback): the searched finalist that beats the best pool finalist by the
    most, among those that beat it significantly; else that pool finalist."""
    winners = [c for c in finalists if c.source != "pool" and significantly_better(c)]
    if winners:
        return min(winners, key=lambda c: c.held_out["fid_difference"]), False
    return reference, True


# ---------------------------------------------------------------------------------------------------- the job


def optimize(cfg: OptimizeConfig, log: Callable[[str], None] = lambda m: None) -> OptimizeResult:
    clock = Clock(cfg.budget)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress comes from our own log
    ctx = Context(cfg, log)
    if cfg.multi_objective:
        return _optimize_pareto(cfg, ctx, log, clock)
    pool = runnable(cfg, analytic_pool(cfg, ctx.loaded) + dp_pool(cfg, ctx, log), log)
    study, created = open_search_study(cfg, ctx) if "optuna" in cfg.methods else (None, False)
    cfg = resolved(cfg, ctx, study, log)
    rung0 = time.perf_counter()
    score_rung(ctx, pool, cfg.samples, "rung 0 (pool)", log, clock)
    forwards = sum(c.scores.get("nfe") or 0 for c in pool) * cfg.samples
    per_forward = (time.perf_counter() - rung0) / max(1.0, forwards)  # seconds per sample-evaluation, metrics included

    rung1 = pool_promoted(cfg, pool)
    score_rung(ctx, rung1, cfg.promote_samples, "rung 1 (pool: each solver's best and the best overall)", log, clock)
    cfg = replace(cfg, search_solvers=chosen_search_solvers(cfg, study, rung1))
    # The searched candidates' rung 1 and the held-out check come after the search: keep their time out of the
    # budget (metrics and the bootstrap cost a few seconds per finalist).
    reserve = per_forward * cfg.nfe * (cfg.promote_samples * cfg.promote + cfg.held_out_samples * (cfg.finalists + 3)) \
        + 5 * (cfg.finalists + 3)

    if "gradient" in cfg.methods:
        left = search_seconds(cfg, clock.elapsed(), reserve)  # the study, if any, gets the other half
        share = None if left is None else max(0.0, left) / (2 if "optuna" in cfg.methods else 1) / len(cfg.search_solvers)
        # one epoch: a forward and a backward (≈ 2 forwards) on the training set, a forward on the validation set
        epoch = per_forward * cfg.nfe * 4 * cfg.gradient_samples
        if share is not None and share < epoch:
            log(f"gradient: {share:.0f} s per solver is less than one epoch (≈ {epoch:.0f} s); skipped "
                "(raise --budget to learn steps at this NFE)")
        else:
            learned = runnable(cfg, gradient_pool(cfg, ctx, rung1, share, log), log)
            score_rung(ctx, learned, cfg.samples, "rung 0 (gradient)", log, clock)
            score_rung(ctx, learned, cfg.promote_samples, "rung 1 (gradient)", log, clock)
            pool += learned
            rung1 += learned

    candidates = list(pool)
    study_name, trials_done = None, 0
    if "optuna" in cfg.methods:
        if created:
            seed_study(cfg, study, pool)
        study_name = cfg.study_name
        search_time = search_seconds(cfg, clock.elapsed(), reserve)
        phase(log, f"search: study {study_name} over {', '.join(cfg.search_solvers)}, {_counted(study)} finished trials so far"
            + (f", {search_time:.0f} s for it (the rest of the budget is kept for rung 1 and the held-out check)"
               if search_time is not None and search_time > 0 else ""))
        if search_time is not None and search_time <= 0:
            log(f"the --budget of {cfg.budget:.0f} s is spent before the search; going on with the pool "
                "(raise --budget, or re-run: the teacher is cached now)")
        elif cfg.n_jobs == 1:
            worker(replace(cfg, timeout=search_time), ctx, log, clock)
        else:
            from joblib import Parallel, delayed

            Parallel(n_jobs=cfg.n_jobs, backend="loky")(delayed(_worker_process)(replace(cfg, timeout=search_time), i)
                                                        for i in range(cfg.n_jobs))
        trials_done = _counted(study)
        searched = study_candidates(cfg, study, {c.key for c in pool})  # its ``promote`` best, new to the pool
        score_rung(ctx, searched, cfg.promote_samples, "rung 1 (searched)", log, clock)
        candidates += searched
        rung1 += searched

    finalists = choose_finalists(cfg, rung1)
    reference = held_out_check(cfg, ctx, finalists, log, clock)
    best, fallback = pick_export(finalists, reference)
    if best is None:
        raise UserError("no candidate produced finite samples; nothing to export")
    if fallback:
        log(f"nothing searched beat the best pool candidate significantly on held-out noise: exporting {best.name}")
    exported = [export(cfg, ctx, best, study_name, trials_done, clock.elapsed(), log, fallback=fallback)]
    if cfg.save_pool:
        save_pool(cfg, ctx, pool, log)
    return OptimizeResult(best, candidates, finalists, exported, study_name, trials_done, clock.elapsed(), fallback, cfg)


def _optimize_pareto(cfg: OptimizeConfig, ctx: Context, log: Callable[[str], None], clock: Clock) -> OptimizeResult:
    """NSGA-II over (objective, measured NFE); every Pareto trial exported with its held-out proxy-FID."""
    study, _ = open_search_study(cfg, ctx)
    cfg = resolved(cfg, ctx, study, log)
    search_time = search_seconds(cfg, clock.elapsed(), 0.0)
    if search_time is None or search_time > 0:
        worker(replace(cfg, timeout=search_time), ctx, log, clock)
    pareto = study_candidates(cfg, study, set())
    device = next(ctx.loaded.model.parameters()).device
    for cand in pareto:
        run = generate(ctx.loaded.model, ctx.loaded.schedule, cand.document.policy, cand.document.solver,
                       n=cfg.held_out_samples, seed=selection_seed(cfg.seed), runtime=cand.document.runtime)
        fid = fid_of_features(proxy_features(run.x0, ctx.features, device=device)[0], ctx.features) \
            if torch.isfinite(run.x0).all() else math.inf
        cand.held_out = {"seed": selection_seed(cfg.seed), "samples": cfg.held_out_samples, "fid": fid}
    exported = [export(cfg, ctx, cand, cfg.study_name, _counted(study), clock.elapsed(), log, index=i)
                for i, cand in enumerate(pareto)]
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    figure = plot_pareto_front([(t.values[1], t.values[0]) for t in complete],
                               [(c.scores.get("nfe") or c.document.solver.solver.nfe(c.document.policy.nfe),
                                 c.value(), (c.held_out or {}).get("fid")) for c in pareto],
                               Path(f"policies/pareto-{cfg.study_name}.png"))
    log(f"Pareto front: {figure}")
    return OptimizeResult(None, pareto, pareto, exported + [figure], cfg.study_name, _counted(study), clock.elapsed(),
                          config=cfg)


def save_pool(cfg: OptimizeConfig, ctx: Context, pool: list[SearchCandidate], log: Callable[[str], None]) -> None:
    """Every pool candidate as a policy file in ``cfg.save_pool`` (``SOLVER_SCHEDULE-nfeN.json``), with its search
    scores: ``evaluate --policy DIR`` then measures the export against the whole pool on evaluation seeds."""
    folder = Path(cfg.save_pool)
    for cand in pool:
        prov = provenance(cfg.command, ctx.loaded.weights_hash, objective={
            **cand.scores, "rungs": {str(k): v for k, v in sorted(cand.rungs.items())}, "search_seed": search_seed(cfg.seed)},
            search={"pool_member": cand.name, "held_out": cand.held_out, **({"made_by": cand.details} if cand.details else {})})
        save_policy(folder / f"{cand.name.replace('/', '_')}-nfe{cfg.nfe}.json",
                    cfg.document(cand.document.policy, cand.document.solver, prov))
    log(f"wrote the {len(pool)} pool candidates to {folder}/")


def export(cfg: OptimizeConfig, ctx: Context, cand: SearchCandidate, study_name: str | None, trials: int, wall: float,
           log: Callable[[str], None], *, fallback: bool = False, index: int = 0) -> Path:
    """Write ``cand`` atomically with its provenance: the search's objective values, the held-out check and the
    settings (the storage without its password)."""
    public = replace(cfg, storage=shown(cfg.storage), command=cfg.command.replace(cfg.storage, shown(cfg.storage))) \
        if cfg.storage else cfg
    nfe = round(cand.document.solver.solver.nfe(cand.document.policy.nfe))
    if cfg.multi_objective:
        path = Path(f"policies/pareto-{cfg.study_name}-{index}-nfe{nfe}.json")
    else:
        suffix = "" if cfg.runtime == "stepdrop" else f"-{cfg.runtime}"
        path = Path(cfg.out) if cfg.out else Path(f"policies/best-{cfg.kind}-{cfg.solver}-nfe{nfe}{suffix}.json")
    prov = provenance(public.command, ctx.loaded.weights_hash, objective={
        **cand.scores, "rungs": {str(k): v for k, v in sorted(cand.rungs.items())}, "search_seed": search_seed(cfg.seed),
        "residual_weight": cfg.residual_weight, "teacher": cfg.teacher, "held_out": cand.held_out},
        search={"method": cfg.method, "winner": cand.name, "source": cand.source, "fallback_to_pool": fallback,
                **({"made_by": cand.details} if cand.details else {}),
                "study": study_name, "storage": public.storage or "sqlite (studies/)", "trials": trials,
                "sampler": cfg.sampler, "kind": cfg.kind, "solvers_searched": list(search_solvers_of(cfg)),
                "wall_time_s": round(wall, 1),
                "config": asdict(public) | {"nfe_range": _jsonable(cfg.nfe_range), "search_solvers": list(cfg.search_solvers)}})
    saved = save_policy(path, cfg.document(cand.document.policy, cand.document.solver, prov))
    log(f"exported {cand.name} → {path}")
    return saved
