"""`stepdrop-search optimize`: DP-GITS, DP-OSS and Optuna searches behind one function.

``optimize(config)`` runs the chosen methods on one model and objective, seeds the Optuna study with
the baselines and the DP results (so the search starts from the best known point), runs the workers
(``n_jobs`` local processes via joblib; more machines run the same command against one storage), and
exports the best policy — or the Pareto set in multi-objective mode — atomically with provenance.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import optuna
import torch

from stepdrop_search.checkpoint import LoadedModel
from stepdrop_search.devices import resolve_device
from stepdrop_search.diffusion.solvers import SolverSpec, eta_solvers, spec_for_nfe
from stepdrop_search.errors import UserError
from stepdrop_search.loading import load_model
from stepdrop_search.objectives.features import load_features_for_model
from stepdrop_search.objectives.objective import Objective
from stepdrop_search.objectives.residual import Teacher
from stepdrop_search.policies import PolicyDocument, save_policy
from stepdrop_search.policies.io import provenance
from stepdrop_search.policies.kinds import Explicit, Importance, Uniform
from stepdrop_search.search.dp import GRID_SPACINGS, gits_schedule, oss_schedule, teacher_trajectory
from stepdrop_search.search.space import SEARCHABLE, steps_to_params, suggest_document
from stepdrop_search.search.study import check_resumable, make_storage, open_study, shown

METHODS = ("dp-gits", "dp-oss", "optuna", "all")
SAMPLERS = ("tpe", "cmaes", "gp", "nsga2")
HELD_OUT_SEEDS = (1000, 1001, 1002)


@dataclass(frozen=True)
class OptimizeConfig:
    nfe: int = 25
    method: str = "all"
    kind: str = "explicit"
    solver: str = "ddim"
    model: str | None = None
    features: str | None = None
    device: str = "auto"
    samples: int = 128
    seed: int = 0
    residual_weight: float = 100.0
    teacher: str = "ddim-1000"
    trials: int = 30
    timeout: float | None = None
    budget: float | None = 900.0
    sampler: str = "tpe"
    study: str | None = None
    storage: str | None = None
    n_jobs: int = 1
    free_boundary: bool = True
    search_eta: bool = False
    prune_samples: int = 32
    dp_grid: int = 100
    dp_samples: int = 64
    dp_spacing: str = "uniform"
    gits_cost: str = "dev"
    gits_gamma: float = 1.15
    multi_objective: bool = False
    nfe_range: tuple[int, int] | None = None
    out: str | None = None
    command: str = ""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown --method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown --sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.kind not in SEARCHABLE:
            raise UserError(f"--kind {self.kind!r} cannot be searched; choose one of {', '.join(SEARCHABLE)}")
        if (self.budget is not None and self.budget <= 0) or (self.timeout is not None and self.timeout <= 0):
            raise UserError("--budget and --timeout are seconds > 0 (leave them out for no limit)")
        if self.nfe < 1 or self.trials < 1 or self.samples < 2 or self.n_jobs < 1:
            raise UserError("--nfe, --trials and --n-jobs must be ≥ 1 and --samples ≥ 2")
        if self.multi_objective and (self.nfe_range is None or not 1 <= self.nfe_range[0] < self.nfe_range[1]):
            raise UserError("--multi-objective needs --nfe-range LO,HI with 1 ≤ LO < HI")
        if self.method in ("dp-gits", "dp-oss", "all") and self.kind != "explicit":
            raise UserError("DP methods produce explicit schedules; use --method optuna to search another --kind")
        SolverSpec(self.solver)
        if self.dp_spacing not in GRID_SPACINGS:
            raise UserError(f"unknown --dp-spacing {self.dp_spacing!r}; choose one of {', '.join(GRID_SPACINGS)}")
        if self.search_eta and self.solver not in eta_solvers():
            raise UserError(f"--search-eta searches η, which only {', '.join(eta_solvers())} has; drop it or use --solver ddim")
        Teacher.parse(self.teacher)

    @property
    def study_name(self) -> str:
        if self.study:
            return self.study
        span = f"{self.nfe_range[0]}-{self.nfe_range[1]}" if self.multi_objective else str(self.nfe)
        return f"{self.kind}-{self.solver}-nfe{span}"

    @property
    def directions(self) -> list[str]:
        return ["minimize", "minimize"] if self.multi_objective else ["minimize"]

    def study_config(self, model_hash: str) -> dict:
        """What the study optimises; a resumed run must match it."""
        keys = ("nfe", "kind", "solver", "samples", "seed", "residual_weight", "teacher", "free_boundary",
                "search_eta", "prune_samples", "multi_objective", "nfe_range")
        return {"model_hash": model_hash, **{k: _jsonable(getattr(self, k)) for k in keys}}


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


@dataclass
class SearchCandidate:
    """A policy the search scored: a baseline, a DP result or an Optuna trial (not an evaluation row)."""

    name: str
    document: PolicyDocument
    source: str  # "baseline", "dp-gits", "dp-oss", "optuna"
    scores: dict = field(default_factory=dict)
    held_out: tuple[float, float] | None = None  # proxy-FID mean, std over held-out seeds


@dataclass
class OptimizeResult:
    best: SearchCandidate | None
    candidates: list[SearchCandidate]
    exported: list[Path]
    study_name: str | None
    trials: int
    wall_time_s: float


class Context:
    """The loaded model, features, study storage and objective, built once per process in this order:
    the model, the feature file, ``--storage`` and a resumed study's settings are all checked before the
    objective computes its teacher, the first expensive step (and the DP and scoring come later still)."""

    def __init__(self, cfg: OptimizeConfig, log: Callable[[str], None] = lambda m: None) -> None:
        self.device = resolve_device(cfg.device)
        self.loaded: LoadedModel = load_model(cfg.model, device=self.device)
        self.features = load_features_for_model(cfg.features, self.loaded.config, self.loaded.dataset, device=self.device)
        self.storage: optuna.storages.BaseStorage | None = None
        if cfg.method in ("optuna", "all"):
            self.storage = make_storage(cfg.storage, cfg.study_name)
            check_resumable(cfg.study_name, self.storage, directions=cfg.directions,
                            config=cfg.study_config(self.loaded.weights_hash))
        self.objective = Objective(self.loaded, self.features, samples=cfg.samples, seed=cfg.seed,
                                   residual_weight=cfg.residual_weight, teacher=Teacher.parse(cfg.teacher), log=log)


def baselines(cfg: OptimizeConfig, loaded: LoadedModel, nfe: int) -> list[SearchCandidate]:
    """Uniform (trailing and linspace) and StepDrop-importance steps at the target NFE, with cfg's solver."""
    (s, (solver, nfe)) = loaded.schedule, spec_for_nfe(cfg.solver, nfe)
    rows = [("uniform-trailing", Uniform(nfe=nfe, schedule=s)), ("uniform-linspace", Uniform(nfe=nfe, spacing="linspace", schedule=s))]
    try:
        rows.append(("importance", Importance(nfe=nfe, schedule=s)))
    except UserError:
        pass  # importance cannot place this NFE in its bands
    return [SearchCandidate(name, PolicyDocument(p, solver), "baseline") for name, p in rows]


