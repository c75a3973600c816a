"""Durable studies: workers killed with SIGKILL at random and restarted lose no finished trial and duplicate none,
and the study then resumes to its end (bench/chaos_study.py, small)."""

import importlib.util
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("chaos_study", Path(__file__).parent.parent / "bench" / "chaos_study.py")
chaos_study = importlib.util.module_from_spec(spec)
sys.modules["chaos_study"] = chaos_study  # its dataclass looks its module up there
spec.loader.exec_module(chaos_study)


@pytest.mark.slow
@pytest.mark.parametrize("backend, workers", [("sqlite", 2), ("postgresql", 4)])
def test_workers_killed_at_random_lose_no_trial_and_the_study_resumes_to_its_end(backend, workers, request,
                                                                                tiny_checkpoint, tiny_features,
                                                                                tiny_judge, tmp_path):
    storage = f"sqlite:///{tmp_path}/chaos.db" if backend == "sqlite" else request.getfixturevalue("postgres")
    flags = ["--model", str(tiny_checkpoint), "--features", str(tiny_features), "--judge", str(tiny_judge)]
    outcome = chaos_study.chaos(storage, workers=workers, trials=30, kill_every=2.0, kill_every_trials=4,
                                flags=flags, folder=tmp_path, timeout=240)
    print(f"{backend}, {workers} workers: {outcome.line()}")  # pytest -s tests/test_chaos.py shows the figures
    assert outcome.kills >= 3, outcome.line()
    assert outcome.lost == 0 and outcome.duplicated == 0 and outcome.resumed, outcome.line()
