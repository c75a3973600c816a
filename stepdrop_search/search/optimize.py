"""`stepdrop-search optimize`: find the best way to sample — solver and steps together — and prove it on held-out noise.

:func:`optimize` runs these phases (each logs what it does and how much of ``--budget`` is left):

1. **checks** every input — model, feature files, ``--storage`` and a resumed study's settings — before any work, and
   times the network once: the budget's cost model (:class:`~stepdrop_search.search.run.Run`). A ``--budget`` that
   cannot buy one search trial is said so in the first lines, with the smallest one that would, and the run selects
   among the pool only;
2. **pool**: every solver (``--solver auto``) × the analytic schedules, DP-GITS and DP-OSS, at the run's NFE and at
   cheaper ones (:mod:`~stepdrop_search.search.sources`);
3. **rung 0** and **rung 1** of the pool at the run's NFE, scored by the coach on the search seed (common random
   numbers); rung 1's best solvers are the ones searched (:mod:`~stepdrop_search.search.rungs`);
4. **search**: learned steps from each searched solver's best rung-1 schedule, then an Optuna study seeded with the
   pool, for what the budget leaves after the selection's share;
5. **selection**: every pool row and the study's best raced on the judge, on the selection seed's noise; NFE is a
   ceiling (:mod:`~stepdrop_search.search.selection`);
6. **export** with the leaderboard beside it and, on request, every pool row (:mod:`~stepdrop_search.search.export`).

``--multi-objective`` runs :func:`optimize_pareto` instead: NSGA-II over (objective, measured NFE), the Pareto set
exported.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from stepdrop_search.errors import UserError
from stepdrop_search.report import plot_pareto_front
from stepdrop_search.search import rungs, sources
from stepdrop_search.search.budget import Budget
from stepdrop_search.search.candidates import Candidate
from stepdrop_search.search.export import export, save_pool, write_leaderboard
from stepdrop_search.search.run import Run
from stepdrop_search.search.rungs import POOL_PROMOTED, RungSizes, best_solvers, pool_promoted
from stepdrop_search.search.scoring import Scorer
from stepdrop_search.search.selection import FIRST_ROUND, OVERHEAD, Leaderboard, Referee, race
from stepdrop_search.search.settings import OptimizeSettings
from stepdrop_search.search.sources import dp_oss
from stepdrop_search.search.sources.optuna_study import finished, open_search_study, recorded_study, study_candidates, work

#: Of what the budget leaves after the pool's rungs, the selection's share when a search runs too: the default NFE-10
#: run took 190 s to reach the selection and its race needed about 200 s more to reach 2048 samples.
SELECTION_SHARE = 0.5
#: Seconds kept for writing the export and the leaderboard.
EXPORT_SECONDS = 2.0


@dataclass
class OptimizeResult:
    best: Candidate | None  # what was exported (single-objective)
    candidates: list[Candidate]  # every pool row and the study's promoted trials
    leaderboard: Leaderboard | None  # the selection (single-objective)
    exported: list[Path]  # the policy files
    study_name: str | None
    trials: int
    wall_time_s: float
    settings: OptimizeSettings
    sizes: RungSizes
    search_solvers: tuple[str, ...] = ()
    reports: list[Path] = field(default_factory=list)  # the leaderboard (Markdown, JSON) or the Pareto front's plot


def optimize(settings: OptimizeSettings, log: Callable[[str], None] = lambda m: None, *,
             scorer: Scorer | None = None, referee: Referee | None = None, budget: Budget | None = None) -> OptimizeResult:
    """Run the pipeline of the module docstring; ``scorer``, ``referee`` and ``budget`` replace the coach's scoring,
    the selection's sampling and the wall clock (tests pass fake ones)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress comes from our own log
    run = Run(settings, log, scorer=scorer, referee=referee, budget=budget)
    if scorer is None:
        run.calibrate()
    if settings.search.multi_objective:
        return optimize_pareto(run)
    searching = affordable_search(run)
    log(plan(run, searching))
    rows = build_pool(run)
    run.pool = [c for c in rows if c.nfe_budget == settings.search.nfe]
    run.cheaper = [c for c in rows if c.nfe_budget != settings.search.nfe]
    if searching and "optuna" in settings.search.methods:
        run.study, run.study_created = open_search_study(run)
    # a pool-only run of a study that exists keeps the sizes it recorded (the selection's largest round among them)
    run.resolve_sizes(run.study or (recorded_study(run) if "optuna" in settings.search.methods else None))
    if searching:
        score_pool(run)
        search(run)
    board = select(run)
    exported = [export(run, board.export, board)]
    reports = write_leaderboard(run, board)
    if settings.output.save_pool:
        save_pool(run)
    return OptimizeResult(board.export, run.pool + run.cheaper + run.searched, board, exported,
                          settings.study_name if run.study else None, run.trials, run.budget.elapsed(), settings,
                          run.sizes, run.search_solvers, reports)


