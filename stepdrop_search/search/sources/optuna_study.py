"""An Optuna study over the searched solvers (a categorical) and free step sets — or another policy kind's parameters
(``--kind``) — seeded with the pool's schedules, each trial scored on ``trial_samples`` x_T of the search seed (many
cheap trials), for what the budget leaves. Its ``promote`` best new trials are its candidates.

Studies live in any Optuna storage: several workers, local processes (``--n-jobs``) or other machines, share one, and a
killed run is resumed from it."""

from __future__ import annotations

import math
import sys
import time
import warnings
from typing import TYPE_CHECKING

import optuna
import torch

from stepdrop_search.diffusion.solvers import solver_class, spec_for_nfe
from stepdrop_search.errors import UserError
from stepdrop_search.objectives.objective import Scores
from stepdrop_search.policies import PolicyDocument, policy_class
from stepdrop_search.progress import advance, phase
from stepdrop_search.search.candidates import Candidate, candidate_key, ranked
from stepdrop_search.search.guided import suggest_guidance, suggest_guided_steps
from stepdrop_search.search.space import steps_to_params, suggest_document
from stepdrop_search.search.study import open_study

if TYPE_CHECKING:
    from stepdrop_search.search.run import Run
    from stepdrop_search.search.rungs import RungSizes
    from stepdrop_search.search.settings import OptimizeSettings

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


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


def open_search_study(run: Run) -> tuple[optuna.Study, bool]:
    """The run's study in the storage it opened; returns (study, created_here)."""
    settings = run.settings
    return open_study(settings.study_name, run.storage, sampler=make_sampler(settings.search.sampler, settings.search.seed),
                      pruner=optuna.pruners.MedianPruner(n_startup_trials=5), directions=run.directions,
                      config=settings.study_config(run.loaded.weights_hash))


def recorded_study(run: Run) -> optuna.Study | None:
    """The run's study when the storage already holds it (loaded, never created), else None."""
    try:
        return optuna.load_study(study_name=run.settings.study_name, storage=run.storage)
    except KeyError:
        return None


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def trial_document(trial: optuna.Trial, run: Run, nfe: int) -> PolicyDocument:
    """The policy a trial proposes: a solver (categorical when the study searches several), then its schedule.
    Step-set parameters are named per grid size, since solvers that spend one NFE differently need other counts."""
    search = run.settings.search
    solvers = run.search_solvers
    name = trial.suggest_categorical("solver", list(solvers)) if len(solvers) > 1 else solvers[0]
    # a conditional model's trial first buys guided steps (single-evaluation solvers; see search.guided)
    guided = suggest_guided_steps(trial, nfe) if guides(run, name) else 0
    spec, steps = spec_for_nfe(name, nfe - guided, runtime=run.runtime)
    prefix = grid_prefix(run, steps)
    with warnings.catch_warnings():
        # a seeded trial is a pool row, which may lie outside the space (learned steps can end above T/5); Optuna runs
        # its fixed values exactly and warns once per parameter, which says nothing the seed's user attributes do not
        warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range", category=UserWarning)
        doc = suggest_document(trial, search.kind, steps, run.loaded.schedule, solver=spec,
                               free_boundary=search.free_boundary, search_eta=search.search_eta, prefix=prefix)
    guidance = suggest_guidance(trial, doc.policy, guided) if guided else None
    return run.document(doc.policy, doc.solver, guidance=guidance)


def grid_prefix(run: Run, steps: int) -> str:
    """The step-set parameters' name prefix: per grid size when a study's trials differ in it (several solvers, or
    guided steps that buy fewer steps), else none."""
    return f"k{steps}_" if len(run.search_solvers) > 1 or run.guided else ""


def guides(run: Run, solver: str) -> bool:
    """Whether a trial of ``solver`` searches guidance: a conditional model, a static kind, one evaluation per step."""
    return run.guided and policy_class(run.settings.search.kind).static and not solver_class(solver).variable_cost


