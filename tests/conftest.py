"""Shared fixtures: a tiny model trained for a few seconds on synthetic shapes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from stepdrop_search.train import TrainConfig, train

# Test models are tiny: one intra-op thread is as fast, and it cannot stall on a busy machine
# (two spinning OpenMP threads per process oversubscribe 2 cores badly). Subprocesses inherit it.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
# Tests read the CLI's piped output, which is drawn full width unless COLUMNS says otherwise; pytest-xdist's workers
# start with COLUMNS=80, which would cut its tables there. (The CLI's consoles are built when it is first imported,
# after this.)
os.environ.pop("COLUMNS", None)


REPO = Path(__file__).resolve().parent.parent
# Folders where the CLI writes by default (relative to the working directory) and where only real results belong.
GUARDED = ("policies", "studies")


def _files_under(folders) -> dict[Path, tuple[int, int]]:
    return {path: (path.stat().st_mtime_ns, path.stat().st_size)
            for folder in folders for path in (REPO / folder).rglob("*") if path.is_file()}


@pytest.fixture(scope="session", autouse=True)
def repo_outputs_untouched():
    """Fails the run loudly if any test added or changed a file in the repo's policies/ or studies/
    (a test artefact there once shipped as a real search result)."""
    before = _files_under(GUARDED)
    yield
    after = _files_under(GUARDED)
    touched = sorted(str(path.relative_to(REPO)) for path in after if before.get(path) != after[path])
    if touched:
        pytest.fail(f"tests wrote into the repository: {', '.join(touched)}; remove them and keep test outputs "
                    "under tmp_path", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """The project's cache (teachers, torch.compile's artefacts) in a session temp folder, never in ~/.cache; a test
    that needs its own sets STEPDROP_CACHE itself."""
    saved = {key: os.environ.get(key) for key in ("STEPDROP_CACHE", "TORCHINDUCTOR_CACHE_DIR")}
    os.environ["STEPDROP_CACHE"] = str(tmp_path_factory.mktemp("stepdrop-cache"))
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def run_in_tmp_path(tmp_path, monkeypatch):
    """Each test runs with its tmp_path as the working directory, so default outputs (policies/…, studies/…,
    samples.png, results/…) of library calls, CLI commands and subprocesses land there, never in the repo."""
    monkeypatch.chdir(tmp_path)


def pytest_collection_modifyitems(config, items):
    """The files of tests marked ``slow`` (minutes each) first, the rest in their order: xdist hands whole files to its
    workers in this order, and a long test started last would leave the other workers idle while it runs."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


def tiny_config(out_dir, **overrides) -> TrainConfig:
    settings = dict(preset="tiny", dataset="synthetic", steps=40, batch_size=32, checkpoint_every=20,
                    out_dir=str(out_dir), device="cpu")
    return TrainConfig(**(settings | overrides))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path of a training checkpoint of the tiny preset (40 steps on 16×16 synthetic shapes)."""
    return train(tiny_config(tmp_path_factory.mktemp("tiny-run")))


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory):
    """A feature file for 16×16 synthetic shapes (3 classes), trained for a few seconds."""
    from stepdrop_search.objectives.features import train_feature_net

    path = tmp_path_factory.mktemp("features") / "features.pt"
    train_feature_net("synthetic", None, path, steps=60, batch_size=64)
    return path


@pytest.fixture(scope="session")
def tiny_judge(tmp_path_factory):
    """A judge for the same images: the residual family, another seed, half of the training images."""
    from stepdrop_search.objectives.features import train_feature_net

    path = tmp_path_factory.mktemp("judge") / "judge.pt"
    train_feature_net("synthetic", None, path, steps=60, batch_size=64, family="residual", width=8, images="half-b",
                      seed=1)
    return path


PG_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture
def postgres():
    """URL of a database in a private PostgreSQL 15 cluster on 127.0.0.1 (run as the postgres user when the
    tests run as root); the plain ``postgresql://`` form users write, so the tests use the default driver."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL server binaries not installed")
    tmp_path = Path(tempfile.mkdtemp(prefix="stepdrop-pg-"))  # pytest's tmp dirs are not traversable by postgres
    data = tmp_path / "pg"
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if run_as:
        shutil.chown(tmp_path, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*run_as, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run([*run_as, str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", f"-p {port} -k {tmp_path} -h 127.0.0.1",
                    "-l", str(tmp_path / "pg.log"), "-w", "start"], check=True, capture_output=True)
    try:
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "create database studies"],
                       check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/studies"
    finally:
        subprocess.run([*run_as, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(tmp_path, ignore_errors=True)
