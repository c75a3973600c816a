"""The selection race and the whole optimize pipeline, with a fake scorer and a fake referee: no network runs.

The fake referee's features are a shared per-sample noise (common random numbers: sample i is the same draw for every
finalist) plus an offset that grows with the finalist's badness, so FID orders finalists by badness and paired
differences cancel the noise."""

import math
from types import SimpleNamespace

import optuna
import pytest
import torch

from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.objectives.features import FeatureFile
from stepdrop_search.objectives.objective import Scores
from stepdrop_search.policies import PolicyDocument
from stepdrop_search.policies.kinds import Uniform
from stepdrop_search.search.budget import Budget
from stepdrop_search.search.candidates import Candidate
from stepdrop_search.search.optimize import optimize, prior_order
from stepdrop_search.search.selection import INFORMATIVE, race, round_sizes
from stepdrop_search.search.settings import OptimizeSettings

DIM = 8


def network(name: str) -> FeatureFile:
    return FeatureFile(None, {}, {"mu": torch.zeros(DIM, dtype=torch.float64), "sigma": torch.eye(DIM, dtype=torch.float64),
                                  "features": torch.randn(64, DIM)}, {}, name)


class FakeReferee:
    """Features of sample i: the same N(0, I) draw for every document, shifted by ``badness(document)``."""

    def __init__(self, badness, coach_badness=None) -> None:
        self.judge, self.coach = network("fake-judge"), network("fake-coach")
        self.badness, self.coach_badness = badness, coach_badness or badness
        self.asked: list[tuple[str, int, int]] = []

    def features(self, document, first, n):
        self.asked.append((document.solver.name, first, n))
        base = torch.randn(first + n, DIM, generator=torch.Generator().manual_seed(7), dtype=torch.float64)[first:]
        shift = torch.zeros(DIM, dtype=torch.float64)
        nfe = float(document.solver.solver.nfe(document.policy.nfe))
        return (base + shift.fill_(self.badness(document)), base + shift.fill_(self.coach_badness(document)), nfe)


def finalist(solver: str, steps: int) -> Candidate:
    return Candidate(f"{solver}/uniform@{steps}", PolicyDocument(Uniform(nfe=steps), SolverSpec(solver)), "pool")


def run_race(referee, finalists, *, left=lambda: math.inf, largest=256):
    return race(referee, finalists, seed=3, largest=largest, seconds=None, cost=lambda forwards: forwards * 1e-3,
                left=left, log=lambda m: None)


def test_clearly_worse_finalists_leave_early_and_the_leader_separates():
    badness = {"ddim": 0.0, "ddpm": 1.0, "unipc": 0.15}
    referee = FakeReferee(lambda doc: badness[doc.solver.name])
    board = run_race(referee, [finalist("ddpm", 10), finalist("ddim", 10), finalist("unipc", 10)])
    assert board.export.name == board.leader.name == "ddim/uniform@10"
    statuses = {c.name: c.held_out.status for c in board.rows}
    assert statuses["ddpm/uniform@10"] == "out in round 1"  # far worse: gone after the first 16 samples
    assert statuses["unipc/uniform@10"].startswith("out in round")  # slightly worse: it takes more samples
    assert "separated" in board.stopped and board.rounds == round_sizes(16, 256)[:len(board.rounds)]
    ddpm_samples = sum(n for solver, _, n in referee.asked if solver == "ddpm")
    assert ddpm_samples == board.rounds[0] < board.rows[0].held_out.samples  # an out finalist is sampled no more


def test_nfe_is_a_ceiling_a_cheaper_finalist_level_with_the_leader_is_exported():
    # 5 steps a little worse than 25 (within one paired standard error at 64 samples and still at 128, the deciding
    # round), 3 steps far worse
    referee = FakeReferee(lambda doc: {25: 0.0, 5: 0.08, 3: 3.0}[doc.policy.nfe])
    board = run_race(referee, [finalist("ddim", 25), finalist("ddim", 5), finalist("ddim", 3)], largest=64)
    assert board.leader.name == "ddim/uniform@25" and board.export.name == "ddim/uniform@5"
    assert board.rounds[-1] == 64 and board.deciding == 128 and "within 2 standard errors" in board.stopped
    assert "is level with the best" in board.verdict()
    assert [c.name for c in board.front()] == ["ddim/uniform@3", "ddim/uniform@5", "ddim/uniform@25"]
    [best] = [c for c in board.rows if c.name == "ddim/uniform@25"]
    assert 0 < -best.held_out.judge_difference < best.held_out.judge_se  # the leader, by less than one SE