def run_dp(cfg: OptimizeConfig, ctx: Context, log: Callable[[str], None]) -> list[SearchCandidate]:
    out = []
    if cfg.method not in ("dp-gits", "dp-oss", "all"):
        return out
    log(f"DP: teacher trajectories on a {cfg.dp_grid}-node {cfg.dp_spacing} grid for {cfg.dp_samples} samples")
    traj = teacher_trajectory(ctx.loaded, grid_size=cfg.dp_grid, n=cfg.dp_samples, seed=cfg.seed, spacing=cfg.dp_spacing)
    solver, steps = spec_for_nfe(cfg.solver, cfg.nfe)
    if cfg.method in ("dp-gits", "all"):
        res = gits_schedule(traj, steps, cost=cfg.gits_cost, gamma=cfg.gits_gamma)
        log(f"DP-GITS ({res.nfe_spent} NFE): {res.steps.tolist()}")
        out.append(SearchCandidate("dp-gits", PolicyDocument(Explicit(steps=tuple(res.steps.tolist()), schedule=ctx.loaded.schedule),
                                                       solver), "dp-gits"))
    if cfg.method in ("dp-oss", "all"):
        res = oss_schedule(ctx.loaded, traj, steps)
        log(f"DP-OSS ({res.nfe_spent} NFE): {res.steps.tolist()}")
        out.append(SearchCandidate("dp-oss", PolicyDocument(Explicit(steps=tuple(res.steps.tolist()), schedule=ctx.loaded.schedule),
                                                      solver), "dp-oss"))
    return out


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, deterministic_objective=True)
    return optuna.samplers.NSGAIISampler(seed=seed)


