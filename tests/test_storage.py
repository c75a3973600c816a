"""Study storage: the plain postgresql:// URL works."""

import optuna
import pytest

from stepdrop_search.search.study import make_storage, open_study


@pytest.fixture(autouse=True)
def private_cache_and_workdir(tmp_path, monkeypatch):
    """Teacher cache and default outputs (policies/, studies/) stay in the test's own directory."""
    monkeypatch.setenv("STEPDROP_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def open_default_study(storage: optuna.storages.BaseStorage) -> tuple[optuna.Study, bool]:
    return open_study("s", storage, sampler=None, pruner=None, directions=["minimize"], config={"nfe": 5})


def test_plain_postgresql_url_opens_the_study_with_psycopg_3(postgres):
    storage = make_storage(postgres, "s")
    assert storage.engine.dialect.driver == "psycopg"
    assert open_default_study(storage)[1] and not open_default_study(make_storage(postgres, "s"))[1]