def test_a_cheaper_finalist_still_in_the_race_but_not_level_leaves_the_export_to_the_leader():
    # at 256 samples 5 steps are behind 25 by between one and two paired standard errors: the data cannot tell them
    # apart, and cannot say they are as good either (the flow model's NFE-10 run: 0.18 ± 0.15 at selection, 0.38 ±
    # 0.17 behind on the evaluation seeds)
    referee = FakeReferee(lambda doc: {25: 0.0, 5: 0.1}[doc.policy.nfe])
    board = run_race(referee, [finalist("ddim", 25), finalist("ddim", 5)], largest=256)
    assert board.export is board.leader and board.export.name == "ddim/uniform@25"
    [cheaper] = [c for c in board.rows if c.name == "ddim/uniform@5"]
    assert cheaper.held_out.status == "within 2 SE"
    assert cheaper.held_out.judge_se < cheaper.held_out.judge_difference < 2 * cheaper.held_out.judge_se
    assert "ddim/uniform@5 at fewer NFE was still in the race" in board.verdict()


class LateReferee(FakeReferee):
    """:class:`FakeReferee`, and from sample ``late`` on the rows ``worse`` picks are ``by`` worse: level with the
    leader on the first samples by construction, behind on the next."""

    def __init__(self, badness, worse, late: int, by: float) -> None:
        super().__init__(badness)
        self.worse, self.late, self.by = worse, late, by

    def features(self, document, first, n):
        judge, coach, nfe = super().features(document, first, n)
        if self.worse(document):
            judge[max(0, self.late - first):] += self.by
        return judge, coach, nfe


def test_a_cheaper_row_level_at_the_largest_round_must_stay_level_in_the_deciding_round_to_take_the_export():
    # 5 steps draw the same first 64 samples as 25 (level) and worse ones after them (the learned NFE-10 run on the
    # converged model: level at 2048 selection samples, 0.53 ± 0.07 behind on every evaluation seed)
    referee = LateReferee(lambda doc: {25: 0.0, 5: 0.0, 3: 3.0}[doc.policy.nfe], lambda doc: doc.policy.nfe == 5,
                          late=64, by=0.5)
    board = run_race(referee, [finalist("ddim", 25), finalist("ddim", 5), finalist("ddim", 3)], largest=64)
    assert board.rounds == [16, 32, 64] and board.deciding == 128 and "deciding round" in board.stopped
    assert board.export is board.leader and board.export.name == "ddim/uniform@25"
    assert sorted(n for _, first, n in referee.asked if first == 64) == [64, 64]  # the leader and the 5-step row only
    statuses = {c.name: c.held_out.status for c in board.rows}
    assert statuses["ddim/uniform@5"] == "behind in the deciding round (128)"
    assert "fell behind in a deciding round of 128 samples" in board.verdict()
    assert "and a deciding round of 128" in board.markdown() and board.to_dict()["deciding_round"] == 128


def test_the_last_round_keeps_back_the_deciding_round_of_a_cheaper_level_row_from_a_falling_budget():
    # 25 and 5 steps draw the same samples (level to the end) under a budget that only falls: a clock that advances
    # with every sample-forward, 10 s in all. The race's rounds to 128 samples cost 4 s; the last round (256) would
    # take 3.8 s and leave 2.2 for a deciding round that costs 7.7, so the race keeps back what a deciding round from
    # 128 costs (3.8 s), stops before its last round and decides at 256 samples within the budget
    clock = FakeClock()
    referee = ClockedReferee(clock, lambda doc: {25: 0.0, 5: 0.0, 4: 2.0, 3: 3.0}[doc.policy.nfe])
    finalists = [finalist("ddim", 25), finalist("ddim", 5), finalist("ddim", 4), finalist("ddim", 3)]
    board = race(referee, finalists, seed=3, largest=256, seconds=None, cost=lambda forwards: forwards * 1e-3,
                 left=lambda: 10 - clock.now, log=lambda m: None, clock=clock)
    assert board.rounds == [16, 32, 64, 128] and "budget ended before round 5" in board.stopped
    assert board.deciding == 256 and clock.now <= 10
    assert board.leader.name == "ddim/uniform@25" and board.export.name == "ddim/uniform@5"


