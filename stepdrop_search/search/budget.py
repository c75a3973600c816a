"""The run's wall clock against ``--budget``, and the one cost model every phase asks.

The cost model is a single number: seconds per *sample-forward* (one network evaluation of one sample, with the
metric's share), measured by a probe when the run starts and again on the pool's first rung. A phase turns its work into sample-forwards and asks
what that costs, or how much of the budget is left for it after what the later phases need.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Budget:
    """``seconds`` for the whole run (None: no limit); ``timeout`` caps each search worker's share. ``clock`` reads
    the time (tests pass a fake one that their fake scorer advances)."""

    def __init__(self, seconds: float | None, timeout: float | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.seconds, self.timeout, self.clock = seconds, timeout, clock
        self.start = clock()
        self.per_forward: float | None = None  # seconds per sample-forward, once measured

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        """Seconds left of the budget (infinite without one)."""
        return self.seconds - self.elapsed() if self.seconds is not None else math.inf

    def describe(self) -> str:
        """"12 s, 258 s of the budget left": what the log prints beside each phase."""
        return f"{self.elapsed():.0f} s" + (f", {self.left():.0f} s of the budget left" if self.seconds else "")

    def measure(self, forwards: float, seconds: float) -> None:
        """Set the cost model from a phase that spent ``seconds`` on ``forwards`` sample-forwards (the latest wins:
        the run's own first rung measures it better than the start-up probe)."""
        self.per_forward = seconds / max(1.0, forwards)

    def cost(self, forwards: float) -> float:
        """Seconds ``forwards`` sample-forwards take by the cost model (0 before it is measured)."""
        return (self.per_forward or 0.0) * forwards

    def search_seconds(self, reserve: float) -> float | None:
        """Seconds the search may take: what is left after ``reserve`` (the later phases' cost), capped by
        ``timeout``; None means no limit."""
        limit = min(self.left() - reserve, self.timeout if self.timeout is not None else math.inf)
        return None if math.isinf(limit) else limit