def trial_function(run: Run):
    """The Optuna objective: the trial's objective on ``trial_samples`` (a cheaper first look the pruner can stop)."""
    search = run.settings.search

    def objective(trial: optuna.Trial):
        nfe = trial.suggest_int("nfe", *search.nfe_range) if search.multi_objective else search.nfe
        try:
            doc = trial_document(trial, run, nfe)
        except UserError as exc:
            trial.set_user_attr("invalid", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        trial.set_user_attr("policy", doc.to_dict())
        if not search.multi_objective and search.prune_samples < search.trial_samples \
                and not run.scorer.seen(doc, search.trial_samples):
            trial.report(run.scorer.cheap(doc, search.prune_samples).value, 0)
            if trial.should_prune():
                raise optuna.TrialPruned()
        scores = run.scorer.score(doc, search.trial_samples)
        trial.set_user_attr("scores", scores.to_dict())
        if scores.failed:
            trial.set_user_attr("failed", scores.failed)
            raise optuna.TrialPruned(scores.failed)
        if not search.multi_objective:
            return scores.value
        return (scores.value, scores.nfe, scores.accuracy) if len(run.directions) == 3 else (scores.value, scores.nfe)

    return objective


def progress_callback(run: Run):
    """An Optuna callback that reports each finished trial, the best value so far and the time left."""
    pruned = 0

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal pruned
        if trial.state != optuna.trial.TrialState.COMPLETE:
            pruned += 1  # most trials end at the cheap rung: counted here, not logged one by one
            return
        outcome = f"Pareto set {len(study.best_trials)}" if run.settings.search.multi_objective else \
            f"objective {trial.value:.4f}, best {study.best_value:.4f}"
        solver = trial.params.get("solver", "")
        advance(run.log, f"trial {trial.number}{' ' + solver if solver else ''}: {outcome}; {pruned} pruned so far "
                f"({run.budget.describe()})")

    return report


def work(run: Run, study: optuna.Study, timeout: float | None, seeded: tuple[tuple[dict, dict], ...] = ()) -> int:
    """Run trials until the study holds ``trials`` finished (complete or pruned) trials or ``timeout`` seconds of the
    run's clock pass, the ``seeded`` parameters first (each enqueued just before it runs, so a budget that ends leaves
    none waiting). Returns the trials this worker finished."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    before, queue = finished(study), list(seeded)
    objective, callbacks = trial_function(run), [progress_callback(run)]
    deadline = run.budget.elapsed() + timeout if timeout is not None else math.inf
    while finished(study) < run.settings.budget.trials and run.budget.elapsed() < deadline:
        if queue:
            params, attrs = queue.pop(0)
            study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)
        try:
            study.optimize(objective, n_trials=1, gc_after_trial=False, callbacks=callbacks)
        except ValueError as exc:
            # SQLite can hand one enqueued (seed) trial to two workers at once; the second worker's
            # result is refused ("Cannot tell a COMPLETE trial") and discarded: the study keeps one.
            if "Cannot tell" not in str(exc):
                raise
    return finished(study) - before


def worker_process(settings: OptimizeSettings, sizes: RungSizes, solvers: tuple[str, ...], deadline: float | None,
                   index: int, seeded: tuple[tuple[dict, dict], ...] = ()) -> int:
    """One of ``--n-jobs`` local workers: its own model and scorer on one core, the shared study (worker 0 runs the
    seeds, each enqueued just before it runs), until ``deadline`` (``time.time()``; the seconds a worker spends
    starting — imports, loading the model — are the search's, not extra)."""
    from stepdrop_search.search.run import Run

    torch.set_num_threads(1)  # n_jobs processes share the cores
    run = Run(settings, log=lambda m: print(f"[worker {index}] {m}", file=sys.stderr, flush=True))
    study, _ = open_search_study(run)
    run.resolve_sizes(study)
    run.search_solvers = solvers
    return work(run, study, None if deadline is None else max(0.0, deadline - time.time()), seeded)


def seeds(run: Run, pool: list[Candidate]) -> list[tuple[dict, dict]]:
    """The pool's step sets of the searched solvers as trial parameters (explicit kind only), best rung-0 row first,
    each with the user attributes naming its pool row: the study's first trials, no more than ``--trials`` leaves
    room for."""
    search = run.settings.search
    if search.kind != "explicit" or search.multi_objective:
        return []
    solvers, out = run.search_solvers, []
    for cand in ranked(pool, run.sizes.rung0):
        name = cand.document.solver.name
        if name not in solvers or not cand.document.policy.static:
            continue
        steps = cand.document.policy.timesteps().tolist()
        fits_fixed_ends = steps[0] == cand.document.policy.T - 1 and steps[-1] == 0
        if len(steps) != spec_for_nfe(name, search.nfe, runtime=run.runtime)[1] or not (search.free_boundary or fits_fixed_ends):
            continue
        if cand.document.guidance is not None:
            continue  # the study's guided trials place their interval themselves
        params = steps_to_params(steps, search.free_boundary, grid_prefix(run, len(steps)))
        params |= {"guided_steps": 0} if guides(run, name) else {}
        out.append((params | ({"solver": name} if len(solvers) > 1 else {}), {"source": cand.name}))
    return out[:max(0, run.settings.budget.trials - finished(run.study))]


def study_candidates(run: Run, study: optuna.Study, known: set[tuple]) -> list[Candidate]:
    """The study's Pareto set, or its ``promote`` best complete trials that are not already candidates."""
    search = run.settings.search
    if search.multi_objective:
        trials = study.best_trials
    else:
        trials = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.value)
    out = []
    for t in trials:
        doc = PolicyDocument.from_dict(t.user_attrs["policy"], f"trial {t.number}")
        if candidate_key(doc) in known:
            continue  # a seeded trial that reproduced its pool candidate: that candidate stands for it
        known.add(candidate_key(doc))
        scores = Scores.from_dict(t.user_attrs.get("scores", {}) | {"value": t.values[0]})
        out.append(Candidate(f"optuna-trial-{t.number} ({doc.solver.name})", doc, "optuna",
                             rungs={search.trial_samples: scores}))
        if not search.multi_objective and len(out) >= search.promote:
            break
    return out


class OptunaStudy:
    name = "optuna"

    def applies(self, run: Run) -> bool:
        return True

    def candidates(self, run: Run, seconds: float | None) -> list[Candidate]:
        """Seed the study with the pool (when this run created it), search for ``seconds``, return its best new trials."""
        if not run.search_solvers:
            run.log("search: no solver scored a finite rung-1 row; nothing to search")
            return []
        study = run.study
        first = seeds(run, run.pool) if run.study_created else []
        phase(run.log, f"search: study {run.settings.study_name} over {', '.join(run.search_solvers)}, {finished(study)} "
              "finished trials so far" + (f", {seconds:.0f} s for it (the rest of the budget is kept for the selection)"
                                          if seconds is not None and seconds > 0 else ""))
        if seconds is not None and seconds <= 0:
            run.log(f"the --budget of {run.settings.budget.seconds:.0f} s is spent before the search; going on with the "
                    "pool (raise --budget, or re-run: the teacher is cached now)")
        elif run.settings.budget.n_jobs == 1:
            work(run, study, seconds, tuple(first))
        else:
            from joblib import Parallel, delayed

            deadline = None if seconds is None else time.time() + seconds
            Parallel(n_jobs=run.settings.budget.n_jobs, backend="loky")(
                delayed(worker_process)(run.settings, run.sizes, run.search_solvers, deadline, i, first if i == 0 else ())
                for i in range(run.settings.budget.n_jobs))
        run.trials = finished(study)
        return study_candidates(run, study, {c.key for c in run.pool})
