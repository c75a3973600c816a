"""`stepdrop-search optimize`: find the best way to sample — solver and steps together — and prove it on held-out noise.

:func:`optimize` runs these phases (each logs what it does and how much of ``--budget`` is left):

1. **checks** every input — model, feature file, ``--storage`` and a resumed study's settings — before any work
   (:class:`~stepdrop_search.search.run.Run`);
2. **pool**: every solver (``--solver auto``) × the analytic schedules, DP-GITS and DP-OSS at the target NFE, each
   solver on the grid that spends exactly that NFE (:mod:`~stepdrop_search.search.sources`);
3. **rung 0**: every pool row scored by the coach on the search seed's first x_T (common random numbers: one x_T and
   one noise stream per sample for every candidate); this also measures the budget's cost model;
4. **rung 1** of the pool: each solver's best rung-0 row and the best overall on more samples
   (:mod:`~stepdrop_search.search.rungs`); its best solvers are the ones searched;
5. **search**: learned steps from each searched solver's best rung-1 schedule, then an Optuna study seeded with the
   pool, for what the budget leaves after the later phases; what they find is scored on rung 1;
6. **selection** on the selection seed's noise (:mod:`~stepdrop_search.search.selection`), then the **export** and, on
   request, every pool row (:mod:`~stepdrop_search.search.export`).

``--multi-objective`` runs :func:`optimize_pareto` instead: NSGA-II over (objective, measured NFE), the Pareto set
exported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from stepdrop_search.errors import UserError
from stepdrop_search.generation import generate
from stepdrop_search.objectives.metrics import fid_of_features, proxy_features
from stepdrop_search.report import plot_pareto_front
from stepdrop_search.search import sources
from stepdrop_search.search.candidates import Candidate, HeldOut
from stepdrop_search.search.export import export, save_pool
from stepdrop_search.search.run import Run
from stepdrop_search.search.rungs import RungSizes, best_solvers, choose_finalists, pool_promoted
from stepdrop_search.search.scoring import Scorer
from stepdrop_search.search.selection import held_out_check, pick_export
from stepdrop_search.search.settings import OptimizeSettings
from stepdrop_search.search.sources.optuna_study import finished, open_search_study, study_candidates, work
from stepdrop_search.seeds import selection_seed


@dataclass
class OptimizeResult:
    best: Candidate | None  # what was exported (single-objective)
    candidates: list[Candidate]  # the pool and the study's promoted trials
    finalists: list[Candidate]
    exported: list[Path]
    study_name: str | None
    trials: int
    wall_time_s: float
    settings: OptimizeSettings
    sizes: RungSizes
    search_solvers: tuple[str, ...] = ()
    fallback: bool = False  # True when nothing searched beat the best pool candidate on held-out noise
    leaderboard: list = field(default_factory=list)


def optimize(settings: OptimizeSettings, log: Callable[[str], None] = lambda m: None, *,
             scorer: Scorer | None = None) -> OptimizeResult:
    """Run the pipeline of the module docstring; ``scorer`` replaces the coach (tests pass a fake one)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress comes from our own log
    run = Run(settings, log, scorer=scorer)
    if settings.search.multi_objective:
        return optimize_pareto(run)
    run.pool = build_pool(run)
    if "optuna" in settings.search.methods:
        run.study, run.study_created = open_search_study(run)
    run.resolve_sizes(run.study)
    score_pool(run)
    search(run)
    finalists = choose_finalists(run.rung1, run.sizes.rung1, settings.selection.finalists)
    best, fallback = pick_export(finalists, held_out_check(run, finalists))
    if best is None:
        raise UserError("no candidate produced finite samples; nothing to export")
    if fallback:
        log(f"nothing searched beat the best pool candidate significantly on held-out noise: exporting {best.name}")
    exported = [export(run, best, fallback=fallback)]
    if settings.output.save_pool:
        save_pool(run)
    return OptimizeResult(best, run.pool + run.searched, finalists, exported, settings.study_name if run.study else None,
                          run.trials, run.budget.elapsed(), settings, run.sizes, run.search_solvers, fallback)