def test_a_budget_that_cannot_pay_the_deciding_round_exports_the_leader():
    referee = FakeReferee(lambda doc: {25: 0.0, 5: 0.07}[doc.policy.nfe])
    calls = iter([math.inf] * 2)  # the race's rounds 2 and 3 are paid; nothing is left for the deciding round
    board = run_race(referee, [finalist("ddim", 25), finalist("ddim", 5)], largest=64, left=lambda: next(calls, 0.0))
    assert board.rounds == [16, 32, 64] and board.deciding is None and "could not pay the deciding round" in board.stopped
    assert board.export is board.leader and board.export.name == "ddim/uniform@25"
    [cheaper] = [c for c in board.rows if c.name == "ddim/uniform@5"]
    assert cheaper.held_out.status == "within 1 SE"  # as measured: the budget, not the data, kept it from the export


def test_a_leader_that_fails_in_the_deciding_round_leaves_the_export_to_the_rows_that_did_not():
    referee = FakeReferee(lambda doc: {25: 0.0, 5: 0.07}[doc.policy.nfe])
    sampled = referee.features
    referee.features = lambda doc, first, n: None if doc.policy.nfe == 25 and first >= 64 else sampled(doc, first, n)
    board = run_race(referee, [finalist("ddim", 25), finalist("ddim", 5)], largest=64)
    assert board.deciding == 128 and "ddim/uniform@25 failed in it" in board.stopped
    assert board.export.name == board.leader.name == "ddim/uniform@5"
    [failed] = [c for c in board.rows if c.name == "ddim/uniform@25"]
    assert failed.held_out.status == "failed: non-finite samples"


def test_a_race_the_budget_ends_early_exports_its_leader_not_the_cheapest():
    referee = FakeReferee(lambda doc: {25: 0.0, 5: 0.05}[doc.policy.nfe])
    board = run_race(referee, [finalist("ddim", 25), finalist("ddim", 5)], left=lambda: 0.0)
    assert board.rounds == [16] and "budget ended before round 2" in board.stopped
    assert board.export is board.leader and board.export.held_out.status == "export"


def test_a_finalist_whose_samples_fail_is_listed_as_failed_and_the_race_goes_on():
    referee = FakeReferee(lambda doc: 0.0)
    failing = referee.features
    referee.features = lambda doc, first, n: None if doc.solver.name == "ddpm" else failing(doc, first, n)
    board = run_race(referee, [finalist("ddpm", 10), finalist("ddim", 10)], largest=32)
    [ddpm] = [c for c in board.rows if c.name.startswith("ddpm")]
    assert ddpm.held_out.status == "failed: non-finite samples" and board.export.name == "ddim/uniform@10"
    assert [c.name for c in board.front()] == ["ddim/uniform@10"] and "failed" in board.markdown()


def test_only_the_judge_decides_the_coach_is_reported_beside_it():
    judge = {"ddim": 0.0, "unipc": 1.0}
    coach = {"ddim": 1.0, "unipc": 0.0}  # a schedule that learned the coach's quirks
    board = run_race(FakeReferee(lambda doc: judge[doc.solver.name], lambda doc: coach[doc.solver.name]),
                     [finalist("unipc", 10), finalist("ddim", 10)])
    assert board.export.name == "ddim/uniform@10"
    [unipc] = [c for c in board.rows if c.name.startswith("unipc")]
    assert unipc.held_out.judge_difference > 0 > unipc.held_out.coach_difference


def test_a_round_the_budget_cannot_pay_for_is_not_started():
    board = run_race(FakeReferee(lambda doc: 0.0), [finalist("ddim", 10), finalist("unipc", 10)],
                     left=lambda: 0.0)  # nothing left: round 1 runs all the same (an export needs one), then it stops
    assert board.rounds == [16] and "budget ended before round 2" in board.stopped


def fake_scorer_badness(doc: PolicyDocument) -> float:
    """Better with more steps, and DPM-Solver++(2M) best of the solvers."""
    return 1.0 / doc.policy.nfe + (0.0 if doc.solver.name == "dpmpp-2m" else 0.3)


class FakeScorer:
    def score(self, document, samples):
        return Scores(fake_scorer_badness(document), fake_scorer_badness(document), None,
                      float(document.solver.solver.nfe(document.policy.nfe)))

    def cheap(self, document, samples):
        return self.score(document, samples)

    def seen(self, document, samples):
        return False


