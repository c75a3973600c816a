"""Reading the studies ``optimize`` left behind: which there are, what each one's trials proposed and scored, and a
chosen trial as a policy file — without re-typing the command that made them.

Only existing storages are opened (a SQLite path that does not exist is refused rather than created empty), and
nothing here writes to a study. Every trial of ``optimize`` keeps the policy it proposed (``user_attrs["policy"]``),
so a trial exports exactly what was scored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import optuna
from sqlalchemy.engine import make_url

from stepdrop_search.errors import UserError
from stepdrop_search.policies import PolicyDocument
from stepdrop_search.search.study import make_storage, shown

STATES = optuna.trial.TrialState


@dataclass
class StudyRow:
    storage: str  # as shown (no password)
    name: str
    directions: list[str]
    complete: int
    pruned: int
    failed: int
    best_value: float | None
    best_trial: int | None


@dataclass
class TrialRow:
    number: int
    state: str
    values: list[float] | None
    solver: str | None
    steps: list[float] | None
    source: str | None  # the pool candidate a seeded trial reproduces


def storage_specs(storage: str | None) -> list[str]:
    """``storage``, or every default study file under ``studies/`` (one SQLite file per study)."""
    if storage:
        return [storage]
    files = sorted(Path("studies").glob("*.db"))
    if not files:
        raise UserError("no studies/ folder with study files here; run from where optimize ran or pass --storage")
    return [f"sqlite:///{f}" for f in files]


def open_existing(spec: str, study: str = "") -> optuna.storages.BaseStorage:
    """The storage ``spec``, refused in one line when it is a SQLite or journal file that does not exist."""
    path = spec.removeprefix("journal:") if spec.startswith("journal:") else None
    if path is None and spec.startswith("sqlite"):
        path = make_url(spec).database
    if path is not None and not Path(path).is_file():
        raise UserError(f"--storage {shown(spec)}: no such file {path}; name the file optimize wrote its study to")
    return make_storage(spec, study)


def list_studies(storage: str | None = None) -> list[StudyRow]:
    rows = []
    for spec in storage_specs(storage):
        store = open_existing(spec)
        for summary in optuna.get_all_study_summaries(store, include_best_trial=False):
            study = optuna.load_study(study_name=summary.study_name, storage=store)
            trials = study.get_trials(deepcopy=False)
            count = {state: sum(t.state == state for t in trials) for state in (STATES.COMPLETE, STATES.PRUNED, STATES.FAIL)}
            best = None if len(study.directions) > 1 or not count[STATES.COMPLETE] else study.best_trial
            rows.append(StudyRow(shown(spec), summary.study_name, [d.name.lower() for d in study.directions],
                                 count[STATES.COMPLETE], count[STATES.PRUNED], count[STATES.FAIL],
                                 best.value if best else None, best.number if best else None))
    return rows


def load_existing_study(name: str, storage: str | None) -> tuple[optuna.Study, str, optuna.storages.BaseStorage]:
    """Study ``name`` from ``storage`` (default: ``studies/<name>.db``), with the storage's spec and the storage it
    opened; refused in one line when it is not there."""
    spec = storage or f"sqlite:///studies/{name}.db"
    store = open_existing(spec, name)
    try:
        return optuna.load_study(study_name=name, storage=store), spec, store
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
        raise UserError(f"no study {name!r} in {shown(spec)}; it holds {', '.join(names) or 'none'}") from None


def study_trials(name: str, storage: str | None = None) -> list[TrialRow]:
    """Every trial of the study, best first (complete ones by value, then the others by number)."""
    study, *_ = load_existing_study(name, storage)
    rows = []
    for t in study.get_trials(deepcopy=False):
        policy = t.user_attrs.get("policy") or {}
        rows.append(TrialRow(t.number, t.state.name.lower(), list(t.values) if t.values else None,
                             (policy.get("solver") or {}).get("name"), policy.get("timesteps"), t.user_attrs.get("source")))
    return sorted(rows, key=lambda r: (r.values is None, r.values or [], r.number))


def trial_document(name: str, trial: str, storage: str | None = None) -> PolicyDocument:
    """The policy trial ``trial`` (a number, or ``best``) proposed, with where it came from in its provenance."""
    from stepdrop_search.policies.io import provenance

    study, spec, _ = load_existing_study(name, storage)
    if trial == "best":
        if len(study.directions) > 1:
            raise UserError(f"study {name!r} has several objectives; name a trial of its Pareto set (studies show)")
        try:
            chosen = study.best_trial
        except ValueError:
            raise UserError(f"study {name!r} has no complete trial yet") from None
    else:
        if not trial.isdigit():
            raise UserError(f"--trial {trial!r} is neither a trial number nor best")
        matches = [t for t in study.get_trials(deepcopy=False) if t.number == int(trial)]
        if not matches:
            raise UserError(f"study {name!r} has no trial {trial}; it has {len(study.trials)} (numbers 0..{len(study.trials) - 1})")
        chosen = matches[0]
    if "policy" not in chosen.user_attrs:
        why = chosen.user_attrs.get("invalid", chosen.state.name.lower())
        raise UserError(f"trial {chosen.number} of {name!r} proposed no valid policy ({why}); pick another trial")
    doc = PolicyDocument.from_dict(chosen.user_attrs["policy"], f"trial {chosen.number} of {name}")
    model_hash = (study.user_attrs.get("config") or {}).get("model_hash")
    prov = provenance(model_hash=model_hash, objective={"values": chosen.values, "scores": chosen.user_attrs.get("scores")},
                      search={"study": name, "storage": shown(spec), "trial": chosen.number, "state": chosen.state.name.lower()})
    return replace(doc, provenance=prov)  # the runtime (and guidance) the trial was scored under


def dashboard(name: str, storage: str | None = None, host: str = "127.0.0.1", port: int = 0):
    """optuna-dashboard for study ``name``, served on ``host``:``port`` (0: a free port) from a WSGI server the caller
    runs (``serve_forever``) and closes; returns (server, the study's URL). Checked before it binds: the study exists
    and optuna-dashboard is installed (``pip install 'stepdrop-search[dashboard]'``)."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    study, _, store = load_existing_study(name, storage)
    try:
        import optuna_dashboard
    except ImportError:
        raise UserError("the dashboard needs optuna-dashboard: pip install optuna-dashboard "
                        "(or the project's [dashboard] extra)") from None

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args) -> None:  # one line per request would bury the URL
            pass

    try:
        server = make_server(host, port, optuna_dashboard.wsgi(store), handler_class=QuietHandler)
    except OSError as exc:
        raise UserError(f"cannot serve the dashboard on {host}:{port} ({exc.strerror or exc}); pick another --port") from None
    return server, f"http://{host}:{server.server_port}/dashboard/studies/{store.get_study_id_from_name(name)}"
