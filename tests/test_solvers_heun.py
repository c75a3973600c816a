"""Heun (EDM's second-order ODE sampler) as a solver strategy: against diffusers' HeunDiscreteScheduler,
and `--nfe` counting network evaluations."""

import pytest
import torch
from typer.testing import CliRunner

from stepdrop_search.cli import app
from stepdrop_search.diffusion.runtimes import RUNTIMES
from stepdrop_search.diffusion.solvers import SolverSpec, spec_for_nfe
from stepdrop_search.generation import generate
from stepdrop_search.loading import load_model
from stepdrop_search.policies.kinds import Explicit, StepDrop, Uniform

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module", params=[False, True], ids=["no-clip", "clip"])
def tiny_diffusers(request, tmp_path_factory):
    """A tiny random diffusers UNet; with "clip" its scheduler config clips x̂0 to [−1, 1] at every step, which is
    what the ``stepdrop-clamp`` runtime does (and ε then follows the clipped x̂0 on both sides)."""
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
    ours = generate(loaded.model, loaded.schedule, policy, SolverSpec("heun"), n=4, seed=5,
                    runtime=RUNTIMES["stepdrop-clamp" if clip else "stepdrop"])
    # With clipping, a pixel whose x̂0 sits at ±1 turns on diffusers' σ table, which it keeps in float32 (5e-8
    # relative): a handful of such pixels move by up to ~1e-4 while the mean difference stays ~1e-6.
    assert (ours.x0 - theirs.x0).abs().max() <= (2e-4 if clip else 1e-4)
    assert (ours.x0 - theirs.x0).abs().mean() <= 1e-5
    assert ours.nfe.tolist() == theirs.nfe.tolist() == [2 * len(steps) - 1] * 4


@pytest.mark.parametrize(("nfe", "spent"), [(1, 1), (2, 1), (5, 5), (10, 9), (25, 25)])
def test_heun_spends_at_most_the_nfe_asked_for_correcting_every_interval_but_the_last(tiny_checkpoint, nfe, spent):
    """As k-diffusion, ComfyUI, A1111 and diffusers run it: K steps cost 2K − 1, so an even budget is a ceiling."""
    loaded = load_model(tiny_checkpoint)
    spec, steps = spec_for_nfe("heun", nfe)
    run = generate(loaded.model, loaded.schedule, Uniform(nfe=steps, schedule=loaded.schedule), spec, n=3, seed=0)
    assert run.nfe.tolist() == [spent] * 3 == [spec.solver.nfe(steps)] * 3


@pytest.mark.parametrize("nfe", [1, 2, 5, 10, 25])
def test_heun_under_the_legacy_runtime_spends_an_even_budget_exactly(tiny_checkpoint, nfe):
    loaded = load_model(tiny_checkpoint)
    legacy = RUNTIMES["legacy"]
    spec, steps = spec_for_nfe("heun", nfe, runtime=legacy)
    run = generate(loaded.model, loaded.schedule, Uniform(nfe=steps, schedule=loaded.schedule), spec, n=3, seed=0,
                   runtime=legacy)
    assert run.nfe.tolist() == [nfe] * 3 == [spec.solver.nfe(steps)] * 3


def test_heun_on_a_stochastic_plan_counts_its_second_evaluations_per_sample(tiny_checkpoint):
    loaded = load_model(tiny_checkpoint)
    policy = StepDrop(nfe=6, schedule=loaded.schedule)
    run = generate(loaded.model, loaded.schedule, policy, SolverSpec("heun"), n=16, seed=0)
    steps = run.evaluated.sum(1)
    assert run.nfe.tolist() == (2 * steps - 1).tolist()
    alone = generate(loaded.model, loaded.schedule, policy, SolverSpec("heun"), n=16, seed=0, batch_size=1)
    assert torch.allclose(alone.x0, run.x0, atol=1e-5) and alone.nfe.tolist() == run.nfe.tolist()


def test_cli_heun_nfe_10_measures_9_by_default_and_10_under_legacy(tiny_checkpoint, tmp_path):
    for runtime, measured in (("stepdrop", "9.00"), ("legacy", "10.00")):
        result = CliRunner().invoke(app, ["sample", "--model", str(tiny_checkpoint), "--policy", "uniform", "--nfe", "10",
                                          "--solver", "heun", "--n", "4", "--out", str(tmp_path / "g.png"),
                                          "--runtime", runtime])
        assert result.exit_code == 0, result.output
        assert f"measured NFE {measured}" in result.output


def test_a_legacy_heun_policy_file_keeps_its_nfe_budget(tiny_checkpoint, tmp_path):
    from stepdrop_search.policies import PolicyDocument, load_policy, save_policy

    loaded = load_model(tiny_checkpoint)
    legacy = RUNTIMES["legacy"]
    spec, steps = spec_for_nfe("heun", 10, runtime=legacy)  # 6 steps: an even budget keeps the first step Euler
    path = save_policy(tmp_path / "heun.json", PolicyDocument(Uniform(nfe=steps, schedule=loaded.schedule), spec,
                                                              runtime=legacy))
    doc = load_policy(path, loaded.schedule)
    assert doc.solver == spec and doc.runtime == legacy
    run = generate(loaded.model, loaded.schedule, doc.policy, doc.solver, n=3, runtime=doc.runtime)
    assert run.nfe.tolist() == [10, 10, 10]  # not 11, which 6 Heun steps spend without the budget
    # under another runtime the same steps run that runtime's pattern: the budget goes, 6 steps cost 11
    moved = doc.under(RUNTIMES["stepdrop"])
    assert moved.solver.nfe is None
    assert generate(loaded.model, loaded.schedule, moved.policy, moved.solver, n=3).nfe.tolist() == [11, 11, 11]