def affordable_search(run: Run) -> bool:
    """Whether the budget buys the pool's rungs and at least one search trial (or one epoch of learned steps, without
    a study) besides the pool and its selection; if not, say so with the smallest budget that would, and select among
    the pool only. The search gets what the rungs leave less the selection's reserve, max(share × left, its shortest
    race) + export, so the smallest budget leaves max(first / (1 − share), race + first) after the rungs."""
    search, budget = run.settings.search, run.budget
    if not sources.searching(run):
        return False
    if budget.seconds is None:
        return True
    race = budget.cost(selection_forwards(run))
    first = budget.cost(search.trial_samples * search.nfe if "optuna" in search.methods
                        else 4 * search.nfe * search.gradient.samples) + EXPORT_SECONDS
    smallest = budget.elapsed() + budget.cost(dp_forwards(run) + rung_forwards(run)) + \
        max(first / (1 - SELECTION_SHARE), race + first)
    if smallest <= budget.seconds:
        return True
    pool_only = budget.elapsed() + budget.cost(dp_forwards(run)) + race + EXPORT_SECONDS
    run.log(f"--budget {budget.seconds:g} s buys no search trial: the pool and its selection need ≈ {pool_only:.0f} s; "
            f"--budget {math.ceil(smallest)} or more would search. Selecting among the pool only.")
    return False


def plan(run: Run, searching: bool) -> str:
    """The run in one line, before it starts: what it builds, what it searches, what decides, and how long."""
    search, seconds = run.settings.search, run.settings.budget.seconds
    methods = [m for m in search.methods if m in ("dp-gits", "dp-oss")]
    analytic = len(sources.analytic.schedules_for(run.loaded.schedule))
    steps = [f"a pool of every solver × {analytic} analytic schedules{''.join(', ' + m.upper() for m in methods)} at NFE "
             f"{', '.join(map(str, rungs.pool_nfes(search.nfe)))}"]
    if searching:
        steps.append(f"a search ({', '.join(s.name for s in sources.searching(run))}) on the coach")
    steps.append("a race on the judge picks the export")
    ends = f"within --budget {seconds:g} s" if seconds is not None else f"no time limit (the study stops at {run.settings.budget.trials} trials)"
    return f"plan: {'; '.join(steps)}; {ends}"


def dp_forwards(run: Run) -> float:
    """Sample-forwards of the DP teacher and DP-OSS at the run's NFE, estimated before they run."""
    search, dp = run.settings.search, run.settings.search.dp
    if not set(search.methods) & {"dp-gits", "dp-oss"}:
        return 0.0
    return dp.samples * dp.grid + (dp_oss.forwards(run) if "dp-oss" in search.methods else 0.0)


def rung_forwards(run: Run) -> float:
    """Sample-forwards of the pool's rung 0 and rung 1 at the run's NFE."""
    sizes, nfe = run.planned_sizes(), run.settings.search.nfe
    per_solver = len(sources.analytic.schedules_for(run.loaded.schedule)) + 2  # the analytic schedules and 2 DPs
    rows = sum(1 for *_, level in run.grids() if level == nfe) * per_solver
    return rows * nfe * sizes.rung0 + POOL_PROMOTED * 2 * nfe * sizes.rung1


