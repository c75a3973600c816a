"""Writing what a run found: the export (atomically, with its provenance), the selection's leaderboard beside it and,
on request, every pool row."""

from __future__ import annotations

from pathlib import Path

from stepdrop_search.files import write_json, write_text
from stepdrop_search.generation import document_nfe
from stepdrop_search.policies import save_policy
from stepdrop_search.policies.io import provenance
from stepdrop_search.search.candidates import Candidate
from stepdrop_search.search.run import Run
from stepdrop_search.search.selection import Leaderboard
from stepdrop_search.search.study import shown
from stepdrop_search.seeds import search_seed


def public_flags(run: Run) -> dict:
    """The run's settings as flags, the storage URL without its password."""
    flags = run.settings.flags() | {"search_solvers": list(run.search_solvers)}
    storage = run.settings.search.storage
    if storage:
        flags |= {"storage": shown(storage), "command": flags["command"].replace(storage, shown(storage))}
    return flags


def export_path(run: Run, cand: Candidate, index: int = 0) -> Path:
    """``--out``, or ``policies/best-KIND-SOLVER-nfeN[-RUNTIME].json`` for the run's NFE N, whatever the export spends
    below it (a Pareto set: ``policies/pareto-STUDY-I-nfeN`` for each member's N)."""
    settings = run.settings
    if settings.search.multi_objective:
        nfe = round(document_nfe(cand.document, expected=False))
        return Path(f"policies/pareto-{settings.study_name}-{index}-nfe{nfe}.json")
    nfe = settings.search.nfe
    if settings.output.out:
        return Path(settings.output.out)
    suffix = "" if settings.model.runtime == "stepdrop" else f"-{settings.model.runtime}"
    return Path(f"policies/best-{settings.search.kind}-{settings.search.solver_label}-nfe{nfe}{suffix}.json")


def selection_record(board: Leaderboard) -> dict:
    """What a policy file keeps of the selection: how the race went, the leader, the quality-vs-NFE front."""
    return {"seed": board.seed, "rounds": board.rounds, "stopped": board.stopped, "finalists": len(board.rows),
            "leader": board.leader.name, "verdict": board.verdict(),
            "front": [{"name": c.name, "nfe": c.held_out.nfe, "judge_fid": c.held_out.judge_fid} for c in board.front()]}


def export(run: Run, cand: Candidate, board: Leaderboard | None = None, *, index: int = 0) -> Path:
    """Write ``cand`` atomically with its provenance: the coach's scores in the search, its selection on the judge,
    the settings."""
    settings, flags = run.settings, public_flags(run)
    prov = provenance(flags["command"], run.loaded.weights_hash, objective={
        **cand.objective_record(), "search_seed": search_seed(settings.search.seed),
        "residual_weight": settings.search.residual_weight, "teacher": settings.search.teacher,
        "held_out": cand.held_out.to_dict() if cand.held_out else None},
        search={"method": settings.search.method, "winner": cand.name, "source": cand.source,
                **({"selection": selection_record(board)} if board else {}),
                **({"made_by": cand.made_by} if cand.made_by else {}),
                "study": settings.study_name if run.study is not None else None,
                "storage": flags["storage"] or "sqlite (studies/)", "trials": run.trials,
                "sampler": settings.search.sampler, "kind": settings.search.kind,
                "solvers_searched": list(run.search_solvers or settings.pool_solvers()),
                "wall_time_s": round(run.budget.elapsed(), 1), "config": flags})
    path = export_path(run, cand, index)
    saved = save_policy(path, run.document(cand.document.policy, cand.document.solver, prov, cand.document.guidance))
    run.log(f"exported {cand.name} → {path}")
    return saved


def write_leaderboard(run: Run, board: Leaderboard) -> list[Path]:
    """The selection's leaderboard beside the export, as Markdown and JSON (``best….leaderboard.md``, ``.json``)."""
    stem = export_path(run, board.export)
    return [write_text(stem.with_suffix(".leaderboard.md"), board.markdown()),
            write_json(stem.with_suffix(".leaderboard.json"), board.to_dict())]


def save_pool(run: Run) -> None:
    """Every pool row as a policy file in ``--save-pool`` (``SOLVER_SCHEDULE-nfeN.json``, with ``+cfgW`` or
    ``+cfgW@LO-HI`` after the schedule for a guided row), with its search scores:
    ``evaluate --policy DIR`` then measures the export against the whole pool on evaluation seeds."""
    settings = run.settings
    folder = Path(settings.output.save_pool)
    for cand in run.pool + run.cheaper:
        prov = provenance(public_flags(run)["command"], run.loaded.weights_hash, objective={
            **cand.objective_record(), "search_seed": search_seed(settings.search.seed)},
            search={"pool_member": cand.name, "held_out": cand.held_out.to_dict() if cand.held_out else None,
                    **({"made_by": cand.made_by} if cand.made_by else {})})
        nfe = cand.nfe_budget or settings.search.nfe
        stem = cand.name.removesuffix(f"@{nfe}").replace("/", "_")  # the NFE goes at the end; a σ interval's "@" stays
        save_policy(folder / f"{stem}-nfe{nfe}.json",
                    run.document(cand.document.policy, cand.document.solver, prov, cand.document.guidance))
    run.log(f"wrote the {len(run.pool) + len(run.cheaper)} pool rows to {folder}/")
