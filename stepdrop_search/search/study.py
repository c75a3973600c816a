"""Durable, shareable Optuna studies: storage from a flag, race-free creation, resume checks.

* default storage: SQLite under ``studies/`` (embedded, nothing to start);
* ``--storage URL``: any SQLAlchemy URL (``postgresql://user:password@host/db``) for many machines;
* ``--storage journal:PATH``: Optuna's append-only journal file.

``make_storage`` opens the storage completely (URL, driver, server, credentials, tables), so a bad
``--storage`` is refused in one line before the search's expensive setup, never after it.
RDB storages run with a heartbeat, so a worker killed with SIGKILL leaves one RUNNING trial that the
next worker marks failed once its grace period has passed; finished trials are never touched.
Creation is race-free: exactly one worker creates the study (and seeds it); the others load it.
"""

from __future__ import annotations

import re
import socket
import time
import warnings
from pathlib import Path

import optuna
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, SQLAlchemyError

from stepdrop_search.errors import UserError

HEARTBEAT_S = 10
GRACE_S = 30
CONNECT_TIMEOUT_S = 10
# Ports the database servers listen on when the URL names none (libpq and MySQL clients assume the same).
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}
URL_FORMS = "sqlite:///PATH, postgresql://USER:PASSWORD@HOST:PORT/DB (or another SQLAlchemy URL) or journal:PATH"


def shown(spec: str) -> str:
    """The storage as messages and policy files show it: as the user spelled it, but with the password
    (``user:PASSWORD@``, split where SQLAlchemy splits it, or libpq's ``?password=``) replaced by ``***``."""
    spec = re.sub(r"^([\w+]+://[^:/]*:)[^@]*@", r"\1***@", spec)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", spec)


def make_storage(spec: str | None, study: str) -> optuna.storages.BaseStorage:
    """Open the study storage ``spec`` (None: ``studies/<study>.db``), or raise a UserError naming it."""
    if spec is None or spec == "":
        try:
            Path("studies").mkdir(exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create studies/ for the default study storage ({exc.strerror}); "
                            "run from a writable folder or pass --storage") from None
        spec = f"sqlite:///studies/{study}.db"
    if spec.startswith("journal:"):
        return journal_storage(spec)
    url = checked_url(spec)
    if url.host:
        probe_server(url, spec)
    return rdb_storage(url, spec)


def journal_storage(spec: str) -> optuna.storages.JournalStorage:
    from optuna.storages.journal import JournalFileBackend

    path = Path(spec.removeprefix("journal:"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except OSError as exc:
        raise UserError(f"cannot open study storage {spec}: {exc.strerror} ({exc.filename}); "
                        "pass a journal file in a writable folder") from None


def checked_url(spec: str) -> URL:
    """Parse ``spec`` and import its dialect and driver: the mistakes that need no server."""
    try:
        url = make_url(spec)
    except ArgumentError:
        raise UserError(f"--storage {shown(spec)!r} is neither a database URL nor journal:PATH; write {URL_FORMS}") from None
    try:
        url.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise UserError(f"--storage {shown(spec)}: SQLAlchemy knows no database {url.drivername!r}; write {URL_FORMS}") from None
    except ImportError as exc:
        hint = "write postgresql://… to use psycopg 3, which stepdrop-search installs, or install the driver" \
            if url.get_backend_name() == "postgresql" else "install it, or name an installed driver (dialect+driver://…)"
        raise UserError(f"--storage {shown(spec)} needs the Python module {exc.name or exc}, which is not installed; {hint}") from None
    return url


def probe_server(url: URL, spec: str) -> None:
    """Connect to the server's port first: a refused or unanswered connection then reads as what it is
    (a driver may report it less plainly, and libpq waits forever on a host that drops packets)."""
    port = url.port or DEFAULT_PORTS.get(url.get_backend_name())
    if port is None:
        return
    try:
        socket.create_connection((url.host, port), timeout=CONNECT_TIMEOUT_S).close()
        return
    except socket.gaierror:
        problem = f"unknown host {url.host!r}"
    except ConnectionRefusedError:
        problem = f"connection refused at {url.host}:{port}"
    except TimeoutError:
        problem = f"no answer from {url.host}:{port} within {CONNECT_TIMEOUT_S} s"
    except OSError as exc:
        problem = f"{exc.strerror or exc} at {url.host}:{port}"
    raise UserError(f"cannot reach the database server of --storage {shown(spec)}: {problem}; "
                    "start the server or fix the host and port in the URL")


def rdb_storage(url: URL, spec: str) -> optuna.storages.RDBStorage:
    sqlite = url.get_backend_name() == "sqlite"
    engine_kwargs = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    hint = f"check that the folder {Path(url.database or '.').parent} exists and is writable" if sqlite else \
        "check that the server runs and accepts the URL's user, password and database"
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna; we rely on it knowingly
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(spec, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=GRACE_S)
        except SQLAlchemyError as exc:
            reason = first_line(exc.orig if isinstance(exc, DBAPIError) else exc)
            if not (isinstance(exc, IntegrityError) or "already exists" in reason):
                raise UserError(f"cannot open study storage {shown(spec)}: {reason}; {hint}") from None
            # Two workers creating Optuna's tables in a fresh database at the same moment: the loser
            # collides with the winner's DDL. Once the winner is done, opening the storage succeeds.
            time.sleep(0.5 * (attempt + 1))
    raise UserError(f"cannot create the study tables in {shown(spec)} ({reason}); another process keeps changing them")


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def check_resumable(name: str, storage: optuna.storages.BaseStorage, *, directions: list[str], config: dict) -> None:
    """Refuse a stored study ``name`` that optimises something else, without creating anything: run
    before the search's expensive setup, so a mismatched resume fails at once rather than after it."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return  # a new study: open_study creates it
    stored_directions = [d.name.lower() for d in storage.get_study_directions(study_id)]
    refuse_other_settings(name, storage.get_study_user_attrs(study_id).get("config"), stored_directions, config, directions)


def refuse_other_settings(name: str, stored: dict | None, stored_directions: list[str], config: dict,
                          directions: list[str]) -> None:
    if stored is not None and stored != config:
        diff = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
        raise UserError(f"study {name!r} was created with other settings ({', '.join(diff)}); "
                        "re-run with the same settings to resume it, or pick another --study")
    if stored_directions != directions:
        raise UserError(f"study {name!r} has directions {stored_directions}; pick another --study")


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
    refuse_other_settings(name, stored, [d.name.lower() for d in study.directions], config, directions)
    return study, created
