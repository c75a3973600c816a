"""The bench scripts run on any model: bench/sampler_speed.py on a checkpoint with a non-default noise schedule."""

import importlib.util
from pathlib import Path

import pytest

from stepdrop_search.train import train
from tests.conftest import tiny_config

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cosine_checkpoint(tmp_path_factory):
    return train(tiny_config(tmp_path_factory.mktemp("cosine-run"), schedule="cosine", T=100))


def test_sampler_speed_prints_every_row_for_a_model_with_a_cosine_schedule(cosine_checkpoint, capsys, monkeypatch):
    bench = bench_module("sampler_speed")
    allocator_set = []
    monkeypatch.setattr(bench, "keep_freed_memory_for_reuse", lambda: allocator_set.append(True))  # as the CLI does
    bench.main(["--model", str(cosine_checkpoint), "--batch", "4", "--nfe", "2", "--repeats", "1", "--device", "cpu"])
    assert allocator_set
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["policy", "solver", "NFE", "measured", "NFE", "img/s", "outside", "net"]
    rows = [line.split() for line in lines[2:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [(kind, solver, "2") for kind in ("uniform", "stepdrop", "adaptive")
                                                  for solver in ("ddim", "dpmpp-2m")]
    assert all(float(r[4]) > 0 and r[5].endswith("%") for r in rows)


def test_teacher_accuracy_puts_a_converged_teacher_closer_to_ddim_over_all_steps_than_a_coarse_one(cosine_checkpoint, capsys):
    bench_module("teacher_accuracy").main(["--model", str(cosine_checkpoint), "--samples", "4", "--seed", "3",
                                           "--teachers", "ddim-5", "dpmpp-2m-50"])
    rows = {line.split()[0]: float(line.split()[2]) for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["dpmpp-2m-50"] < rows["ddim-5"]  # 50 second-order steps of a 100-step model are near its ODE


def test_small_sample_bias_prints_every_solver_at_every_sample_count(cosine_checkpoint, tiny_features, capsys):
    bench_module("small_sample_bias").main(["--model", str(cosine_checkpoint), "--features", str(tiny_features),
                                            "--nfe", "4", "--samples", "8", "16", "--solvers", "ddim", "heun"])
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [r.split()[0] for r in rows] == ["ddim", "heun"] and all(len(r.split()) == 5 for r in rows)
