"""Which noise seeds each job may use, so a search is never judged on the noise it was searched on.

Three disjoint ranges of the one seed space that x_T and the per-sample streams are derived from:

- **evaluation** seeds 0 … 2²⁴−1: what ``evaluate --seeds S`` runs (0..S−1) and what a user passes to ``sample``;
- **search** seeds 2²⁴ + s: the noise a search scores candidates on (``optimize --seed s``);
- **selection** seeds 2²⁴ + 2²³ + s: the held-out noise on which ``optimize`` chooses what it exports.

x_T comes from torch's CPU generator, which keeps 32 bits of its seed, so every range stays below 2³¹: no two
seeds of different ranges can start from the same x_T.
"""

from __future__ import annotations

from stepdrop_search.errors import UserError

EVALUATION_SEEDS = 1 << 24
SEARCH_BASE = 1 << 24
SELECTION_BASE = SEARCH_BASE + (1 << 23)
SEARCH_SEEDS = 1 << 23  # how many search (and selection) seeds there are


def evaluation_seeds(count: int) -> list[int]:
    """Seeds 0..count−1 of an evaluation, refused when there are more than the evaluation range holds."""
    if not 1 <= count <= EVALUATION_SEEDS:
        raise UserError(f"--seeds must be between 1 and {EVALUATION_SEEDS}")
    return list(range(count))


def _checked(seed: int) -> int:
    if not 0 <= seed < SEARCH_SEEDS:
        raise UserError(f"--seed of a search must be between 0 and {SEARCH_SEEDS - 1}")
    return seed


def search_seed(seed: int) -> int:
    """The noise seed a search with ``--seed seed`` scores its candidates on."""
    return SEARCH_BASE + _checked(seed)


def selection_seed(seed: int) -> int:
    """The held-out noise seed on which a search with ``--seed seed`` picks its export."""
    return SELECTION_BASE + _checked(seed)
