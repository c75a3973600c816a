"""What ``sample`` and ``policy show/export`` run: a policy named on the command line — a policy file or a built-in
kind with ``--param``, ``--nfe``, ``--solver``, ``--eta`` and ``--runtime`` — as one :class:`PolicyDocument`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from stepdrop_search.diffusion.guidance import Guidance, check_conditioning
from stepdrop_search.diffusion.runtimes import runtime_named
from stepdrop_search.diffusion.solvers import SolverSpec, eta_solvers, spec_for_nfe
from stepdrop_search.errors import UserError
from stepdrop_search.policies import POLICIES, load_policy, policy_class
from stepdrop_search.policies.io import PolicyDocument, foreign_model_warning


def parse_params(items: list[str] | None) -> dict:
    """--param key=value (repeatable); values are read as JSON (numbers, lists, true/false), else text."""
    params = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--param {item!r} is not key=value")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def resolve_policy(spec: str, nfe: int | None, params: list[str] | None, solver: str | None, eta: float | None,
                   loaded, runtime: str | None = None, *, warn: Callable[[str], None] = lambda m: None,
                   guidance: str | None = None) -> PolicyDocument:
    """A policy file (validated against the model's schedule; ``warn`` hears if it was made on another model), under
    its recorded runtime unless ``runtime`` names another, or a built-in KIND built for that schedule under
    ``runtime`` (default ``stepdrop``). ``guidance`` (``W`` or ``W:LO:HI``) replaces a file's own; either is refused
    for an unconditional model before any sampling."""
    document = _resolve(spec, nfe, params, solver, eta, loaded, runtime, warn)
    if guidance is not None:
        document = replace(document, guidance=Guidance.parse(guidance))
    check_guidance_fits(document, loaded)
    return document


def check_guidance_fits(document: PolicyDocument, loaded) -> None:
    """A guided document needs a class-conditional model: said in one line, before any work."""
    check_conditioning(loaded.model, document.guidance, source=loaded.source)


def _resolve(spec: str, nfe: int | None, params: list[str] | None, solver: str | None, eta: float | None,
             loaded, runtime: str | None, warn: Callable[[str], None]) -> PolicyDocument:

    wanted = runtime_named(runtime) if runtime is not None else None  # a bad name is refused before anything loads
    if wanted is not None:
        wanted.check_family(loaded.schedule.is_flow)
    if spec not in POLICIES and (spec.endswith(".json") or Path(spec).exists()):
        doc = load_policy(spec, loaded.schedule)
        if warning := foreign_model_warning(doc, loaded.weights_hash, spec):
            warn(warning)
        if nfe is not None and nfe != doc.policy.nfe:
            raise UserError(f"{spec} has nfe {doc.policy.nfe}; drop --nfe or export a new policy")
        if params:
            raise UserError("--param applies to a policy KIND, not to a policy file")
        if wanted is not None and wanted != doc.runtime:
            warn(f"{spec} was measured under runtime {doc.runtime.name}; running it under {wanted.name}, where its "
                 "recorded numbers do not apply")
            doc = doc.under(wanted)
        if eta is None and solver in (None, doc.solver.name):  # the file's η belongs to the file's solver only
            return doc
        return replace(doc, solver=solver_spec(solver or doc.solver.name, eta))
    wanted = wanted or runtime_named(None)
    run_solver = solver_spec(solver or "ddim", eta, nfe, wanted)
    wanted.check_solver(run_solver.name, run_solver.eta)
    steps = run_solver.solver.steps_for_nfe(nfe) if nfe is not None else None  # --nfe counts evaluations, not steps
    policy = policy_class(spec).from_params(parse_params(params), nfe=steps, schedule=loaded.schedule)
    return PolicyDocument(policy, run_solver, runtime=wanted)


def default_nfe(policy: str) -> int | None:
    """``sample``'s NFE when none is given: 50, except for a policy file or a kind whose step list is its NFE."""
    return None if policy not in POLICIES or policy in ("explicit", "sigmas") else 50


def solver_spec(name: str, eta: float | None, nfe: int | None = None, runtime=None):
    """--solver/--eta as a SolverSpec (with the NFE budget for Heun under a runtime that spends even budgets exactly);
    an --eta given to a solver without η is refused, not ignored, and no --eta means the solver's own default η (0 for
    ddim, 1 for dpmpp-2m-sde)."""
    if eta is not None and name not in eta_solvers():
        raise UserError(f"--eta applies to {', '.join(eta_solvers())} only; solver {name} has no η (drop --eta)")
    return spec_for_nfe(name, nfe, eta, runtime)[0] if nfe is not None else SolverSpec(name, eta)