def selection_forwards(run: Run) -> float:
    """Sample-forwards of the selection's shortest race: two rounds of the smallest size for every pool row, its
    per-finalist overhead counted as forwards too."""
    per_grid = len(sources.analytic.schedules_for(run.loaded.schedule)) + 1  # about: the analytic schedules and DP-GITS
    rows = len(run.grids()) * per_grid
    per_row = sum(nfe for _, _, nfe in run.grids()) * per_grid / max(1, rows)
    overhead = OVERHEAD / max(run.budget.per_forward or 1.0, 1e-9)
    return rows * 2 * (FIRST_ROUND[0] * per_row + overhead)


def select(run: Run) -> Leaderboard:
    """Race every pool row (at every pool NFE) and the study's best on the judge, with what the budget leaves; a
    budget too small for them all races the head of :func:`prior_order`."""
    finalists = prior_order(run, run.pool + run.cheaper + run.searched)
    seconds = run.budget.left() - EXPORT_SECONDS if run.budget.seconds is not None else None
    try:
        board = race(run.referee, finalists, seed=run.selection_seed, largest=run.sizes.held_out, seconds=seconds,
                     cost=run.budget.cost, left=lambda: run.budget.left() - EXPORT_SECONDS, log=run.log,
                     clock=run.budget.clock)
    except ValueError:
        raise UserError("no candidate produced finite samples; nothing to export") from None
    run.log(board.verdict())
    return board


def prior_order(run: Run, finalists: list[Candidate]) -> list[Candidate]:
    """The finalists most promising first, by what is known before the race (never the judge), so that a field cut
    short still has every solver at every NFE: each (solver, NFE) group's first row, then each one's second, …; within
    a group the learned steps first (made from the group's best rung-1 row, and better than it on the coach's
    validation), then the rows the coach scored at rung 0 by that score, then the others in pool order (uniform,
    log-SNR, Karras, quadratic, DP-GITS, DP-OSS); the run's NFE before cheaper ones at each turn. A solver's study
    trials are a group of their own: they were picked as the best of many on those very samples, so their scores
    flatter them against the pool's (the regeneration's NFE-25 run, ranking them together, left out every iPNDM pool
    row at 25 NFE behind six iPNDM trials)."""
    nfe = run.settings.search.nfe
    groups: dict[tuple[str, int, str], list[Candidate]] = {}
    for c in finalists:
        groups.setdefault((c.document.solver.name, c.nfe_budget or nfe, c.source), []).append(c)
    turns = {id(c): (turn, -group_nfe) for (_, group_nfe, _), rows in groups.items()
             for turn, c in enumerate(sorted(rows, key=lambda c: (c.made_by.get("method") != "gradient", c.value(run.sizes.rung0))))}
    return sorted(finalists, key=lambda c: turns[id(c)])


def build_pool(run: Run) -> list[Candidate]:
    """Every pool source's rows the run's tool can run, each sampler once (a cheaper NFE can give a solver the grid
    it has at the run's NFE: Heun spends 2n − 1)."""
    rows = run.runnable([c for source in sources.chosen(sources.POOL, run.settings.search.methods)
                         for c in source.candidates(run, None)])
    return list({c.key: c for c in reversed(rows)}.values())[::-1]


def score_pool(run: Run) -> None:
    """Rung 0 (which measures the cost model) and rung 1 of the pool; then the solvers the search works on."""
    started = run.budget.elapsed()
    run.score_rung(run.pool, run.sizes.rung0, "rung 0 (pool)")
    run.budget.measure(run.forwards(run.pool, run.sizes.rung0), run.budget.elapsed() - started)
    run.rung1 = pool_promoted(run.pool, run.sizes.rung0)
    run.score_rung(run.rung1, run.sizes.rung1, "rung 1 (pool: each solver's best and the best overall)")
    run.search_solvers = searched_solvers(run)


