"""How the search scores a policy: on the coach network, on the first N x_T of the search seed.

:class:`Scorer` is the interface the pipeline asks (``score(document, samples) → Scores``, and the cheap
residual-only rung a pruner may stop); :class:`CoachScorer` samples with the model. Tests hand the pipeline another
scorer and run every phase in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from stepdrop_search.checkpoint import LoadedModel
from stepdrop_search.diffusion.runtimes import Runtime
from stepdrop_search.objectives.features import FeatureFile
from stepdrop_search.objectives.objective import Objective, Scores
from stepdrop_search.objectives.residual import Teacher
from stepdrop_search.policies import PolicyDocument
from stepdrop_search.search.candidates import candidate_key


class Scorer(Protocol):
    def score(self, document: PolicyDocument, samples: int) -> Scores:
        """The objective of ``document`` on the first ``samples`` x_T of the search seed."""

    def cheap(self, document: PolicyDocument, samples: int) -> Scores:
        """A cheaper first look a pruner may stop a trial on (residual only when the objective has one)."""

    def seen(self, document: PolicyDocument, samples: int) -> bool:
        """Whether ``score`` already knows this document at this many samples (seeded trials are not sampled twice)."""


class CoachScorer:
    """:class:`~stepdrop_search.objectives.objective.Objective` on the search seed's first ``largest`` x_T, with every
    score remembered by (candidate, samples)."""

    def __init__(self, loaded: LoadedModel, coach: FeatureFile, *, largest: int, seed: int, residual_weight: float,
                 teacher: Teacher, runtime: Runtime, log: Callable[[str], None] = lambda m: None) -> None:
        self.objective = Objective(loaded, coach, samples=largest, seed=seed, residual_weight=residual_weight,
                                   teacher=teacher, runtime=runtime, log=log)
        self.known: dict[tuple, Scores] = {}

    def score(self, document: PolicyDocument, samples: int) -> Scores:
        key = (candidate_key(document), samples)
        if key not in self.known:
            self.known[key] = self.objective(document, samples=samples)
        return self.known[key]

    def cheap(self, document: PolicyDocument, samples: int) -> Scores:
        return self.objective(document, samples=samples, with_fid=self.objective.residual_weight == 0)

    def seen(self, document: PolicyDocument, samples: int) -> bool:
        return (candidate_key(document), samples) in self.known