@pytest.fixture(autouse=True)
def private_workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("STEPDROP_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def test_the_whole_pipeline_runs_with_a_fake_scorer_and_exports_the_best_pool_row(tiny_checkpoint, tiny_features,
                                                                                   tmp_path):
    settings = OptimizeSettings.from_flags(nfe=10, method="optuna", model=str(tiny_checkpoint),
                                           features=str(tiny_features), trials=12, budget=None, samples=16,
                                           promote_samples=32, held_out_samples=128, trial_samples=16,
                                           storage=f"sqlite:///{tmp_path}/s.db", out=str(tmp_path / "best.json"))
    referee = FakeReferee(lambda doc: 4 * fake_scorer_badness(doc))
    said = []
    result = optimize(settings, said.append, scorer=FakeScorer(), referee=referee)
    assert said[1] == ("plan: a pool of every solver × 4 analytic schedules at NFE 10, 8, 6, 4; a search (optuna) on the "
                       "coach; a race on the judge picks the export; no time limit (the study stops at 12 trials)")
    pool = [c for c in result.candidates if c.source == "pool"]
    assert {c.nfe_budget for c in pool} == {10, 8, 6, 4}  # the run's NFE and the cheaper ones
    best_pool = min(pool, key=lambda c: fake_scorer_badness(c.document))
    export = result.leaderboard.export
    assert fake_scorer_badness(export.document) <= fake_scorer_badness(best_pool.document)  # never worse than the pool
    assert export.document.solver.name == "dpmpp-2m" and (tmp_path / "best.leaderboard.md").exists()
    study = optuna.load_study(study_name=settings.study_name, storage=settings.search.storage)
    assert not study.get_trials(states=(optuna.trial.TrialState.WAITING,))  # no seed left waiting


