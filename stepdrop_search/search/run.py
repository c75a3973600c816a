"""One ``optimize`` run's shared state: the loaded model and coach, the study storage, the budget, the scorer, and
what the run has decided so far (its rung sizes, the solvers it searches).

Building a :class:`Run` checks every input in this order — the output paths, the model, the feature file,
``--storage`` and a resumed study's settings — before any expensive work: the scorer's teacher (if any) is computed only once the rung sizes are
known, and the DP and scoring come later still.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from stepdrop_search.checkpoint import LoadedModel
from stepdrop_search.devices import resolve_device
from stepdrop_search.diffusion.guidance import Guidance, conditional_classes
from stepdrop_search.diffusion.runtimes import Runtime
from stepdrop_search.diffusion.solvers import SolverSpec, spec_for_nfe
from stepdrop_search.errors import UserError
from stepdrop_search.evaluation import seconds_per_sample_forward
from stepdrop_search.loading import load_model
from stepdrop_search.objectives.features import load_features_for_model, load_judge_for_model
from stepdrop_search.objectives.metrics import fid_of_features
from stepdrop_search.objectives.residual import Teacher
from stepdrop_search.policies import PolicyDocument
from stepdrop_search.policies.transfer import export_problems
from stepdrop_search.progress import advance, phase
from stepdrop_search.search.budget import Budget
from stepdrop_search.search.candidates import Candidate, HeldOut
from stepdrop_search.search.dp import TeacherTrajectory, teacher_trajectory
from stepdrop_search.search.rungs import RungSizes, pool_nfes, rung_sizes, sizes_as_asked
from stepdrop_search.search.scoring import CoachScorer, Scorer
from stepdrop_search.search.selection import Referee, SamplingReferee
from stepdrop_search.search.settings import OptimizeSettings
from stepdrop_search.search.study import check_resumable, make_storage
from stepdrop_search.seeds import search_seed, selection_seed


class Run:
    """See the module docstring. ``scorer`` and ``referee`` replace the coach's scoring and the selection's sampling
    (tests pass fake ones), ``budget`` the wall clock (a fake clock's). The cost model is measured by
    :meth:`calibrate`, which ``optimize`` calls with the real scorer (a search worker does not need it)."""

    def __init__(self, settings: OptimizeSettings, log: Callable[[str], None] = lambda m: None, *,
                 scorer: Scorer | None = None, referee: Referee | None = None, budget: Budget | None = None) -> None:
        self.settings, self.log = settings, log
        settings.output.check_writable()
        self.budget = budget or Budget(settings.budget.seconds, settings.budget.timeout)
        self.device = resolve_device(settings.model.device)
        self.loaded: LoadedModel = load_model(settings.model.model, device=self.device)
        settings.model.run_runtime.check_family(self.loaded.schedule.is_flow)  # before any sampling, study or teacher
        if settings.search.kind == "shift" and not self.loaded.schedule.is_flow:
            raise UserError("--kind shift searches a rectified flow's time shift, and this is an ε model; search "
                            "explicit steps (the default), uniform or karras")
        self.coach = load_features_for_model(settings.model.features, self.loaded.config, self.loaded.dataset,
                                             device=self.device)
        self.storage = None
        if "optuna" in settings.search.methods:
            self.storage = make_storage(settings.search.storage, settings.study_name)
            check_resumable(settings.study_name, self.storage, directions=self.directions,
                            config=settings.study_config(self.loaded.weights_hash))
        self.judge = load_judge_for_model(settings.model.judge, self.loaded.config, self.loaded.dataset, device=self.device)
        if self.judge is None:
            log("no judge network for this model's images: the selection is judged by the coach, the network the search "
                "optimises (train one: `stepdrop-search features train --family residual --images half-b`, then --judge)")
        self.selection_seed = selection_seed(settings.search.seed)
        self.referee = referee or SamplingReferee(self.loaded, self.judge or self.coach, self.coach, self.selection_seed,
                                                  self.device)
        self.scorer = scorer
        self._trajectory: TeacherTrajectory | None = None
        # what the run decides as it goes
        self.sizes: RungSizes | None = None
        self.study, self.study_created, self.trials = None, False, 0
        self.search_solvers: tuple[str, ...] = ()
        self.pool: list[Candidate] = []  # every pool row at the run's NFE (analytic, DP, learned)
        self.cheaper: list[Candidate] = []  # the pool's rows at the cheaper NFEs
        self.rung1: list[Candidate] = []  # the pool's rows rung 1 scored (the searched solvers' starts)
        self.searched: list[Candidate] = []  # the study's promoted trials

    @property
    def runtime(self) -> Runtime:
        return self.settings.model.run_runtime

    @property
    def directions(self) -> list[str]:
        """The study's: the objective, and for a Pareto search the NFE, and a conditional model's class accuracy too."""
        return self.settings.directions + (["maximize"] if self.settings.search.multi_objective and self.guided else [])

    @property
    def guided(self) -> bool:
        """A class-conditional model: the search spends evaluations on classifier-free guidance too (:mod:`.guided`)."""
        return conditional_classes(self.loaded.model) > 0

    def document(self, policy, spec: SolverSpec, provenance: dict | None = None,
                 guidance: Guidance | None = None) -> PolicyDocument:
        """A candidate of this run: ``policy`` with ``spec`` (and ``guidance``) under the run's runtime."""
        return PolicyDocument(policy, spec, provenance or {}, self.runtime, guidance)

    def calibrate(self) -> None:
        """The budget's cost model: the seconds one sample-forward takes here, metric included."""
        self.budget.measure(1.0, seconds_per_sample_forward(self.loaded, (self.coach, self.referee.judge), self.runtime,
                                                            self.device))

    def planned_sizes(self) -> RungSizes:
        """The rung sizes the settings ask for (before a resumed study's recorded ones are known)."""
        search = self.settings.search
        return sizes_as_asked(rung_sizes(search.largest_nfe), search.samples, search.promote_samples,
                              self.settings.selection.held_out_samples)

    def held_out(self, cand: Candidate, samples: int) -> None:
        """``cand`` on the selection seed's first ``samples``, on both networks (a Pareto set's check)."""
        got = self.referee.features(cand.document, 0, samples)
        fids = (fid_of_features(got[0], self.referee.judge), fid_of_features(got[1], self.referee.coach), got[2]) if got else \
            (math.inf, math.inf, math.nan)
        cand.held_out = HeldOut(self.selection_seed, samples, *fids, status="" if got else "failed")

    def resolve_sizes(self, study=None) -> RungSizes:
        """The rung sizes, fixed: as given, as a resumed study recorded them, or by :func:`rung_sizes` (recorded, so
        every worker and every resume scores trials on the same samples even if the rule changes); then the scorer."""
        search = self.settings.search
        recorded = study.user_attrs.get("rung_sizes") if study is not None else None
        if search.samples is None and recorded:
            self.sizes = RungSizes(*recorded)
        else:
            self.sizes = self.planned_sizes()
            if study is not None:
                study.set_user_attr("rung_sizes", [self.sizes.rung0, self.sizes.rung1, self.sizes.held_out])
        self.log(f"rungs: {self.sizes.rung0} samples for rung 0 and the search, {self.sizes.rung1} for rung 1, "
                 f"{self.sizes.held_out} for the selection's largest round")
        if self.scorer is None:
            largest = max(search.trial_samples, self.sizes.rung0 if search.multi_objective else self.sizes.rung1)
            self.scorer = CoachScorer(self.loaded, self.coach, largest=largest, seed=search_seed(search.seed),
                                      residual_weight=search.residual_weight, teacher=Teacher.parse(search.teacher),
                                      runtime=self.runtime, log=self.log)
        return self.sizes

    def grids(self) -> list[tuple[SolverSpec, int, int]]:
        """(solver spec, grid size, NFE) of every pool solver at every NFE the pool is built at
        (:func:`~stepdrop_search.search.rungs.pool_nfes`), on the largest grid that runs within that NFE under the
        run's runtime."""
        out = []
        for nfe in pool_nfes(self.settings.search.nfe):
            for name in self.settings.pool_solvers():
                try:
                    out.append((*spec_for_nfe(name, nfe, runtime=self.runtime), nfe))
                except UserError:
                    continue
        return out

    def row_name(self, solver: str, schedule: str, nfe: int) -> str:
        """A pool row's name: ``solver/schedule``, with ``@NFE`` when built below the run's NFE."""
        return f"{solver}/{schedule}" + ("" if nfe == self.settings.search.nfe else f"@{nfe}")

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
