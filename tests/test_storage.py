"""Study storage: a bad --storage is refused in one line before any work, the plain postgresql:// URL
works, the default is SQLite under studies/, and colliding table creation is retried."""

import importlib.util
import socket
import subprocess
import sys

import optuna
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from stepdrop_search.errors import UserError
from stepdrop_search.search.optimize import optimize
from stepdrop_search.search.settings import OptimizeSettings
from stepdrop_search.search.study import make_storage, open_study, shown


@pytest.fixture(autouse=True)
def private_cache_and_workdir(tmp_path, monkeypatch):
    """Teacher cache and default outputs (policies/, studies/) stay in the test's own directory."""
    monkeypatch.setenv("STEPDROP_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_default_study(storage: optuna.storages.BaseStorage) -> tuple[optuna.Study, bool]:
    return open_study("s", storage, sampler=None, pruner=None, directions=["minimize"], config={"nfe": 5})


@pytest.mark.parametrize(("spec", "says"), [
    ("notadb://x", "knows no database 'notadb'"),
    ("not a url", "neither a database URL nor journal:PATH"),
    ("postgresql+pg8000://u:secret@db.example/studies", "needs the Python module pg8000"),
    ("postgresql://u:secret@127.0.0.1:{port}/studies", "connection refused at 127.0.0.1:{port}"),
    ("sqlite:///{tmp}/missing/s.db", "folder {tmp}/missing exists and is writable"),
    ("journal:{tmp}/a-file/s.log", "{tmp}/a-file"),
])
def test_bad_storage_is_one_line_naming_the_url_without_its_password(spec, says, tmp_path):
    if "pg8000" in spec and importlib.util.find_spec("pg8000"):
        pytest.skip("pg8000 is installed here")
    (tmp_path / "a-file").write_text("not a folder")
    port = closed_port()
    spec, says = (text.format(port=port, tmp=tmp_path) for text in (spec, says))
    with pytest.raises(UserError) as exc:
        make_storage(spec, "s")
    message = str(exc.value)
    assert says in message and shown(spec) in message
    assert "\n" not in message and "secret" not in message


def test_shown_storage_hides_the_password_where_sqlalchemy_reads_one():
    assert shown("postgresql://u:pa:ss@host/db") == "postgresql://u:***@host/db"
    assert shown("postgresql://u@host/db?sslmode=require&password=pw&x=1") == "postgresql://u@host/db?sslmode=require&password=***&x=1"
    assert shown("sqlite:///studies/a:b@c.db") == "sqlite:///studies/a:b@c.db"  # a path, not a password
    assert shown("journal:studies/s.log") == "journal:studies/s.log"


@pytest.mark.parametrize("storage", ["notadb://x", "postgresql://u:secret@127.0.0.1:{port}/studies"])
def test_optimize_refuses_a_bad_storage_before_the_teacher_and_dp(storage, tiny_checkpoint, tiny_features, tmp_path):
    storage = storage.format(port=closed_port())
    result = subprocess.run([sys.executable, "-m", "stepdrop_search", "optimize", "--model", str(tiny_checkpoint),
                             "--features", str(tiny_features), "--nfe", "5", "--method", "all", "--samples", "16",
                             "--teacher", "ddim-50", "--dp-grid", "20", "--dp-samples", "4", "--storage", storage],
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert shown(storage) in result.stderr and "secret" not in result.stderr
    assert not list((tmp_path / "cache").glob("teacher-*"))  # the objective's teacher never ran (nor the DP after it)
    assert not (tmp_path / "policies").exists()


def test_default_storage_is_sqlite_under_studies_in_the_working_directory(tmp_path):
    storage = make_storage(None, "s")
    assert (tmp_path / "studies" / "s.db").is_file()
    assert open_default_study(storage)[1] and not open_default_study(make_storage(None, "s"))[1]


def test_colliding_table_creation_is_retried_and_other_errors_are_not(monkeypatch):
    real, calls = optuna.storages.RDBStorage, []

    def flaky(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:  # PostgreSQL: the other worker's CREATE TABLE won
            raise IntegrityError("CREATE TABLE studies", {}, Exception("duplicate key value violates unique constraint"))
        if len(calls) == 2:  # SQLite's form of the same race
            raise OperationalError("CREATE TABLE studies", {}, Exception("table studies already exists"))
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", flaky)
    monkeypatch.setattr("time.sleep", lambda s: None)
    assert isinstance(make_storage("sqlite:///race.db", "s"), real) and len(calls) == 3

    def broken(url, **kwargs):
        calls.append(url)
        raise OperationalError("SELECT 1", {}, Exception("disk I/O error"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    calls.clear()
    with pytest.raises(UserError, match="disk I/O error"):
        make_storage("sqlite:///race.db", "s")
    assert len(calls) == 1


def test_plain_postgresql_url_opens_the_study_with_psycopg_3(postgres):
    storage = make_storage(postgres, "s")
    assert storage.engine.dialect.driver == "psycopg"
    assert open_default_study(storage)[1] and not open_default_study(make_storage(postgres, "s"))[1]


def test_postgresql_refusing_the_user_or_database_is_one_line_without_the_password(postgres):
    wrong_user = postgres.replace("postgres@", "nobody:secret@")
    with pytest.raises(UserError, match='role "nobody" does not exist') as exc:
        make_storage(wrong_user, "s")
    assert "secret" not in str(exc.value) and shown(wrong_user) in str(exc.value)
    with pytest.raises(UserError, match='database "absent" does not exist'):
        make_storage(postgres.removesuffix("/studies") + "/absent", "s")


def test_exported_policy_records_the_storage_without_its_password(postgres, tiny_checkpoint, tiny_features, tmp_path):
    storage = postgres.replace("postgres@", "postgres:secret@")  # the test server trusts any password
    out = tmp_path / "best.json"
    optimize(OptimizeSettings.from_flags(nfe=5, method="optuna", model=str(tiny_checkpoint), features=str(tiny_features), samples=16,
                            promote_samples=16, held_out_samples=16, teacher="ddim-50", trials=1, storage=storage, out=str(out),
                            command=f"stepdrop-search optimize --storage {storage}"))
    exported = out.read_text()
    assert "secret" not in exported
    assert exported.count(shown(storage)) == 4  # the command and search.storage, and both again in search.config