class FakeClock:
    """Seconds that pass only when the fake scorer or referee works: one per thousand sample-forwards."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ClockedScorer(FakeScorer):
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def score(self, document, samples):
        scores = super().score(document, samples)
        self.clock.now += scores.nfe * samples / 1000
        return scores


class ClockedReferee(FakeReferee):
    def __init__(self, clock: FakeClock, badness) -> None:
        super().__init__(badness)
        self.clock = clock

    def features(self, document, first, n):
        got = super().features(document, first, n)
        self.clock.now += got[2] * n / 1000
        return got


def test_a_budget_that_ends_among_the_seeded_trials_leaves_none_waiting_and_holds_the_run(tiny_checkpoint,
                                                                                         tiny_features, tmp_path):
    clock = FakeClock()
    settings = OptimizeSettings.from_flags(nfe=10, method="optuna", model=str(tiny_checkpoint), features=str(tiny_features),
                                           trials=200, budget=70, samples=16, promote_samples=32, held_out_samples=256,
                                           trial_samples=128, prune_samples=128, storage=f"sqlite:///{tmp_path}/s.db",
                                           out=str(tmp_path / "best.json"))
    result = optimize(settings, scorer=ClockedScorer(clock), referee=ClockedReferee(clock, fake_scorer_badness),
                      budget=Budget(70, clock=clock))
    study = optuna.load_study(study_name=settings.study_name, storage=settings.search.storage)
    seeded = [t for t in study.trials if "source" in t.user_attrs]
    pool_seeds = sum(1 for c in result.candidates if c.source == "pool" and c.nfe_budget == 10
                     and c.document.solver.name in result.search_solvers)
    assert 0 < len(seeded) < pool_seeds  # the budget ended while the pool's seeds were still running
    assert not study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert clock.now <= 70 * 1.1 and result.leaderboard.export is not None


def test_a_pareto_search_is_held_to_its_budget_and_checks_its_set_on_what_is_left(tiny_checkpoint, tiny_features,
                                                                                 tmp_path):
    clock = FakeClock()
    settings = OptimizeSettings.from_flags(nfe=4, method="optuna", solver="ddim", multi_objective=True, nfe_range=(2, 5),
                                           model=str(tiny_checkpoint), features=str(tiny_features), trials=60,
                                           budget=40, samples=8, promote_samples=8, held_out_samples=4096,
                                           trial_samples=256, storage=f"sqlite:///{tmp_path}/mo.db")
    budget = Budget(40, clock=clock)
    budget.per_forward = 1e-3  # the referee's fake cost, which the check's size is fitted to
    result = optimize(settings, scorer=ClockedScorer(clock), referee=ClockedReferee(clock, fake_scorer_badness),
                      budget=budget)
    checked = {c.held_out.samples for c in result.candidates}
    assert len(checked) == 1 and 256 <= checked.pop() < 4096  # one size for the set, cut to fit the reserve it kept
    assert result.trials < 60 and clock.now <= 40 * 1.1


def test_a_field_too_large_for_the_budget_carries_its_best_rows_further_instead_of_stopping_early():
    clock = FakeClock()
    referee = ClockedReferee(clock, lambda doc: doc.policy.nfe / 200)  # close rows: few leave on 2 standard errors
    finalists = [finalist("ddim", steps) for steps in range(2, 42, 2)]  # 20 rows, 2 to 40 NFE
    board = race(referee, finalists, seed=3, largest=1024, seconds=20, cost=lambda forwards: forwards * 1e-3,
                 left=lambda: 20 - clock.now, log=lambda m: None, clock=clock)
    cut = [c for c in board.rows if c.held_out.status.startswith("cut after round")]
    # without the cut, 20 rows × 21 NFE each fit 32 samples in 20 s; with half of what is left for every round, 256
    assert cut and board.rounds[-1] == 1024
    assert clock.now <= 20 and not board.export.held_out.status.startswith("cut")
    assert all(c.held_out.samples < board.export.held_out.samples for c in cut)


def test_a_race_that_reaches_half_its_largest_round_exports_the_cheapest_finalist_still_level():
    referee = FakeReferee(lambda doc: {25: 0.0, 5: 0.07}[doc.policy.nfe])  # 5 steps behind, within 1 SE
    # the budget pays for rounds 2, 3 and 4 (32, 64, 128 samples), not for round 5 of all finalists (256), but for
    # the deciding round of the leader and the cheaper row level with it (to 256)
    spent = iter([math.inf] * 3 + [0.0, math.inf])
    board = run_race(referee, [finalist("ddim", 25), finalist("ddim", 5)], left=lambda: next(spent), largest=256)
    assert board.rounds == [16, 32, 64, 128] and "budget ended before round 5" in board.stopped
    assert board.deciding == 256 and "deciding round" in board.stopped
    assert board.leader.name == "ddim/uniform@25" and board.export.name == "ddim/uniform@5"


def test_a_field_the_budget_cannot_carry_to_informative_samples_races_only_its_head_in_the_order_given():
    clock = FakeClock()
    referee = ClockedReferee(clock, lambda doc: 0.0 if doc.solver.name == "ddpm" else 0.5)  # the tail's ddpm is best
    finalists = [finalist("ddim", 10) for _ in range(9)] + [finalist("ddpm", 10)]
    for i, c in enumerate(finalists):
        c.name = f"row-{i}"
    said = []
    # each finalist costs 10 × 128 × 1e-3 s + overhead to reach 128 samples: 5 s carry 3 of the 10
    board = race(referee, finalists, seed=3, largest=256, seconds=5, cost=lambda forwards: forwards * 1e-3,
                 left=lambda: 5 - clock.now, log=said.append, clock=clock)
    raced = {c.name for c in board.rows if c.held_out.samples}
    assert raced == {"row-0", "row-1", "row-2"} and {solver for solver, *_ in referee.asked} == {"ddim"}
    assert {c.held_out.status for c in board.rows if c.name not in raced} == {"not raced (budget)"}
    assert board.rounds[-1] >= INFORMATIVE and any("carries 3 of 10 finalists" in m for m in said)
    assert "not raced" in board.markdown() and board.export.name in raced


def test_the_prior_order_takes_every_solvers_best_known_row_at_every_nfe_before_any_second_row():
    run = SimpleNamespace(sizes=SimpleNamespace(rung0=64), settings=SimpleNamespace(search=SimpleNamespace(nfe=10)))

    def row(solver, steps, nfe_budget, score=None):
        c = finalist(solver, steps)
        c.name += f"~{nfe_budget}"
        c.nfe_budget = nfe_budget
        if score is not None:
            c.rungs[64] = Scores(score, score, None, float(steps))
        return c

    learned = row("unipc", 6, 10)
    learned.made_by = {"method": "gradient"}  # learned steps: no rung-0 score, better than their start on validation
    trials = [row("unipc", steps, 10, score=0.5) for steps in (4, 5)]  # the study's best: flattered by their selection
    for trial in trials:
        trial.source, trial.nfe_budget = "optuna", None
    rows = [row("ddim", 8, 8), row("ddim", 7, 8), row("ddim", 10, 10), row("ddim", 9, 10, score=3.0),
            row("unipc", 10, 10, score=2.0), row("unipc", 9, 10, score=1.0), learned, *trials]
    order = [c.name for c in prior_order(run, rows)]
    assert order == ["ddim/uniform@9~10", "unipc/uniform@6~10", "unipc/uniform@4~10",  # each group's best known row
                     "ddim/uniform@8~8",
                     "ddim/uniform@10~10", "unipc/uniform@9~10", "unipc/uniform@5~10",  # then each group's second
                     "ddim/uniform@7~8", "unipc/uniform@10~10"]
