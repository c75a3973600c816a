"""Choosing the export: every finalist raced on the judge, on noise the search never saw.

The finalists are every pool row (each solver × each analytic and DP schedule, at the run's NFE and at cheaper ones)
and the search's best. They are sampled on the *selection* seed's x_T (disjoint from the search seed and from every
``evaluate`` seed, :mod:`stepdrop_search.seeds`), sample i of every finalist from the same x_T and noise. Samples are
added in rounds (doubling) to the finalists still in the race; after each round a finalist whose judge FID is worse
than the leader's by more than 2 paired standard errors (a paired bootstrap: one set of resampled indices for all)
leaves the race. Before each round the budget is asked too: the finalists still in are carried best first (on the
judge) as far as their round's share of what is left pays for (an equal share for each round still to go), the rest
*cut*: a field too large for the budget (178 pool rows at NFE 25 in 480 s on two CPU cores) then spends its samples on
its best rows and reaches the largest rounds instead of leaving all of them at 32 samples. A field the race cannot
carry to 128 samples at all races the head of the order it is given. The race ends when the leader is separated from
the runner-up, when the largest round is reached, or when the budget cannot carry two finalists further — the log and
the leaderboard say which, and which rows were cut.

**NFE is a ceiling**: when the race has reached at least half its largest round (1024 of 2048 samples by default), the
finalists *level* with the leader there (behind it by at most one paired standard error) at fewer NFE go with the
leader into a *deciding round* of twice the samples; of those still level after it the one with the fewest NFE is
exported, the judge's FID breaking ties. Level, not merely still in the race: "not 2 standard errors worse" says the
data cannot tell the rows apart, not that they are as good. The flow model's NFE-10 run exported UniPC at 8 NFE, 0.18
± 0.15 behind the same schedule at 10 NFE at 2048 samples, and on 2000 × 3 evaluation samples it was 0.38 ± 0.17
behind on every seed. Level at the last round is not enough either: the learned NFE-10 run on the shipped model
exported DPM-Solver++(3M) at 8 NFE, −0.15 ± 0.20 against iPNDM on learned steps at 10 NFE at 2048 samples, and it was
0.53 ± 0.07 behind on every evaluation seed — hence the deciding round. The last round keeps back its cost while a
cheaper row is level (a budget too small for both ends the race at half its largest round and decides there), and a
budget that cannot pay for it at all leaves the export to the leader. A race the budget ends earlier exports its leader: a few hundred samples
cannot tell a cheaper row from one the FID's small-sample bias flatters (the run that taught this exported
DPM-Solver++(3M) at 6 NFE for a 10-NFE budget on 256 samples). Requiring the full largest round was too strict: the
previous model's (152bff3d) NFE-25 regeneration ended at 1024 samples with an Optuna trial (DPM-Solver++(2M) SDE, 25 NFE) 0.33 ± 1.33 ahead
of the same solver on uniform steps at 15 NFE, exported the trial, and on 2000 × 3 evaluation samples the 15-NFE row
was better by 0.58 ± 0.23 on every seed. Only the judge decides; the coach's FID is reported beside it, never used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from stepdrop_search.checkpoint import LoadedModel
from stepdrop_search.generation import generate_document
from stepdrop_search.objectives.features import FeatureFile
from stepdrop_search.objectives.metrics import fid_of_features, proxy_features, resampled_fids
from stepdrop_search.policies import PolicyDocument
from stepdrop_search.progress import advance, phase
from stepdrop_search.search.candidates import Candidate, HeldOut

#: A finalist leaves the race when its judge FID exceeds the leader's by more than this many paired standard errors.
SEPARATION = 2.0
#: A cheaper finalist takes the export from the leader (the NFE ceiling) only when behind it by at most this many.
LEVEL = 1.0
#: Paired-bootstrap resamples per round.
BOOTSTRAP = 100
#: Seconds a finalist costs per round besides its network evaluations (features, bootstrap), until round 1 is timed.
OVERHEAD = 0.05
#: The first round's sample count lies in this range (a power of two the budget affords for every finalist).
FIRST_ROUND = (16, 256)
#: The fewest samples the race carries its field to before the judge's FID may rank it: below this FID's small-sample
#: bias ranks rows, not their quality (a pool-only ``--nfe 5 --budget 60`` run raced all 121 rows at 16 samples,
#: stopped there and exported DDPM on quadratic steps). A field the race's share cannot carry this far, no row leaving
#: early, is cut to the finalists first in the order given (the caller's prior), before any sampling.
INFORMATIVE = 128


class Referee(Protocol):
    """What the race asks of the model: a finalist's samples ``first … first+n−1`` of the selection seed, as features
    on the judge and on the coach (None when a sample is not finite), and their mean NFE."""

    judge: FeatureFile
    coach: FeatureFile

    def features(self, document: PolicyDocument, first: int, n: int) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        ...


@dataclass
class SamplingReferee:
    """The real referee: samples with the model and extracts features with both networks."""

    loaded: LoadedModel
    judge: FeatureFile
    coach: FeatureFile
    seed: int
    device: torch.device

    def features(self, document: PolicyDocument, first: int, n: int) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        run = generate_document(self.loaded, document, n=n, seed=self.seed, first=first)
        if not torch.isfinite(run.x0).all():
            return None
        return (proxy_features(run.x0, self.judge, device=self.device)[0],
                proxy_features(run.x0, self.coach, device=self.device)[0], float(run.nfe.float().mean()))


@dataclass
class Entrant:
    """A finalist in the race: its features so far on both networks, and how its race went."""

    candidate: Candidate
    judge: list[torch.Tensor] = field(default_factory=list)
    coach: list[torch.Tensor] = field(default_factory=list)
    nfe: float = math.nan
    judge_fid: float = math.inf  # on every sample it has, as of its last round
    out_in_round: int | None = None  # the round it left the race in
    level: bool = False  # within LEVEL paired standard errors of the leader in its last round
    cut: bool = False  # left because the budget could not carry it further (not 2 standard errors behind)
    failed: str | None = None
    decided: str | None = None  # how the deciding round (:func:`deciding_round`) left it, when it was in it

    @property
    def samples(self) -> int:
        return sum(len(f) for f in self.judge)

    def judge_features(self, n: int | None = None) -> torch.Tensor:
        return torch.cat(self.judge)[:n]

    def coach_features(self, n: int | None = None) -> torch.Tensor:
        return torch.cat(self.coach)[:n]


@dataclass
class Leaderboard:
    """The race's outcome: every finalist with its :class:`HeldOut` (best first), the export, why the race ended."""

    rows: list[Candidate]
    export: Candidate
    leader: Candidate
    stopped: str
    rounds: list[int]
    seed: int
    deciding: int | None = None  # the deciding round's samples, when the leader and cheaper level rows had one

    def front(self) -> list[Candidate]:
        """The quality-vs-NFE front: each NFE's best row, kept when it beats every cheaper one on the judge."""
        best: dict[int, Candidate] = {}
        for row in self.rows:
            if row.held_out.status.startswith("failed") or not math.isfinite(row.held_out.nfe):
                continue
            nfe = round(row.held_out.nfe)
            if nfe not in best or row.held_out.judge_fid < best[nfe].held_out.judge_fid:
                best[nfe] = row
        front, floor = [], math.inf
        for nfe in sorted(best):
            if best[nfe].held_out.judge_fid < floor:
                front.append(best[nfe])
                floor = best[nfe].held_out.judge_fid
        return front

    def verdict(self) -> str:
        """One line: what was exported and why (the NFE ceiling at work, or the leader)."""
        export, leader = self.export, self.leader
        if export is leader:
            cheaper = [c for c in self.rows if c.held_out.status.startswith("within") and c.held_out.nfe < export.held_out.nfe]
            cheapest = min(cheaper, key=lambda c: c.held_out.nfe, default=None)
            note = "" if cheapest is None else (f"; {cheapest.name} at fewer NFE was still in the race when it ended "
                                                f"({cheapest.held_out.status})")
            behind = [c.name for c in self.rows if c.held_out.status.startswith("behind in the deciding round")
                      and c.held_out.nfe < export.held_out.nfe]
            if self.deciding:  # a cheaper row that overtook the leader there is the export: nothing fell behind it
                note = (f"; {', '.join(behind)} at fewer NFE fell behind in a deciding round of {self.deciding} samples"
                        if behind else "")
            return f"exported {export.name} ({export.held_out.nfe:.0f} NFE), the judge's best ({self.stopped}){note}"
        return (f"exported {export.name}: {export.held_out.nfe:.0f} NFE is level with the best, {leader.name} at "
                f"{leader.held_out.nfe:.0f} NFE, within {LEVEL:g} paired standard error in a deciding round of "
                f"{self.deciding} samples ({self.stopped})")

    def to_dict(self) -> dict:
        return {"seed": self.seed, "rounds": self.rounds, "deciding_round": self.deciding, "stopped": self.stopped,
                "export": self.export.name,
                "leader": self.leader.name, "rows": [{"name": c.name, "source": c.source, **c.held_out.to_dict()}
                                                     for c in self.rows]}

    def markdown(self) -> str:
        lines = [f"# Selection leaderboard: {self.verdict()}", "",
                 f"Selection seed {self.seed}, rounds of {', '.join(map(str, self.rounds))} samples"
                 + (f" and a deciding round of {self.deciding} for the leader and the cheaper rows level with it"
                    if self.deciding else "") + "; Δ = row − export, "
                 "paired on the samples both have (± one paired bootstrap standard error); the judge decides, the coach is "
                 "shown beside it.", "",
                 "| row | source | NFE | samples | judge FID | Δ judge | coach FID | Δ coach | status |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for c in self.rows:
            h = c.held_out
            delta = "" if h.judge_difference is None else f"{h.judge_difference:+.3f} ± {h.judge_se:.3f}"
            coach = "" if h.coach_difference is None else f"{h.coach_difference:+.3f}"
            lines.append(f"| {c.name} | {c.source} | {h.nfe:.1f} | {h.samples} | {h.judge_fid:.3f} | {delta} | "
                         f"{h.coach_fid:.3f} | {coach} | {h.status} |")
        front = ", ".join(f"{c.name} {c.held_out.judge_fid:.3f} at {c.held_out.nfe:.0f} NFE" for c in self.front())
        return "\n".join(lines + ["", f"Quality-vs-NFE front (judge FID): {front}", ""])


def round_sizes(first: int, largest: int) -> list[int]:
    """Cumulative samples per round: ``first``, doubling, ending at ``largest``."""
    sizes = [min(first, largest)]
    while sizes[-1] < largest:
        sizes.append(min(2 * sizes[-1], largest))
    return sizes


def first_round(finalists: list[Candidate], largest: int, seconds: float | None, cost: Callable[[float], float]) -> int:
    """The first round's samples: a 32nd of the largest round, within :data:`FIRST_ROUND`, halved (to no less than
    its floor) until the round takes at most a third of ``seconds``."""
    n = 1 << max(0, (largest // 32).bit_length() - 1)
    n = min(max(n, FIRST_ROUND[0]), FIRST_ROUND[1])
    nfe = sum(c.nfe for c in finalists)
    while n > FIRST_ROUND[0] and seconds is not None and cost(nfe * n) + OVERHEAD * len(finalists) > seconds / 3:
        n //= 2
    return min(n, largest)


def round_seconds(entrant: Entrant, new_samples: int, rate: float | None, cost: Callable[[float], float]) -> float:
    """What ``new_samples`` more samples of ``entrant`` cost: at the race's own measured ``rate`` once it has one."""
    forwards = (entrant.nfe if not math.isnan(entrant.nfe) else entrant.candidate.nfe) * new_samples
    return rate * forwards if rate is not None else cost(forwards) + OVERHEAD


def carry(seconds_each: list[float], affordable: float) -> int:
    """How many of the finalists (best first, each costing ``seconds_each``) the next round can take in
    ``affordable`` seconds."""
    spent = 0.0
    for i, seconds in enumerate(seconds_each):
        spent += seconds
        if spent > affordable:
            return i
    return len(seconds_each)


def fielded(finalists: list[Candidate], seconds: float | None, cost: Callable[[float], float]) -> int:
    """How many of ``finalists`` (in the order given) the race's ``seconds`` carry to :data:`INFORMATIVE` samples if
    none leaves early (at least 2; all without a limit): a round's overhead per finalist for each round up to it."""
    if seconds is None:
        return len(finalists)
    rounds = len(round_sizes(FIRST_ROUND[0], INFORMATIVE))
    return max(2, carry([cost(c.nfe * INFORMATIVE) + OVERHEAD * rounds for c in finalists], seconds))


def race(referee: Referee, finalists: list[Candidate], *, seed: int, largest: int, seconds: float | None,
         cost: Callable[[float], float], left: Callable[[], float], log: Callable[[str], None],
         clock: Callable[[], float] = time.perf_counter) -> Leaderboard:
    """Race ``finalists`` on the judge (module docstring); fills each one's ``held_out``. ``seconds``: the race's
    share of the budget; ``cost`` turns sample-forwards into seconds until the race has timed a round of its own;
    ``left`` is the run's budget left, ``clock`` what the rounds are timed by. Before each round, the finalists still
    in are carried, best judge FID first, as far as the round's share of what is left pays for (equal shares for the
    rounds still to go);
    the rest are cut — so a budget too small for the whole field spends its samples on the best rows instead of
    stopping with every row at a few. A field ``seconds`` cannot carry to :data:`INFORMATIVE` samples is first cut to
    its head: ``finalists`` come most promising first."""
    entrants = [Entrant(c) for c in finalists]
    field = fielded(finalists, seconds, cost)
    for e in entrants[field:]:
        e.out_in_round, e.cut = 0, True
    if field < len(entrants):
        log(f"the budget carries {field} of {len(entrants)} finalists to {INFORMATIVE} samples, where the judge starts to "
            f"rank them: the first {field} race, the others are not sampled")
    sizes = round_sizes(first_round(finalists[:field], largest, seconds, cost), largest)
    generator, stopped, done, rounds = torch.Generator().manual_seed(seed), "", 0, []
    rate: float | None = None  # seconds per sample-forward of a round, features and bootstrap included, once timed
    for r, size in enumerate(sizes, 1):
        running = sorted((e for e in entrants if e.out_in_round is None and e.failed is None), key=lambda e: e.judge_fid)
        if r > 1:
            seconds_each = [round_seconds(e, size - done, rate, cost) for e in running]
            # an equal share of what is left for each round still to go: the field halving while its new samples
            # double, the rounds cost about the same; half of what is left, every round, spent the NFE-25 run's race
            # on 178 rows at 32 and 64 samples and ended it at 512
            # the last round keeps back what a deciding round would cost while a cheaper row is level with the
            # leader: else the race spends the budget and the ceiling can never take a cheaper row. One it cannot
            # then pay ends the race at half the largest round, where the ceiling still applies (deciding_round)
            reserve = deciding_cost(running, size, rate, cost) if r == len(sizes) else 0.0
            carried = running[:carry(seconds_each, (left() - reserve) / (len(sizes) - r + 1))]
            if len(carried) < 2:
                stopped = f"the budget ended before round {r} ({size} samples)"
                break
            for e in running[len(carried):]:
                e.out_in_round, e.cut = r - 1, True
            if len(carried) < len(running):
                log(f"the budget carries the {len(carried)} best of {len(running)} finalists to {size} samples")
            running = carried
        started = clock()
        phase(log, f"selection round {r}: {len(running)} finalists, samples {done}…{size - 1} of seed {seed}", len(running))
        forwards = sample(referee, running, done, size, log)
        done = size
        rounds.append(size)
        running = [e for e in running if e.failed is None]
        if not running:
            stopped = f"every finalist still in failed in round {r}"
            break
        leader = rank(referee, running, size, generator, r)
        left_in = [e for e in running if e.out_in_round is None]
        runner_up = min((e for e in left_in if e is not leader), key=lambda e: e.judge_fid, default=None)
        # the next round's cost as this one measured it: its new samples and its bootstrap both double each round
        rate = (clock() - started) / max(forwards, 1.0)
        log(f"round {r}: {size} samples, {len(left_in)} of {len(running)} still in; leader {leader.candidate.name} "
            f"(judge FID {leader.judge_fid:.3f})" + (f", runner-up {runner_up.candidate.name} "
                                                      f"{runner_up.judge_fid - leader.judge_fid:+.3f}" if runner_up else ""))
        if runner_up is None:
            stopped = f"the leader separated from every other finalist in round {r}"
            break
    else:
        stopped = f"the largest round ({largest} samples) left {len(left_in)} finalists within {SEPARATION:g} standard errors"
    leader, export, deciding = race_leader(entrants), None, None
    if rounds and 2 * rounds[-1] >= largest:
        leader, export, deciding, note = deciding_round(referee, entrants, leader, generator, rate, cost, left, log)
        stopped += note
    return standings(entrants, referee, rounds, seed, stopped, leader, export or leader, deciding)


def sample(referee: Referee, entrants: list[Entrant], done: int, size: int, log: Callable[[str], None]) -> float:
    """Samples ``done … size−1`` of every entrant, on both networks (a non-finite one fails it); the sample-forwards
    spent."""
    forwards = 0.0
    for e in entrants:
        got = referee.features(e.candidate.document, done, size - done)
        if got is None:
            e.failed = "non-finite samples"
        else:
            e.judge.append(got[0])
            e.coach.append(got[1])
            e.nfe = got[2] if math.isnan(e.nfe) else e.nfe
            forwards += e.nfe * (size - done)
        advance(log, f"  {e.candidate.name}: {'failed' if e.failed else f'{size} samples'}")
    return forwards


def rank(referee: Referee, entrants: list[Entrant], size: int, generator: torch.Generator, r: int | None) -> Entrant:
    """The leader of ``entrants`` (``size`` samples each) on the judge; marks each one level with it or not, and (with
    a round ``r``) out in that round when more than :data:`SEPARATION` paired standard errors behind."""
    for e in entrants:
        e.judge_fid = fid_of_features(e.judge_features(), referee.judge)
    leader = min(entrants, key=lambda e: e.judge_fid)
    picks = torch.randint(size, (BOOTSTRAP, size), generator=generator)
    boot = {id(e): resampled_fids(e.judge_features(), referee.judge, picks) for e in entrants}
    for e in entrants:
        gap, se = e.judge_fid - leader.judge_fid, float((boot[id(e)] - boot[id(leader)]).std())
        e.level = gap <= LEVEL * se
        if r is not None and e is not leader and gap > SEPARATION * se:
            e.out_in_round = r
    return leader


def cheaper_and_level(entrants: list[Entrant]) -> tuple[Entrant, list[Entrant]]:
    """The leader of ``entrants`` (by their judge FID so far) and those level with it at fewer NFE, cheapest first."""
    leader = min(entrants, key=lambda e: e.judge_fid)
    cheaper = [e for e in entrants if e is not leader and e.level and round(e.nfe) < round(leader.nfe)]
    return leader, sorted(cheaper, key=lambda e: (round(e.nfe), e.judge_fid))


def deciding_cost(running: list[Entrant], samples: int, rate: float | None, cost: Callable[[float], float]) -> float:
    """What a deciding round of ``samples`` more samples for the leader and the cheapest row level with it costs; 0
    without such a row."""
    leader, cheaper = cheaper_and_level(running)
    return sum(round_seconds(e, samples, rate, cost) for e in (leader, *cheaper[:1])) if cheaper else 0.0


def race_leader(entrants: list[Entrant]) -> Entrant:
    """The best finalist still in the race on the judge (if every one still in failed, the best that did not)."""
    scored = [e for e in entrants if e.failed is None and e.judge]
    if not scored:
        raise ValueError("no finalist produced finite samples")
    still = [e for e in scored if e.out_in_round is None] or scored
    return min(still, key=lambda e: e.judge_fid)


def deciding_round(referee: Referee, entrants: list[Entrant], leader: Entrant, generator: torch.Generator,
                   rate: float | None, cost: Callable[[float], float], left: Callable[[], float],
                   log: Callable[[str], None]) -> tuple[Entrant, Entrant, int | None, str]:
    """The NFE ceiling, decided on twice the samples. The finalists level with ``leader`` at fewer NFE get, with it, a
    round of twice the samples they have (cheapest first, as far as the budget left pays for); of them, the one with
    the fewest NFE still level with the best of them afterwards is exported. Level at the last round is not enough:
    the regeneration's learned NFE-10 run exported DPM-Solver++(3M) at 8 NFE, level with iPNDM on learned steps at 10
    NFE at 2048 samples (−0.15 ± 0.20), and it was 0.53 ± 0.07 behind on every evaluation seed. The race's last round
    keeps back this round's cost (:func:`race`); a budget that still cannot pay for it exports the leader.
    Returns the leader, the export, the round's samples (None when none ran) and what happened, for "stopped"."""
    still = [e for e in entrants if e.out_in_round is None and e.failed is None and e.judge]
    if not any(e is leader for e in still):  # every row still in the race failed: nothing to decide between
        return leader, leader, None, ""
    _, cheaper = cheaper_and_level(still)
    if not cheaper:
        return leader, leader, None, ""
    done = leader.samples
    size = 2 * done
    contenders = [leader, *cheaper]
    contenders = contenders[:carry([round_seconds(e, size - done, rate, cost) for e in contenders], left())]
    if len(contenders) < 2:
        return leader, leader, None, (f"; the budget could not pay the deciding round ({size} samples) the cheaper "
                                      "rows level with the leader need, so the leader is exported")
    for e in cheaper[len(contenders) - 1:]:
        e.decided = "level, not in the deciding round (budget)"
    rows = "1 cheaper row" if len(contenders) == 2 else f"{len(contenders) - 1} cheaper rows"
    phase(log, f"deciding round: the leader and {rows} level with it, samples {done}…{size - 1}", len(contenders))
    sample(referee, contenders, done, size, log)
    survivors = [e for e in contenders if e.failed is None]
    failed = "" if len(survivors) == len(contenders) else (
        f" ({', '.join(e.candidate.name for e in contenders if e.failed)} failed in it)")
    if not survivors:
        leader = race_leader(entrants)
        return leader, leader, size, f"; every row in the deciding round ({size} samples) failed{failed}"
    best = rank(referee, survivors, size, generator, None)
    export = min((e for e in survivors if e.level), key=lambda e: (round(e.nfe), e.judge_fid))
    for e in survivors:
        e.decided = ("the best in the deciding round" if e is best else
                     f"level in the deciding round ({size})" if e.level else f"behind in the deciding round ({size})")
    log(f"deciding round: {size} samples; the best {best.candidate.name}, exported {export.candidate.name}")
    return best, export, size, f"; a deciding round took the leader and {rows} level with it to {size} samples{failed}"


def standings(entrants: list[Entrant], referee: Referee, rounds: list[int], seed: int, stopped: str, leader: Entrant,
              export: Entrant, deciding: int | None) -> Leaderboard:
    """The leaderboard: every row's paired difference to ``export`` on the samples both have, and how its race
    ended."""
    generator, references = torch.Generator().manual_seed(seed + 1), {}
    for e in entrants:
        if e.failed is None and e.out_in_round == 0:
            e.candidate.held_out = HeldOut(seed, 0, math.inf, math.inf, e.candidate.nfe, status="not raced (budget)")
            continue
        if e.failed is not None or not e.judge:
            e.candidate.held_out = HeldOut(seed, e.samples, math.inf, math.inf, e.nfe, status=f"failed: {e.failed}")
            continue
        n = min(e.samples, export.samples)
        if n not in references:  # the export on its first n samples: one set of resampled indices per n
            picks = torch.randint(n, (BOOTSTRAP, n), generator=generator)
            references[n] = (picks, fid_of_features(export.judge_features(n), referee.judge),
                             resampled_fids(export.judge_features(n), referee.judge, picks),
                             fid_of_features(export.coach_features(n), referee.coach))
        picks, export_fid, export_boot, export_coach = references[n]
        coach_fid = fid_of_features(e.coach_features(), referee.coach)
        diff = (e.judge_fid if n == e.samples else fid_of_features(e.judge_features(n), referee.judge)) - export_fid
        se = float((resampled_fids(e.judge_features(n), referee.judge, picks) - export_boot).std())
        coach = (coach_fid if n == e.samples else fid_of_features(e.coach_features(n), referee.coach)) - export_coach
        status = "export" if e is export else e.decided or (f"cut after round {e.out_in_round} (budget)" if e.cut else
                                                f"out in round {e.out_in_round}" if e.out_in_round else
                                                f"within {LEVEL:g} SE" if e.level else f"within {SEPARATION:g} SE")
        e.candidate.held_out = HeldOut(seed, e.samples, e.judge_fid, coach_fid, e.nfe, diff, se, coach, status)
    rows = sorted((e.candidate for e in entrants), key=lambda c: (-c.held_out.samples, c.held_out.judge_fid))
    return Leaderboard(rows, export.candidate, leader.candidate, stopped, rounds, seed, deciding)
