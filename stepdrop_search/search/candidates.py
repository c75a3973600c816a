"""What a search scores: a :class:`Candidate` (a policy, where it came from, its scores by rung, its selection race)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from stepdrop_search.generation import document_nfe
from stepdrop_search.objectives.objective import Scores
from stepdrop_search.policies import PolicyDocument


@dataclass
class HeldOut:
    """A finalist on the selection seed's noise: how many samples it reached, its FID there on the judge and on the
    coach, its measured NFE, and (once the export is chosen) its paired difference to the export on the samples both
    have: the judge's with its bootstrap standard error, the coach's beside it. ``status`` says how its race ended."""

    seed: int
    samples: int
    judge_fid: float
    coach_fid: float
    nfe: float
    judge_difference: float | None = None
    judge_se: float | None = None
    coach_difference: float | None = None
    status: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Candidate:
    """A policy the search scored: a pool row or a searched one (``source`` names the method that made it).

    ``rungs`` maps a sample count to the coach's scores on that many x_T of the search seed; ``made_by`` says how a
    method made it (the gradient method's losses and costs); ``held_out`` is its race in the selection; ``nfe_budget``
    the NFE it was built to spend (a pool row may be built at an NFE below the run's, which it then competes with)."""

    name: str
    document: PolicyDocument
    source: str  # "pool" (analytic, dp-gits, dp-oss, gradient) or "optuna"
    rungs: dict[int, Scores] = field(default_factory=dict)
    made_by: dict = field(default_factory=dict)
    held_out: HeldOut | None = None
    nfe_budget: int | None = None

    @property
    def key(self) -> tuple:
        """What makes two candidates the same sampler: solver, η, its NFE budget (Heun), a learned solver's coefficients,
        steps (one run has one runtime)."""
        return candidate_key(self.document)

    def value(self, samples: int | None = None) -> float:
        """The objective at rung ``samples`` (default: the largest rung it reached)."""
        if not self.rungs:
            return math.inf
        scores = self.rungs.get(samples) if samples is not None else self.rungs[max(self.rungs)]
        return scores.value if scores is not None else math.inf

    @property
    def scores(self) -> Scores | None:
        """The scores of its largest rung."""
        return self.rungs[max(self.rungs)] if self.rungs else None

    @property
    def nfe(self) -> float:
        """Measured NFE where it was sampled, else the one its solver counts for its steps."""
        if self.held_out is not None:
            return self.held_out.nfe
        measured = self.scores.nfe if self.scores is not None else None
        return measured if measured is not None else document_nfe(self.document, expected=False)

    def objective_record(self) -> dict:
        """The coach's scores for a policy file's provenance: the largest rung's, with every rung's value."""
        top = max(self.rungs) if self.rungs else None
        return {**(self.rungs[top].to_dict() if top else {}), "samples": top,
                "rungs": {str(k): v.value for k, v in sorted(self.rungs.items())}}


def candidate_key(doc: PolicyDocument) -> tuple:
    steps = tuple(round(float(t), 6) for t in doc.policy.timesteps().tolist()) if doc.policy.static else \
        json.dumps(doc.policy.params(), sort_keys=True)
    guidance = (doc.guidance.scale, doc.guidance.sigma_lo, doc.guidance.sigma_hi) if doc.guidance else None
    return (*doc.solver.key, doc.policy.kind if not doc.policy.static else "steps", steps, guidance)


def ranked(candidates: list[Candidate], samples: int | None = None) -> list[Candidate]:
    """Best first by the objective at rung ``samples`` (default: each one's largest)."""
    return sorted(candidates, key=lambda c: c.value(samples))
