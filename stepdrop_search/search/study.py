"""Durable, shareable Optuna studies: storage from a flag, race-free creation, resume checks.

* default storage: SQLite under ``studies/`` (embedded, nothing to start);
* ``--storage URL``: any SQLAlchemy URL (``postgresql+psycopg2://…``) for many machines;
* ``--storage journal:PATH``: Optuna's append-only journal file.

RDB storages run with a heartbeat, so a worker killed with SIGKILL leaves one RUNNING trial that the
next worker marks failed once its grace period has passed; finished trials are never touched.
Creation is race-free: exactly one worker creates the study (and seeds it); the others load it.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import optuna
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from stepdrop_search.errors import UserError

HEARTBEAT_S = 10
GRACE_S = 30


def make_storage(spec: str | None, study: str) -> optuna.storages.BaseStorage:
    if spec is None or spec == "":
        Path("studies").mkdir(exist_ok=True)
        spec = f"sqlite:///studies/{study}.db"
    if spec.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(spec.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if "://" not in spec:
        raise UserError(f"--storage {spec!r} is neither a database URL (sqlite:///…, postgresql+psycopg2://…) "
                        "nor journal:PATH")
    engine_kwargs = {"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna; we rely on it knowingly
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(spec, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=GRACE_S)
        except (IntegrityError, ProgrammingError):
            # Two workers creating Optuna's tables in a fresh database at the same moment: the loser
            # collides with the winner's DDL. Once the winner is done, opening the storage succeeds.
            time.sleep(0.5 * (attempt + 1))
        except OperationalError as exc:
            if "already exists" in str(exc):  # the same race as above, as SQLite reports it
                time.sleep(0.5 * (attempt + 1))
                continue
            first = str(exc).strip().splitlines()[0][:160]
            raise UserError(f"cannot open study storage {spec}: {first}") from None
        except (ImportError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0][:160]
            raise UserError(f"cannot open study storage {spec}: {first}") from None
    raise UserError(f"cannot create the study tables in {spec}; another process keeps changing them")


def open_study(name: str, storage: optuna.storages.BaseStorage, *, sampler, pruner, directions: list[str],
               config: dict) -> tuple[optuna.Study, bool]:
    """Create or load the study; returns (study, created_here). The study's ``config`` user attribute pins
    what it optimises, so re-running with other settings cannot silently mix two searches."""
    created = False
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                    directions=directions)
        created = True
    except (optuna.exceptions.DuplicatedStudyError, IntegrityError):
        # Another worker (or an earlier run) created it first: loading is the intended outcome.
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    stored = study.user_attrs.get("config")
    if stored is None:
        study.set_user_attr("config", config)
    elif stored != config:
        diff = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
        raise UserError(f"study {name!r} was created with other settings ({', '.join(diff)}); "
                        "re-run with the same settings to resume it, or pick another --study")
    if [d.name.lower() for d in study.directions] != directions:
        raise UserError(f"study {name!r} has directions {study.directions}; pick another --study")
    return study, created
