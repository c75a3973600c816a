"""Where candidates come from: one source per method, each a small object with one job.

A source has a ``name`` (the ``--method`` word; ``analytic`` is always on) and ``candidates(run, seconds)``, which
returns the policies it proposes, given ``seconds`` of the budget (None: no limit; the pool's sources ignore it).
The pool's sources run before any scoring; the search's after the pool's rung 1, which they start from. A new method
is one file here and one entry in :data:`POOL` or :data:`SEARCH`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from stepdrop_search.search.sources.analytic import AnalyticSchedules
from stepdrop_search.search.sources.dp_gits import DPGits
from stepdrop_search.search.sources.dp_oss import DPOss
from stepdrop_search.search.sources.gradient import LearnedSteps
from stepdrop_search.search.sources.learned_solver import LearnedSolver
from stepdrop_search.search.sources.optuna_study import OptunaStudy

if TYPE_CHECKING:
    from stepdrop_search.search.candidates import Candidate
    from stepdrop_search.search.run import Run


class Source(Protocol):
    name: str

    def candidates(self, run: Run, seconds: float | None) -> list[Candidate]:
        """The policies this method proposes for ``run`` within ``seconds``."""


class SearchSource(Source, Protocol):
    def applies(self, run: Run) -> bool:
        """Whether it runs in ``run`` (the budget is shared among the ones that do)."""


#: The pool's sources, in the order their rows are listed.
POOL: tuple[Source, ...] = (AnalyticSchedules(), DPGits(), DPOss())
#: The search's sources, in the order they run (the learned solver after the learned steps it starts from; the study
#: last: it gets what the others leave).
SEARCH: tuple[SearchSource, ...] = (LearnedSteps(), LearnedSolver(), OptunaStudy())


def chosen(sources: tuple[Source, ...], methods: tuple[str, ...]) -> list[Source]:
    """The sources ``--method`` asks for (the analytic schedules always)."""
    return [s for s in sources if s.name == "analytic" or s.name in methods]


def searching(run: Run) -> list[SearchSource]:
    """The search's sources ``--method`` asks for that apply to ``run``, in order."""
    return [s for s in chosen(SEARCH, run.settings.search.methods) if s.applies(run)]
