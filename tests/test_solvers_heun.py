"""Heun (EDM's second-order ODE sampler) as a solver strategy: against diffusers' HeunDiscreteScheduler,
and `--nfe` counting network evaluations."""

import pytest
import torch
from typer.testing import CliRunner

from stepdrop_search.cli import app
from stepdrop_search.diffusion.solvers import SolverSpec, spec_for_nfe
from stepdrop_search.generation import generate
from stepdrop_search.loading import load_model
from stepdrop_search.policies.kinds import Explicit, StepDrop, Uniform

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module", params=[False, True], ids=["no-clip", "clip"])
def tiny_diffusers(request, tmp_path_factory):
    """A tiny random diffusers UNet; with "clip" its scheduler config clips x̂0 to [−1, 1] at every step, which is
    what our ``clamp=True`` does (and ε then follows the clipped x̂0 on both sides)."""
    from tests.test_interop import save_tiny_pipeline

    config = {"num_train_timesteps": 1000, "clip_sample": request.param}
    loaded = load_model(f"diffusers:{save_tiny_pipeline(tmp_path_factory.mktemp('heun'), config)}")
    # float64 on both sides: diffusers steps x̃ = x/α, which starts at σ̃ ≈ 157, where float32 alone leaves ~1e-4
    # of rounding in the result; in double precision any remaining difference is a difference of method.
    loaded.model.double()
    return loaded, request.param


@pytest.mark.parametrize("steps", [(999, 760, 540, 330, 120), (999, 500, 250, 100, 40, 10)])
def test_heun_equals_diffusers_heun_discrete_scheduler(tiny_diffusers, steps):
    from stepdrop_search.interop import diffusers_sample

    loaded, clip = tiny_diffusers
    policy = Explicit(steps=steps, schedule=loaded.schedule)
    theirs = diffusers_sample(loaded, "heun", n=4, seed=5, clamp=False, timesteps=list(steps))
    ours = generate(loaded.model, loaded.schedule, policy, SolverSpec("heun"), n=4, seed=5, clamp=clip)
    # With clipping, a pixel whose x̂0 sits at ±1 turns on diffusers' σ table, which it keeps in float32 (5e-8
    # relative): a handful of such pixels move by up to ~1e-4 while the mean difference stays ~1e-6.
    assert (ours.x0 - theirs.x0).abs().max() <= (2e-4 if clip else 1e-4)
    assert (ours.x0 - theirs.x0).abs().mean() <= 1e-5
    assert ours.nfe.tolist() == theirs.nfe.tolist() == [2 * len(steps) - 1] * 4


@pytest.mark.parametrize("nfe", [1, 2, 5, 10, 25])
def test_heun_spends_exactly_the_nfe_asked_for(tiny_checkpoint, nfe):
    loaded = load_model(tiny_checkpoint)
    spec, steps = spec_for_nfe("heun", nfe)
    run = generate(loaded.model, loaded.schedule, Uniform(nfe=steps, schedule=loaded.schedule), spec, n=3, seed=0)
    assert run.nfe.tolist() == [nfe] * 3 == [spec.solver.nfe(steps)] * 3


def test_heun_on_a_stochastic_plan_counts_its_second_evaluations_per_sample(tiny_checkpoint):
    loaded = load_model(tiny_checkpoint)
    policy = StepDrop(nfe=6, schedule=loaded.schedule)
    run = generate(loaded.model, loaded.schedule, policy, SolverSpec("heun"), n=16, seed=0)
    steps = run.evaluated.sum(1)
    assert run.nfe.tolist() == (2 * steps - 1).tolist()
    alone = generate(loaded.model, loaded.schedule, policy, SolverSpec("heun"), n=16, seed=0, batch_size=1)
    assert torch.allclose(alone.x0, run.x0, atol=1e-5) and alone.nfe.tolist() == run.nfe.tolist()


def test_cli_heun_nfe_10_measures_10(tiny_checkpoint, tmp_path):
    result = CliRunner().invoke(app, ["sample", "--model", str(tiny_checkpoint), "--policy", "uniform", "--nfe", "10",
                                      "--solver", "heun", "--n", "4", "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 0, result.output
    assert "measured NFE 10.00" in result.output


def test_a_heun_policy_file_keeps_its_nfe_budget(tiny_checkpoint, tmp_path):
    from stepdrop_search.policies import PolicyDocument, load_policy, save_policy

    loaded = load_model(tiny_checkpoint)
    spec, steps = spec_for_nfe("heun", 10)  # 6 steps: an even budget keeps the first step Euler
    path = save_policy(tmp_path / "heun.json", PolicyDocument(Uniform(nfe=steps, schedule=loaded.schedule), spec))
    doc = load_policy(path, loaded.schedule)
    assert doc.solver == spec
    run = generate(loaded.model, loaded.schedule, doc.policy, doc.solver, n=3)
    assert run.nfe.tolist() == [10, 10, 10]  # not 11, which 6 Heun steps spend without the budget
