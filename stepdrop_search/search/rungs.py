"""The rules that decide which candidates go further, as pure functions of their scores (tested without a model)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from stepdrop_search.search.candidates import Candidate, ranked

#: The selection's largest round, at least. At 1024 samples the NFE-10 check once exported DPM-Solver++(2M) SDE on
#: DP-OSS steps (held-out 3.27), which the first 2048 samples of the same seed put 1.04 behind Heun on learned steps and
#: the evaluation seeds 1.12 ± 0.47 behind: a stochastic sampler's difference to a deterministic one does not cancel
#: under common x_T, and 1024 samples left the class mix to decide (README, "Learned steps and the published DPs").
HELD_OUT_MIN = 2048
#: Network evaluations per sample that rung 0 spends on each candidate, about: rung 0 takes 1280/NFE samples.
RUNG0_FORWARDS = 1280
#: Pool rows promoted to rung 1 besides each solver's best.
POOL_PROMOTED = 6
#: How many of the pool's rung-1 best solvers the study searches over when ``--solver auto``.
SEARCHED_SOLVERS = 3


#: The pool is also built at these fractions of the run's NFE (NFE is a ceiling: a cheaper row as good wins).
CHEAPER = (0.4, 0.6, 0.8)


def pool_nfes(nfe: int) -> tuple[int, ...]:
    """The NFEs the pool is built at: the run's, then the cheaper ones (:data:`CHEAPER`, at least 3), largest first."""
    return (nfe, *sorted({round(nfe * f) for f in CHEAPER} - {nfe} - set(range(3)), reverse=True))


@dataclass(frozen=True)
class RungSizes:
    """Samples of rung 0 (the pool, and each trial's comparison), rung 1, and the selection's largest round."""

    rung0: int
    rung1: int
    held_out: int


def rung_sizes(nfe: int) -> RungSizes:
    """The sample counts for a search at ``nfe``: rung 0 the power of two nearest below 1280/NFE, within 64..512
    (proxy-FID at 64 samples ranks near-equal samplers poorly, so a cheap NFE buys more samples, not only more
    trials), rung 1 four times that (at most 1024), the selection's largest round twice rung 1 and at least 2048. They depend on
    the NFE only, so a search gives the same result on any machine."""
    rung0 = 64
    while rung0 * 2 <= min(512, RUNG0_FORWARDS / nfe):
        rung0 *= 2
    rung1 = min(4 * rung0, 1024)
    return RungSizes(rung0, rung1, max(HELD_OUT_MIN, 2 * rung1))


def sizes_as_asked(auto: RungSizes, samples: int | None, promote_samples: int | None,
                   held_out: int | None) -> RungSizes:
    """``auto`` with each size the user gave in its place (rung 1 never below rung 0)."""
    rung0 = samples if samples is not None else auto.rung0
    rung1 = promote_samples if promote_samples is not None else auto.rung1
    return RungSizes(rung0, max(rung1, rung0), held_out if held_out is not None else auto.held_out)


def finite(candidates: list[Candidate], samples: int) -> list[Candidate]:
    """``candidates`` that scored a finite objective at rung ``samples``, best first."""
    return [c for c in ranked(candidates, samples) if math.isfinite(c.value(samples))]


def pool_promoted(pool: list[Candidate], samples: int) -> list[Candidate]:
    """The pool's part of rung 1: the ``POOL_PROMOTED`` best rung-0 rows and each solver's best.

    Each solver's best goes on because proxy-FID's finite-sample bias (FID_N ≈ FID_∞ + k/N) has a solver-dependent k:
    at 64 samples Heun's NFE-10 row scores 7.5 against 4.5–5.3 for the multistep solvers, at 256 samples it is the
    best of them (3.8), as at 2000 (README). Within a solver rung 0 compares like with like."""
    order = finite(pool, samples)
    best_per_solver = list({c.document.solver.name: c for c in reversed(order)}.values())
    chosen = order[:POOL_PROMOTED]
    return chosen + [c for c in ranked(best_per_solver, samples) if c not in chosen]


def best_solvers(rung1: list[Candidate], samples: int) -> tuple[str, ...]:
    """The ``SEARCHED_SOLVERS`` solvers with the best rung-1 rows, best first."""
    names = (c.document.solver.name for c in ranked(rung1, samples) if math.isfinite(c.value()))
    return tuple(dict.fromkeys(names))[:SEARCHED_SOLVERS]