def searched_solvers(run: Run) -> tuple[str, ...]:
    """The pinned solver, or the best solvers of the pool's rung 1 (which depends only on what the study's settings
    fix, so a resumed study gets the same set; a study that recorded its set keeps it)."""
    if (pinned := run.settings.search.pinned_solver) is not None:
        return (pinned,)
    recorded = run.study.user_attrs.get("search_solvers") if run.study is not None else None
    if recorded:
        return tuple(recorded)
    chosen = best_solvers(run.rung1, run.sizes.rung1)
    if run.study is not None:
        run.study.set_user_attr("search_solvers", list(chosen))
    return chosen


def selection_reserve(run: Run) -> float:
    """Seconds kept from the search for the selection and the export: :data:`SELECTION_SHARE` of what is left after
    the pool's rungs, and never less than the shortest race."""
    share = SELECTION_SHARE * max(0.0, run.budget.left()) if run.budget.seconds is not None else 0.0
    return max(share, run.budget.cost(selection_forwards(run))) + EXPORT_SECONDS


def search(run: Run) -> None:
    """The search's sources in turn, each given what the budget leaves after the selection's reserve (the learned
    steps half of it when a study follows). Learned steps join the pool; the study's best are finalists."""
    chosen = sources.searching(run)
    reserve = selection_reserve(run)
    for i, source in enumerate(chosen):
        seconds = run.budget.search_seconds(reserve)
        if seconds is not None and i < len(chosen) - 1:
            seconds = max(0.0, seconds) / (len(chosen) - i)
        found = source.candidates(run, seconds)
        if source.name == "optuna":
            run.searched += found
        else:
            run.pool += found


def optimize_pareto(run: Run) -> OptimizeResult:
    """NSGA-II over (objective, measured NFE), and class accuracy on a class-conditional model (the fidelity side of
    guidance: its front is FID against accuracy against NFE); every Pareto trial exported with its judge FID on held-out
    noise. The study gets what the budget leaves after :data:`SELECTION_SHARE` of it, kept for that check."""
    run.study, run.study_created = open_search_study(run)
    run.resolve_sizes(run.study)
    run.search_solvers = run.settings.pool_solvers()
    reserve = SELECTION_SHARE * run.budget.left() + EXPORT_SECONDS if run.budget.seconds is not None else 0.0
    seconds = run.budget.search_seconds(reserve)
    if seconds is None or seconds > 0:
        work(run, run.study, seconds)
    run.trials = finished(run.study)
    pareto = study_candidates(run, run.study, set())
    samples = pareto_check_samples(run, pareto)
    run.log(f"the Pareto set's {len(pareto)} trials on {samples} samples of the selection seed "
            f"({run.budget.describe()})")
    for cand in pareto:
        run.held_out(cand, samples)
    exported = [export(run, cand, index=i) for i, cand in enumerate(pareto)]
    complete = run.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    accuracy = None
    if len(run.directions) == 3:  # a conditional model's front: objective, NFE and class accuracy
        accuracy = ([(t.values[0], t.values[2], t.values[1]) for t in complete],
                    [(t.values[0], t.values[2], t.values[1]) for t in run.study.best_trials])
    figure = plot_pareto_front([(t.values[1], t.values[0]) for t in complete],
                               [(c.nfe, c.value(), c.held_out.judge_fid) for c in pareto],
                               Path(f"policies/pareto-{run.settings.study_name}.png"), accuracy)
    run.log(f"Pareto front: {figure}")
    return OptimizeResult(None, pareto, None, exported, run.settings.study_name, run.trials,
                          run.budget.elapsed(), run.settings, run.sizes, run.search_solvers, [figure])


def pareto_check_samples(run: Run, pareto: list[Candidate]) -> int:
    """Samples each Pareto trial is checked on: the selection's largest round, halved (to no less than the race's
    first-round floor) until checking them all fits in what the budget leaves."""
    n, nfe = run.sizes.held_out, sum(c.nfe for c in pareto if math.isfinite(c.nfe))
    while n > FIRST_ROUND[0] and run.budget.cost(nfe * n) > run.budget.left() - EXPORT_SECONDS:
        n //= 2
    return n
