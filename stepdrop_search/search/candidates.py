"""What a search scores: a :class:`Candidate` (a policy, where it came from, its scores by rung, its held-out check)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from stepdrop_search.objectives.objective import Scores
from stepdrop_search.policies import PolicyDocument


@dataclass
class HeldOut:
    """A finalist on the selection seed's noise: its proxy-FID and KID there, and its paired proxy-FID difference to
    the reference (the best pool finalist) with a 95% paired-bootstrap interval and KID's difference."""

    seed: int
    samples: int
    fid: float
    kid: float | None = None
    reference: str | None = None
    fid_difference: float | None = None
    ci95: tuple[float, float] | None = None
    kid_difference: float | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ci95"] = list(self.ci95) if self.ci95 else None
        return out


@dataclass
class Candidate:
    """A policy the search scored: a pool row or a searched one (``source`` names the method that made it).

    ``rungs`` maps a sample count to the coach's scores on that many x_T of the search seed; ``made_by`` says how a
    method made it (the gradient method's losses and costs); ``held_out`` is the selection check of a finalist."""

    name: str
    document: PolicyDocument
    source: str  # "pool" (analytic, dp-gits, dp-oss, gradient) or "optuna"
    rungs: dict[int, Scores] = field(default_factory=dict)
    made_by: dict = field(default_factory=dict)
    held_out: HeldOut | None = None

    @property
    def key(self) -> tuple:
        """What makes two candidates the same sampler: solver, η, its NFE budget (Heun), steps (one run has one runtime)."""
        return candidate_key(self.document)

    @property
    def searched(self) -> bool:
        return self.source != "pool"

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
        """Measured NFE where it was scored, else the one its solver counts for its steps."""
        measured = self.scores.nfe if self.scores is not None else None
        return measured if measured is not None else self.document.solver.solver.nfe(self.document.policy.nfe)

    def objective_record(self) -> dict:
        """The coach's scores for a policy file's provenance: the largest rung's, with every rung's value."""
        top = max(self.rungs) if self.rungs else None
        return {**(self.rungs[top].to_dict() if top else {}), "samples": top,
                "rungs": {str(k): v.value for k, v in sorted(self.rungs.items())}}


def candidate_key(doc: PolicyDocument) -> tuple:
    steps = tuple(round(float(t), 6) for t in doc.policy.timesteps().tolist()) if doc.policy.static else \
        json.dumps(doc.policy.params(), sort_keys=True)
    return (doc.solver.name, doc.solver.eta, doc.solver.nfe, doc.policy.kind if not doc.policy.static else "steps", steps)


def ranked(candidates: list[Candidate], samples: int | None = None) -> list[Candidate]:
    """Best first by the objective at rung ``samples`` (default: each one's largest)."""
    return sorted(candidates, key=lambda c: c.value(samples))