def trial_function(cfg: OptimizeConfig, ctx: Context):
    """The Optuna objective: cheap rung first (residual on ``prune_samples``), full objective for survivors."""

    def run(trial: optuna.Trial):
        nfe = trial.suggest_int("nfe", *cfg.nfe_range) if cfg.multi_objective else cfg.nfe
        spec, steps = spec_for_nfe(cfg.solver, nfe)
        try:
            doc = suggest_document(trial, cfg.kind, steps, ctx.loaded.schedule, solver=spec,
                                   free_boundary=cfg.free_boundary, search_eta=cfg.search_eta)
        except UserError as exc:
            trial.set_user_attr("invalid", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        trial.set_user_attr("policy", doc.to_dict())
        if not cfg.multi_objective and cfg.prune_samples < cfg.samples:
            cheap = ctx.objective(doc, samples=cfg.prune_samples, with_fid=cfg.residual_weight == 0)
            trial.report(cheap.value, 0)
            if trial.should_prune():
                raise optuna.TrialPruned()
        scores = ctx.objective(doc)
        trial.set_user_attr("scores", scores.to_dict())
        if scores.failed:
            trial.set_user_attr("failed", scores.failed)
            raise optuna.TrialPruned(scores.failed)
        return (scores.value, scores.nfe) if cfg.multi_objective else scores.value

    return run


def _counted(study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def progress_callback(cfg: OptimizeConfig, log: Callable[[str], None]):
    """An Optuna callback that reports each finished trial and the best value so far."""

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if cfg.multi_objective:
            outcome = f"{trial.state.name.lower()}, Pareto set {len(study.best_trials)}"
        elif trial.state == optuna.trial.TrialState.COMPLETE:
            outcome = f"objective {trial.value:.4f}, best {study.best_value:.4f}"
        else:
            outcome = trial.state.name.lower()
        log(f"trial {trial.number} ({_counted(study)}/{cfg.trials} finished): {outcome}")

    return report


def open_search_study(cfg: OptimizeConfig, ctx: Context) -> tuple[optuna.Study, bool]:
    """cfg's study in the storage ctx opened; returns (study, created_here)."""
    return open_study(cfg.study_name, ctx.storage, sampler=make_sampler(cfg.sampler, cfg.seed),
                      pruner=optuna.pruners.MedianPruner(n_startup_trials=5), directions=cfg.directions,
                      config=cfg.study_config(ctx.loaded.weights_hash))


def worker(cfg: OptimizeConfig, ctx: Context | None = None, log: Callable[[str], None] = lambda m: None) -> int:
    """One search worker: load the shared study and run trials until the study holds ``trials`` finished
    (complete or pruned) trials or the timeout passes. Returns the trials this worker finished."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = ctx or Context(cfg, log)
    study, _ = open_search_study(cfg, ctx)
    before = _counted(study)
    objective = trial_function(cfg, ctx)
    deadline = time.monotonic() + cfg.timeout if cfg.timeout else math.inf
    while _counted(study) < cfg.trials and time.monotonic() < deadline:
        try:
            study.optimize(objective, n_trials=1, gc_after_trial=False, callbacks=[progress_callback(cfg, log)])
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
    """Enqueue baselines and DP results as the first trials (explicit kind only: they are step sets)."""
    if cfg.kind != "explicit" or cfg.multi_objective:
        return
    for cand in seeds:
        steps = cand.document.policy.timesteps().tolist()
        fits_fixed_ends = steps[0] == cand.document.policy.T - 1 and steps[-1] == 0
        if len(steps) != spec_for_nfe(cfg.solver, cfg.nfe)[1] or not (cfg.free_boundary or fits_fixed_ends):
            continue
        study.enqueue_trial(steps_to_params(steps, cfg.free_boundary), user_attrs={"source": cand.name},
                            skip_if_exists=True)


def optimize(cfg: OptimizeConfig, log: Callable[[str], None] = lambda m: None) -> OptimizeResult:
    tick = time.perf_counter()
    ctx = Context(cfg, log)
    loaded = ctx.loaded
    candidates = [] if cfg.multi_objective else baselines(cfg, loaded, cfg.nfe)
    candidates += run_dp(cfg, ctx, log) if not cfg.multi_objective else []
    scoring = time.perf_counter()
    for cand in candidates:
        cand.scores = ctx.objective(cand.document).to_dict()
        log(f"{cand.name}: objective {cand.scores['value']:.4f} (proxy-FID {cand.scores['fid']:.3f}, "
            f"residual {cand.scores['residual'] or 0:.5f})")
    per_score = (time.perf_counter() - scoring) / max(1, len(candidates))

    study_name, trials_done = None, 0
    if cfg.method in ("optuna", "all"):
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress comes from our own log
        study, created = open_search_study(cfg, ctx)
        if created:
            seed_study(cfg, study, candidates)
        study_name = cfg.study_name
        # The export scores every candidate on the held-out seeds: reserve that time out of the budget.
        reserve = len(HELD_OUT_SEEDS) * per_score * (len(candidates) + 1)
        search_time = search_seconds(cfg, time.perf_counter() - tick, reserve)
        log(f"study {study_name}: {_counted(study)} finished trials so far, target {cfg.trials}"
            + (f", at most {search_time:.0f} s" if search_time is not None else ""))
        if search_time is not None and search_time <= 0:
            log(f"the --budget of {cfg.budget:.0f} s is spent before the search; exporting the best seed "
                "(raise --budget, or re-run: the teacher is cached now)")
        elif cfg.n_jobs == 1:
            worker(replace(cfg, timeout=search_time), ctx, log)
        else:
            from joblib import Parallel, delayed

            Parallel(n_jobs=cfg.n_jobs, backend="loky")(delayed(_worker_process)(replace(cfg, timeout=search_time), i)
                                                        for i in range(cfg.n_jobs))
        trials_done = _counted(study)
        candidates += study_candidates(cfg, study)

    exported = export(cfg, ctx, candidates, study_name, trials_done, time.perf_counter() - tick, log)
    best = min((c for c in candidates if math.isfinite(c.scores.get("value", math.inf))),
               key=lambda c: c.scores["value"], default=None)
    return OptimizeResult(best, candidates, exported, study_name, trials_done, time.perf_counter() - tick)


def search_seconds(cfg: OptimizeConfig, elapsed: float, reserve: float) -> float | None:
    """Seconds the workers may search: ``--timeout``, capped by what is left of ``--budget`` after the
    work done so far and the export's reserve; None means no limit."""
    left = cfg.budget - elapsed - reserve if cfg.budget is not None else math.inf
    limit = min(left, cfg.timeout if cfg.timeout is not None else math.inf)
    return None if math.isinf(limit) else limit


def study_candidates(cfg: OptimizeConfig, study: optuna.Study) -> list[SearchCandidate]:
    if cfg.multi_objective:
        trials = study.best_trials
    else:
        complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
        trials = [min(complete, key=lambda t: t.value)] if complete else []
    out = []
    for t in trials:
        doc = PolicyDocument.from_dict(t.user_attrs["policy"], f"trial {t.number}")
        name = f"optuna-trial-{t.number}" + (f" (seeded: {t.user_attrs['source']})" if "source" in t.user_attrs else "")
        out.append(SearchCandidate(name, doc, "optuna", dict(t.user_attrs.get("scores", {}))))
    return out


def held_out_fid(ctx: Context, cand: SearchCandidate) -> tuple[float, float]:
    """Proxy-FID on noise the search never saw (seeds 1000–1002): mean, std."""
    values = []
    for seed in HELD_OUT_SEEDS:
        objective = Objective(ctx.loaded, ctx.features, samples=ctx.objective.samples, seed=seed, residual_weight=0)
        values.append(objective(cand.document).fid)
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def export(cfg: OptimizeConfig, ctx: Context, candidates: list[SearchCandidate], study_name: str | None, trials: int,
           wall: float, log: Callable[[str], None]) -> list[Path]:
    finite = [c for c in candidates if math.isfinite(c.scores.get("value", math.inf))]
    if not finite:
        raise UserError("no candidate produced a finite objective; nothing to export")
    log(f"proxy-FID of {len(finite)} candidates on held-out seeds {', '.join(map(str, HELD_OUT_SEEDS))}")
    for cand in finite:
        cand.held_out = held_out_fid(ctx, cand)
    chosen = [c for c in finite if c.source == "optuna"] if cfg.multi_objective else [min(finite, key=lambda c: c.scores["value"])]
    # Policy files get shared: they record the storage (and the command naming it) without its password.
    public = replace(cfg, storage=shown(cfg.storage), command=cfg.command.replace(cfg.storage, shown(cfg.storage))) \
        if cfg.storage else cfg
    paths = []
    for i, cand in enumerate(chosen):
        nfe = cand.document.policy.nfe
        default = f"policies/best-{cfg.kind}-{cfg.solver}-nfe{nfe}.json" if not cfg.multi_objective else \
            f"policies/pareto-{cfg.study_name}-{i}-nfe{nfe}.json"
        path = Path(cfg.out) if cfg.out and not cfg.multi_objective else Path(default)
        prov = provenance(public.command, ctx.loaded.weights_hash, objective={
            **cand.scores, "held_out_fid_mean": cand.held_out[0], "held_out_fid_std": cand.held_out[1],
            "held_out_seeds": list(HELD_OUT_SEEDS), "samples": cfg.samples, "seed": cfg.seed,
            "residual_weight": cfg.residual_weight, "teacher": cfg.teacher},
            search={"method": cfg.method, "winner": cand.name, "study": study_name, "storage": public.storage or "sqlite (studies/)",
                    "trials": trials, "sampler": cfg.sampler, "kind": cfg.kind, "wall_time_s": round(wall, 1),
                    "config": asdict(public) | {"nfe_range": _jsonable(cfg.nfe_range)}})
        paths.append(save_policy(path, PolicyDocument(cand.document.policy, cand.document.solver, prov)))
        log(f"exported {cand.name} → {path}")
    return paths
