"""`--device cuda` end to end: train, sample, evaluate and optimize on the tiny preset. Skipped without a GPU."""

import json

import pytest
import torch
from typer.testing import CliRunner

from stepdrop_search.cli import app
from stepdrop_search.loading import load_model
from stepdrop_search.policies import load_policy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")
runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_every_command_runs_on_cuda(tmp_path, tiny_features):
    run = tmp_path / "run"
    invoke("train", "--preset", "tiny", "--dataset", "synthetic", "--steps", "30", "--batch-size", "32",
           "--out", str(run), "--device", "cuda")
    model = str(run / "last.pt")
    assert next(load_model(model, device="cuda").model.parameters()).is_cuda
    invoke("sample", "--model", model, "--nfe", "5", "--n", "8", "--solver", "dpmpp-2m", "--device", "cuda",
           "--out", str(tmp_path / "grid.png"))
    out = tmp_path / "eval"
    invoke("evaluate", "--model", model, "--features", str(tiny_features), "--baselines", "ddim,stepdrop",
           "--nfe", "6", "--samples", "32", "--seeds", "2", "--metrics", "fid,kid,residual,throughput,memory",
           "--teacher", "ddim-50", "--residual-samples", "8", "--device", "cuda", "--out", str(out))
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["meta"]["device"].startswith("cuda")
    assert all(r["summary"]["peak_memory_mb"]["mean"] > 0 for r in data["results"])  # CUDA max allocated
    best = tmp_path / "best.json"
    invoke("optimize", "--model", model, "--features", str(tiny_features), "--nfe", "5", "--samples", "16",
           "--promote-samples", "16", "--held-out-samples", "32",
           "--teacher", "ddim-50", "--trials", "4", "--dp-grid", "20", "--dp-samples", "4", "--device", "cuda",
           "--storage", f"sqlite:///{tmp_path}/s.db", "--out", str(best))
    doc = load_policy(best, load_model(model).schedule)
    assert doc.solver.solver.nfe(doc.policy.nfe) <= 5  # NFE is a ceiling: a cheaper row as good may win


def test_cuda_sampling_matches_cpu_sampling(tiny_checkpoint):
    """x_T is drawn on the CPU, so a deterministic policy gives the same images on both devices."""
    from stepdrop_search.diffusion.solvers import SolverSpec
    from stepdrop_search.generation import generate
    from stepdrop_search.policies.kinds import Uniform

    runs = []
    for device in ("cpu", "cuda"):
        loaded = load_model(tiny_checkpoint, device=device)
        policy = Uniform(nfe=8, schedule=loaded.schedule)
        runs.append(generate(loaded.model, loaded.schedule, policy, SolverSpec("ddim"), n=16, seed=3).x0)
    assert torch.allclose(runs[0], runs[1], atol=1e-3)