def build_pool(run: Run) -> list[Candidate]:
    """Every pool source's rows the run's tool can run."""
    return run.runnable([c for source in sources.chosen(sources.POOL, run.settings.search.methods)
                         for c in source.candidates(run, None)])


def score_pool(run: Run) -> None:
    """Rung 0 (which measures the cost model) and rung 1 of the pool; then the solvers the search works on."""
    started = time.perf_counter()
    run.score_rung(run.pool, run.sizes.rung0, "rung 0 (pool)")
    run.budget.measure(run.forwards(run.pool, run.sizes.rung0), time.perf_counter() - started)
    run.rung1 = pool_promoted(run.pool, run.sizes.rung0)
    run.score_rung(run.rung1, run.sizes.rung1, "rung 1 (pool: each solver's best and the best overall)")
    run.search_solvers = searched_solvers(run)


def searched_solvers(run: Run) -> tuple[str, ...]:
    """The pinned solver, or the best solvers of the pool's rung 1 (which depends only on what the study's settings
    fix, so a resumed study gets the same set; a study that recorded its set keeps it)."""
    if run.settings.search.solver != "auto":
        return (run.settings.search.solver,)
    recorded = run.study.user_attrs.get("search_solvers") if run.study is not None else None
    if recorded:
        return tuple(recorded)
    chosen = best_solvers(run.rung1, run.sizes.rung1)
    if run.study is not None:
        run.study.set_user_attr("search_solvers", list(chosen))
    return chosen


def selection_reserve(run: Run) -> float:
    """Seconds the phases after the search need: rung 1 of its promoted trials and the held-out check (metrics and the
    bootstrap cost a few seconds per finalist)."""
    settings, finalists = run.settings, run.settings.selection.finalists + 3
    forwards = settings.search.nfe * (run.sizes.rung1 * settings.search.promote + run.sizes.held_out * finalists)
    return run.budget.cost(forwards) + 5 * finalists


def search(run: Run) -> None:
    """The search's sources in turn, each given what the budget leaves after the selection's reserve (the learned
    steps half of it when a study follows); what they find is scored on rung 1."""
    chosen = sources.chosen(sources.SEARCH, run.settings.search.methods)
    for i, source in enumerate(chosen):
        seconds = run.budget.search_seconds(selection_reserve(run))
        if seconds is not None and i < len(chosen) - 1:
            seconds = max(0.0, seconds) / (len(chosen) - i)
        found = source.candidates(run, seconds)
        run.score_rung(found, run.sizes.rung1, f"rung 1 ({source.name})")
        run.rung1 += found
        if source.name == "optuna":
            run.searched += found
        else:
            run.pool += found


def optimize_pareto(run: Run) -> OptimizeResult:
    """NSGA-II over (objective, measured NFE); every Pareto trial exported with its held-out proxy-FID."""
    run.study, run.study_created = open_search_study(run)
    run.resolve_sizes(run.study)
    run.search_solvers = run.settings.pool_solvers()
    seconds = run.budget.search_seconds(0.0)
    if seconds is None or seconds > 0:
        work(run, run.study, seconds)
    run.trials = finished(run.study)
    pareto = study_candidates(run, run.study, set())
    seed = selection_seed(run.settings.search.seed)
    for cand in pareto:
        sampled = generate(run.loaded.model, run.loaded.schedule, cand.document.policy, cand.document.solver,
                           n=run.sizes.held_out, seed=seed, runtime=cand.document.runtime)
        fid = fid_of_features(proxy_features(sampled.x0, run.coach, device=run.device)[0], run.coach) \
            if sampled.x0.isfinite().all() else float("inf")
        cand.held_out = HeldOut(seed, run.sizes.held_out, fid)
    exported = [export(run, cand, index=i) for i, cand in enumerate(pareto)]
    complete = run.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    figure = plot_pareto_front([(t.values[1], t.values[0]) for t in complete],
                               [(c.nfe, c.value(), c.held_out.fid) for c in pareto],
                               Path(f"policies/pareto-{run.settings.study_name}.png"))
    run.log(f"Pareto front: {figure}")
    return OptimizeResult(None, pareto, pareto, exported + [figure], run.settings.study_name, run.trials,
                          run.budget.elapsed(), run.settings, run.sizes, run.search_solvers)
