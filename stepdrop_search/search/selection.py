"""Choosing the export on noise the search never saw.

Every finalist is sampled on the *selection* seed's x_T (disjoint from the search seed and from every ``evaluate``
seed, :mod:`stepdrop_search.seeds`). Each finalist's paired proxy-FID difference to the best pool finalist gets a 95%
paired-bootstrap interval; a searched finalist is exported only when its interval lies below zero and KID agrees in
sign; otherwise the best pool finalist is exported and the log says so.
"""

from __future__ import annotations

import torch

from stepdrop_search.generation import generate
from stepdrop_search.objectives.metrics import fid_of_features, kid_of_features, paired_fid_difference, proxy_features
from stepdrop_search.progress import advance, phase
from stepdrop_search.search.candidates import Candidate, HeldOut
from stepdrop_search.search.run import Run
from stepdrop_search.seeds import selection_seed


def held_out_check(run: Run, finalists: list[Candidate]) -> Candidate | None:
    """Sample every finalist on the selection seed's x_T; fill each one's ``held_out`` with its proxy-FID, KID and
    paired difference (95% bootstrap interval) to the best pool finalist there. Returns that reference."""
    seed, samples = selection_seed(run.settings.search.seed), run.sizes.held_out
    feats = {}
    phase(run.log, f"held-out check: {len(finalists)} finalists on {samples} samples ({run.budget.describe()})", len(finalists))
    for i, cand in enumerate(finalists, 1):
        advance(run.log, f"held-out check [{i}/{len(finalists)}] {cand.name}: {samples} samples of seed {seed} "
                f"({run.budget.describe()})")
        sampled = generate(run.loaded.model, run.loaded.schedule, cand.document.policy, cand.document.solver, n=samples,
                           seed=seed, runtime=cand.document.runtime)
        if not torch.isfinite(sampled.x0).all():
            continue
        feats[cand.name] = proxy_features(sampled.x0, run.coach, device=run.device)[0]
        cand.held_out = HeldOut(seed, samples, fid_of_features(feats[cand.name], run.coach),
                                kid_of_features(feats[cand.name], run.coach, seed=seed)[0])
    scored = [c for c in finalists if c.held_out is not None]
    pool = [c for c in scored if not c.searched]
    if not pool:
        return None
    reference = min(pool, key=lambda c: c.held_out.fid)
    for cand in scored:
        diff, low, high = paired_fid_difference(feats[cand.name], feats[reference.name], run.coach, seed=seed)
        cand.held_out.reference, cand.held_out.fid_difference, cand.held_out.ci95 = reference.name, diff, (low, high)
        cand.held_out.kid_difference = cand.held_out.kid - reference.held_out.kid
    return reference


def significantly_better(cand: Candidate) -> bool:
    """Its whole 95% interval of the paired proxy-FID difference lies below zero and KID agrees in sign."""
    h = cand.held_out
    return h is not None and h.ci95 is not None and h.ci95[1] < 0 and h.kid_difference < 0


def pick_export(finalists: list[Candidate], reference: Candidate | None) -> tuple[Candidate | None, bool]:
    """(what to export, whether it is the fallback): the searched finalist that beats the best pool finalist by the
    most, among those that beat it significantly; else that pool finalist."""
    winners = [c for c in finalists if c.searched and significantly_better(c)]
    if winners:
        return min(winners, key=lambda c: c.held_out.fid_difference), False
    return reference, True
