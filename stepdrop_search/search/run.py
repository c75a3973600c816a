"""One ``optimize`` run's shared state: the loaded model and coach, the study storage, the budget, the scorer, and
what the run has decided so far (its rung sizes, the solvers it searches).

Building a :class:`Run` checks every input in this order — the model, the feature file, ``--storage`` and a resumed
study's settings — before any expensive work: the scorer's teacher (if any) is computed only once the rung sizes are
known, and the DP and scoring come later still.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from stepdrop_search.checkpoint import LoadedModel
from stepdrop_search.devices import resolve_device
from stepdrop_search.diffusion.runtimes import Runtime
from stepdrop_search.diffusion.solvers import SolverSpec, spec_for_nfe
from stepdrop_search.errors import UserError
from stepdrop_search.loading import load_model
from stepdrop_search.objectives.features import load_features_for_model
from stepdrop_search.objectives.residual import Teacher
from stepdrop_search.policies import PolicyDocument
from stepdrop_search.policies.transfer import export_problems
from stepdrop_search.progress import advance, phase
from stepdrop_search.search.budget import Budget
from stepdrop_search.search.candidates import Candidate
from stepdrop_search.search.dp import TeacherTrajectory, teacher_trajectory
from stepdrop_search.search.rungs import RungSizes, rung_sizes, sizes_as_asked
from stepdrop_search.search.scoring import CoachScorer, Scorer
from stepdrop_search.search.settings import OptimizeSettings
from stepdrop_search.search.study import check_resumable, make_storage
from stepdrop_search.seeds import search_seed


class Run:
    """See the module docstring. ``scorer`` replaces the coach scorer (tests pass a fake one)."""

    def __init__(self, settings: OptimizeSettings, log: Callable[[str], None] = lambda m: None, *,
                 scorer: Scorer | None = None) -> None:
        self.settings, self.log = settings, log
        self.budget = Budget(settings.budget.seconds, settings.budget.timeout)
        self.device = resolve_device(settings.model.device)
        self.loaded: LoadedModel = load_model(settings.model.model, device=self.device)
        self.coach = load_features_for_model(settings.model.features, self.loaded.config, self.loaded.dataset,
                                             device=self.device)
        self.storage = None
        if "optuna" in settings.search.methods:
            self.storage = make_storage(settings.search.storage, settings.study_name)
            check_resumable(settings.study_name, self.storage, directions=settings.directions,
                            config=settings.study_config(self.loaded.weights_hash))
        self.scorer = scorer
        self._trajectory: TeacherTrajectory | None = None
        # what the run decides as it goes
        self.sizes: RungSizes | None = None
        self.study, self.study_created, self.trials = None, False, 0
        self.search_solvers: tuple[str, ...] = ()
        self.pool: list[Candidate] = []  # every pool row (analytic, DP, learned)
        self.rung1: list[Candidate] = []  # what rung 1 scored: the pool's promoted rows and every searched one
        self.searched: list[Candidate] = []  # the study's promoted trials

    @property
    def runtime(self) -> Runtime:
        return self.settings.model.run_runtime

    def document(self, policy, spec: SolverSpec, provenance: dict | None = None) -> PolicyDocument:
        """A candidate of this run: ``policy`` with ``spec`` under the run's runtime."""
        return PolicyDocument(policy, spec, provenance or {}, self.runtime)

    def resolve_sizes(self, study=None) -> RungSizes:
        """The rung sizes, fixed: as given, as a resumed study recorded them, or by :func:`rung_sizes` (recorded, so
        every worker and every resume scores trials on the same samples even if the rule changes); then the scorer."""
        search, selection = self.settings.search, self.settings.selection
        recorded = study.user_attrs.get("rung_sizes") if study is not None else None
        if search.samples is None and recorded:
            self.sizes = RungSizes(*recorded)
        else:
            self.sizes = sizes_as_asked(rung_sizes(search.largest_nfe), search.samples, search.promote_samples,
                                        selection.held_out_samples)
            if study is not None:
                study.set_user_attr("rung_sizes", [self.sizes.rung0, self.sizes.rung1, self.sizes.held_out])
        self.log(f"rungs: {self.sizes.rung0} samples for rung 0 and the search, {self.sizes.rung1} for rung 1, "
                 f"{self.sizes.held_out} for the held-out check")
        if self.scorer is None:
            largest = max(search.trial_samples, self.sizes.rung0 if search.multi_objective else self.sizes.rung1)
            self.scorer = CoachScorer(self.loaded, self.coach, largest=largest, seed=search_seed(search.seed),
                                      residual_weight=search.residual_weight, teacher=Teacher.parse(search.teacher),
                                      runtime=self.runtime, log=self.log)
        return self.sizes

    def grids(self) -> list[tuple[SolverSpec, int]]:
        """(solver spec, grid size) of every pool solver, on the largest grid that runs within the NFE under the
        run's runtime."""
        out = []
        for name in self.settings.pool_solvers():
            try:
                out.append(spec_for_nfe(name, self.settings.search.nfe, runtime=self.runtime))
            except UserError:
                continue
        return out

    def trajectory(self) -> TeacherTrajectory:
        """The DP methods' teacher trajectories on the search seed (computed once, shared by DP-GITS and DP-OSS)."""
        if self._trajectory is None:
            dp = self.settings.search.dp
            phase(self.log, f"DP: {dp.teacher} teacher trajectories on a {dp.grid}-node {dp.spacing} grid for {dp.samples} samples")
            self._trajectory = teacher_trajectory(self.loaded, grid_size=dp.grid, n=dp.samples,
                                                  seed=search_seed(self.settings.search.seed), spacing=dp.spacing,
                                                  solver=dp.teacher, runtime=self.runtime)
        return self._trajectory

    def runnable(self, candidates: list[Candidate]) -> list[Candidate]:
        """The candidates the run's tool can run as measured: under a tool's runtime (a preset with its own solver set)
        one whose steps that tool cannot take (diffusers' integer-only schedulers and real-valued DP or learned steps)
        is dropped, so the export always runs there."""
        if self.runtime.solvers is None:
            return candidates
        kept = []
        for candidate in candidates:
            problems = export_problems(candidate.document, self.runtime)
            if problems:
                self.log(f"{candidate.name}: {self.runtime.name} cannot run it as measured ({'; '.join(problems)})")
            else:
                kept.append(candidate)
        return kept

    def score_rung(self, candidates: list[Candidate], samples: int, label: str) -> None:
        """Score ``candidates`` on the first ``samples`` x_T of the search seed; every one gets the same noise."""
        phase(self.log, f"{label}: {len(candidates)} candidates on {samples} samples ({self.budget.describe()})",
              len(candidates))
        for i, cand in enumerate(candidates, 1):
            scores = self.scorer.score(cand.document, samples)
            cand.rungs[samples] = scores
            parts = [f"proxy-FID {scores.fid:.3f}"] if scores.fid is not None else []
            parts += [f"residual {scores.residual:.5f}"] if scores.residual is not None else []
            advance(self.log, f"  [{i}/{len(candidates)}] {cand.name}: objective {scores.value:.4f}"
                    + (f" ({', '.join(parts)})" if parts else ""))

    def forwards(self, candidates: list[Candidate], samples: int) -> float:
        """Sample-forwards scoring ``candidates`` on ``samples`` x_T takes (each at its measured or counted NFE)."""
        return sum(c.nfe for c in candidates if math.isfinite(c.nfe)) * samples
