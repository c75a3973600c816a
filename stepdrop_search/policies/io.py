"""The versioned JSON policy file (``"schema": 3``) and its one validator.

A document holds the policy (kind, params, nfe, noise schedule + hash, timesteps when static), the
solver it was made for, the runtime its numbers were measured under, and provenance (model hash, command, date,
objective values…). Loading checks everything and turns each problem into one :class:`UserError` line; saving is
atomic.

Schema 3 adds ``runtime`` (:mod:`stepdrop_search.diffusion.runtimes`): the same steps and solver sample other images
under another tool's conventions, so a number without its runtime does not say what a user gets. Files of schemas 1
and 2 record none; they were measured under what is now called ``legacy`` (x̂0 clamp, Heun's first interval
uncorrected at an even NFE) and load as such. A schema-2 reader meets a schema-3 file with "schema 3 is not
supported" rather than sampling it under the wrong conventions.

Schema 4 adds ``guidance`` (:mod:`stepdrop_search.diffusion.guidance`: classifier-free guidance's scale and noise
interval, for class-conditional models). Only a document with guidance is written as schema 4, so every other file
stays readable by schema-3 readers; a schema-3 reader meets a guided file with "schema 4 is not supported" rather than
sampling it unguided.

Schema 2 lets timesteps be real numbers in [0, T−1] (continuous time; JSON integers stay discrete steps) and
adds the ``continuous`` parameter of karras/logsnr and the ``sigmas`` kind; schema-1 files (integer timesteps, the
same fields) keep loading to the same policies. Saving always writes the newest schema.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from stepdrop_search.diffusion.guidance import Guidance
from stepdrop_search.diffusion.runtimes import DEFAULT_RUNTIME, RUNTIMES, UNRECORDED_RUNTIME, Runtime, runtime_named
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.errors import UserError
from stepdrop_search.files import write_text
from stepdrop_search.policies.base import Policy, policy_class, validate_timesteps

SCHEMA = 3
GUIDED_SCHEMA = 4  # written only for documents with guidance
READABLE_SCHEMAS = (1, 2, 3, 4)
#: A recomputed real timestep may differ from the file's in the last bits on another platform (libm, numpy);
#: the file still matches its parameters within this. Integer timesteps must match exactly.
REAL_TIMESTEP_TOLERANCE = 1e-9
REQUIRED = ("schema", "kind", "params", "nfe", "solver", "noise_schedule", "noise_schedule_hash")


@dataclass(frozen=True)
class PolicyDocument:
    """A policy, the solver that runs it, the runtime whose conventions it runs under and, for class-conditional models,
    its classifier-free guidance: one sampler, as a file."""

    policy: Policy
    solver: SolverSpec = field(default_factory=SolverSpec)
    provenance: dict = field(default_factory=dict)
    runtime: Runtime = DEFAULT_RUNTIME
    guidance: Guidance | None = None

    def under(self, runtime: Runtime) -> PolicyDocument:
        """The same steps and solver run under ``runtime``. A Heun budget spent exactly (``legacy``) becomes the runtime's
        own pattern, and measured values move to ``provenance["measured_under"]``: they were not measured here."""
        if runtime == self.runtime:
            return self
        solver = self.solver
        if solver.nfe is not None and not runtime.spends_even_heun_budgets:
            solver = replace(solver, nfe=None)
        provenance = {k: v for k, v in self.provenance.items() if k != "objective"}
        if "objective" in self.provenance:
            provenance["measured_under"] = {"runtime": self.runtime.name, "objective": self.provenance["objective"]}
        return PolicyDocument(self.policy, solver, provenance, runtime, self.guidance)

    def to_dict(self) -> dict:
        p = self.policy
        doc = {
            "schema": SCHEMA if self.guidance is None else GUIDED_SCHEMA,
            "kind": p.kind,
            "params": {} if p.kind == "explicit" else p.params(),
            "nfe": p.nfe,
            "expected_nfe": round(p.expected_nfe(), 4),
            "solver": self.solver.to_dict(),
            "runtime": self.runtime.to_dict(),
            **({"guidance": self.guidance.to_dict()} if self.guidance is not None else {}),
            "noise_schedule": p.schedule.to_dict(),
            "noise_schedule_hash": p.schedule.hash,
        }
        if p.static:
            doc["timesteps"] = p.timesteps().tolist()
        doc["provenance"] = self.provenance
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, doc, source: str = "policy") -> PolicyDocument:
        if not isinstance(doc, dict):
            raise UserError(f"{source}: a policy file must hold a JSON object, found {type(doc).__name__}")
        missing = [k for k in REQUIRED if k not in doc]
        if missing:
            raise UserError(f"{source}: missing field(s) {', '.join(missing)}")
        schema = doc["schema"]
        if type(schema) is not int or schema not in READABLE_SCHEMAS:  # true == 1 and 2.0 == 2 in Python
            raise UserError(f"{source}: schema {schema!r} is not supported (this version reads schemas "
                            f"{', '.join(map(str, READABLE_SCHEMAS))})")
        if not isinstance(doc["kind"], str):
            raise UserError(f"{source}: kind must be a string")
        kind_cls = policy_class(doc["kind"])
        schedule = NoiseSchedule.from_dict(doc["noise_schedule"])
        if doc["noise_schedule_hash"] != schedule.hash:
            raise UserError(f"{source}: noise_schedule_hash {doc['noise_schedule_hash']!r} does not match its noise_schedule "
                            f"({schedule.hash}); the file was edited or damaged")
        nfe = doc["nfe"]
        if nfe is not None and (not isinstance(nfe, int) or isinstance(nfe, bool)):
            raise UserError(f"{source}: nfe must be an integer, got {nfe!r}")
        solver_doc = doc["solver"]
        solver_nfe = solver_doc.get("nfe") if isinstance(solver_doc, dict) else None
        if not isinstance(solver_doc, dict) or not isinstance(solver_doc.get("name"), str) \
                or not isinstance(solver_doc.get("eta", 0.0), (int, float)) \
                or (solver_nfe is not None and (not isinstance(solver_nfe, int) or isinstance(solver_nfe, bool))):
            raise UserError(f"{source}: solver must be an object like {{\"name\": \"ddim\", \"eta\": 0.0}} "
                            "(Heun adds its NFE budget, \"nfe\": 10)")
        # A Heun file's NFE budget decides whether its first step is Euler: without it, 6 steps spend 11, not 10.
        solver = SolverSpec(solver_doc["name"], float(solver_doc["eta"]) if "eta" in solver_doc else None, solver_nfe,
                            solver_doc.get("coefficients"))
        provenance = doc.get("provenance", {})
        if not isinstance(provenance, dict):
            raise UserError(f"{source}: provenance must be a JSON object")
        runtime = _read_runtime(doc, schema, source)
        if solver.nfe is not None and not runtime.spends_even_heun_budgets:
            raise UserError(f"{source}: a Heun NFE budget in \"solver\" is spent exactly only under the legacy runtime; "
                            f"under {runtime.name} drop it (the grid's length decides the NFE)")

        stored = None
        if kind_cls.static:
            if "timesteps" not in doc:
                raise UserError(f"{source}: a static policy ({doc['kind']}) needs its timesteps")
            stored = validate_timesteps(doc["timesteps"], schedule.T, source)
            if schema == 1 and stored.is_floating_point():
                raise UserError(f"{source}: schema 1 timesteps are integers; real (continuous-time) timesteps need "
                                "\"schema\": 2")
            if nfe is not None and nfe != len(stored):
                raise UserError(f"{source}: nfe {nfe} does not match the {len(stored)} timesteps")
            if solver.coefficients is not None and len(solver.coefficients) != len(stored):
                raise UserError(f"{source}: {len(solver.coefficients)} solver coefficient rows for {len(stored)} timesteps "
                                "(one row per timestep)")
        params = doc["params"]
        if doc["kind"] == "explicit":
            if params not in ({}, None):
                raise UserError(f"{source}: explicit policies keep their steps in 'timesteps', params must be empty")
            params = {"steps": stored.tolist()}
        try:
            policy = kind_cls.from_params(params, nfe=nfe, schedule=schedule)
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None
        if stored is not None and not _same_timesteps(policy.timesteps(), stored):
            raise UserError(f"{source}: timesteps do not match the {policy.kind} policy's parameters; "
                            "for a hand-edited list set \"kind\": \"explicit\"")
        guidance = Guidance.from_dict(doc["guidance"], f"{source}: guidance") if "guidance" in doc else None
        if guidance is not None and schema < GUIDED_SCHEMA:
            raise UserError(f"{source}: guidance is a schema-{GUIDED_SCHEMA} field; set \"schema\": {GUIDED_SCHEMA}")
        return cls(policy, solver, provenance, runtime, guidance)


def _read_runtime(doc: dict, schema: int, source: str) -> Runtime:
    """The recorded runtime: its name (or an object with a "name"); files before schema 3 record none (``legacy``)."""
    if schema < 3:
        return UNRECORDED_RUNTIME
    recorded = doc.get("runtime")
    name = recorded.get("name") if isinstance(recorded, dict) else recorded
    if not isinstance(name, str) or name not in RUNTIMES:
        raise UserError(f"{source}: runtime must name one of {', '.join(RUNTIMES)} (as {{\"name\": \"stepdrop\"}}), "
                        f"got {recorded!r}")
    return runtime_named(name)


def _same_timesteps(computed: torch.Tensor, stored: torch.Tensor) -> bool:
    """Integer steps equal, real ones within :data:`REAL_TIMESTEP_TOLERANCE` (both sides are :func:`timestep_tensor`s)."""
    if computed.dtype != stored.dtype or computed.shape != stored.shape:
        return False
    return computed.equal(stored) if not computed.is_floating_point() else \
        bool(((computed - stored).abs() <= REAL_TIMESTEP_TOLERANCE).all())


def save_policy(path: str | os.PathLike, document: PolicyDocument) -> Path:
    return write_text(path, document.to_json())


def load_policy(path: str | os.PathLike, schedule: NoiseSchedule | None = None) -> PolicyDocument:
    """Read and validate a policy file; with ``schedule``, also require it was made for that noise schedule."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"policy file {path} not found; export one with `stepdrop-search policy export KIND --nfe N --out FILE`")
    try:
        doc = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file; a policy file is JSON") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    document = PolicyDocument.from_dict(doc, str(path))
    if schedule is not None and document.policy.schedule.hash != schedule.hash:
        raise UserError(f"{path} was made for noise schedule {document.policy.schedule.hash} "
                        f"({document.policy.schedule.kind}, T={document.policy.schedule.T}), but the model uses "
                        f"{schedule.hash} ({schedule.kind}, T={schedule.T}); pass the --model it was made for, or rebuild "
                        "the policy for this model")
    return document


def foreign_model_warning(document: PolicyDocument, weights_hash: str, source: str = "this policy") -> str | None:
    """One line when ``document`` was made on another model than the one (``weights_hash``) it is used with, else None.

    A warning, not an error: a schedule may well be transferred to another model of the same noise schedule,
    but the objective values in its provenance (FID, residual…) were measured on the model it was made for.
    """
    made_for = document.provenance.get("model_hash")
    if made_for is None or made_for == weights_hash:
        return None
    return (f"{source} was made for model {made_for}, not this one ({weights_hash}); "
            "the objective values it records do not apply to this model")


def provenance(command: str = "", model_hash: str | None = None, **extra) -> dict:
    """Standard provenance fields; ``extra`` carries objective values, seeds, search details."""
    return {"model_hash": model_hash, "command": command,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra}
