"""iPNDM and UniPC: equal to their references on the same model, timesteps and x_T; each sample keeps its own history
under stochastic plans; the CLI spends exactly the NFE asked for."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from typer.testing import CliRunner

from stepdrop_search.cli import app
from stepdrop_search.diffusion.runtimes import RUNTIMES
from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.generation import generate, initial_noise
from stepdrop_search.loading import load_model
from stepdrop_search.policies.kinds import Adaptive, Explicit, StepDrop

CLAMPED = RUNTIMES["stepdrop-clamp"]  # keeps an untrained net's samples where float32 resolves 1e-5

runner = CliRunner()
SOLVERS = ("ipndm", "unipc")


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_model(tiny_checkpoint)


@pytest.fixture(scope="module")
def tiny64(tiny):
    """The same model in float64: its unclamped x̂0 reach a few hundred, where float32 alone resolves ~3e-5, so the
    reference checks run in double precision and then hold to 1e-4 absolute (a wrong coefficient moves these
    samples by 0.1–1, see the UniPC test)."""
    return dataclasses.replace(tiny, model=copy.deepcopy(tiny.model).double())


def close(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    return bool((ours - theirs).abs().max() <= 1e-4)


def ipndm_reference(model: torch.nn.Module, abar: torch.Tensor, steps: list[int], x_T: torch.Tensor) -> torch.Tensor:
    """zju-pi/diff-sampler ``ipndm_sampler`` (max_order 4), transcribed in its own variables: x̃ = x/α, σ̃ = σ/α,
    the ε-model's denoiser D(x̃, σ̃) = x̃ − σ̃ ε̂(x̃/√(σ̃² + 1), t) (k-diffusion's ``DiscreteEpsDDPMDenoiser``) and
    the slope d = (x̃ − D)/σ̃, in float64. Its ``t_steps`` are the σ̃ of our grid, started from x̃ = x_T/α of our
    x_T, and it ends as that sampler does with ``denoise_to_zero=True``: D at the last σ̃ (our last step's x̂0)."""
    t_steps = ((1 - abar) / abar).sqrt()

    def denoised(x: torch.Tensor, i: int) -> torch.Tensor:
        c_in = 1 / (t_steps[i] ** 2 + 1).sqrt()
        eps = model((x * c_in).to(next(model.parameters()).dtype), torch.full((x.shape[0],), steps[i])).double()
        return x - t_steps[i] * eps

    max_order = 4
    x_next = x_T.double() / abar[0].sqrt()
    buffer_model: list[torch.Tensor] = []
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:], strict=True)):
        x_cur = x_next
        d_cur = (x_cur - denoised(x_cur, i)) / t_cur
        order = min(max_order, i + 1)
        if order == 1:
            x_next = x_cur + (t_next - t_cur) * d_cur
        elif order == 2:
            x_next = x_cur + (t_next - t_cur) * (3 * d_cur - buffer_model[-1]) / 2
        elif order == 3:
            x_next = x_cur + (t_next - t_cur) * (23 * d_cur - 16 * buffer_model[-1] + 5 * buffer_model[-2]) / 12
        else:
            x_next = x_cur + (t_next - t_cur) * (55 * d_cur - 59 * buffer_model[-1] + 37 * buffer_model[-2]
                                                 - 9 * buffer_model[-3]) / 24
        if len(buffer_model) == max_order - 1:
            for k in range(max_order - 2):
                buffer_model[k] = buffer_model[k + 1]
            buffer_model[-1] = d_cur
        else:
            buffer_model.append(d_cur)
    return denoised(x_next, len(steps) - 1).float()


def test_our_ipndm_equals_diff_samplers_ipndm_in_its_own_variables(tiny64):
    """On an uneven grid long enough to run the warm start (orders 1, 2, 3) and order 4."""
    steps = (999, 870, 730, 600, 470, 350, 240, 150, 80, 30)
    tiny = tiny64
    policy = Explicit(steps=steps, schedule=tiny.schedule)
    ours = generate(tiny.model, tiny.schedule, policy, SolverSpec("ipndm"), n=4, seed=5)
    x_T = initial_noise(4, (tiny.config.in_channels, tiny.config.image_size, tiny.config.image_size), 5)
    with torch.no_grad():
        theirs = ipndm_reference(tiny.model, tiny.schedule.alphas_cumprod_at(torch.tensor(steps)), list(steps), x_T)
    assert close(ours.x0, theirs)
    assert ours.nfe.tolist() == [len(steps)] * 4


@pytest.mark.parametrize("spacing", ["trailing", "linspace", "leading"])
def test_our_unipc_equals_diffusers_unipc_multistep_scheduler_on_its_timesteps(tiny64, spacing):
    """diffusers' UniPCMultistepScheduler (its defaults, checked below) takes no custom timesteps: it picks them for
    8 steps with its spacing, and our sampler runs those same integer timesteps as an explicit policy."""
    pytest.importorskip("diffusers")
    tiny = tiny64
    from stepdrop_search.interop import diffusers_sample, make_scheduler, scheduler_config_from_schedule

    config = scheduler_config_from_schedule(tiny.schedule) | {"timestep_spacing": spacing}
    loaded = dataclasses.replace(tiny, card={"scheduler_config": config})
    settings = {key: make_scheduler("unipc", loaded).config[key] for key in
                ("solver_order", "predict_x0", "solver_type", "final_sigmas_type", "lower_order_final", "thresholding")}
    assert settings == {"solver_order": 2, "predict_x0": True, "solver_type": "bh2", "final_sigmas_type": "zero",
                        "lower_order_final": True, "thresholding": False}
    theirs = diffusers_sample(loaded, "unipc", n=4, nfe=8, seed=5, clamp=False)
    policy = Explicit(steps=tuple(theirs.grid.tolist()), schedule=tiny.schedule)
    ours = generate(tiny.model, tiny.schedule, policy, SolverSpec("unipc"), n=4, seed=5)
    assert close(ours.x0, theirs.x0)
    assert ours.nfe.tolist() == theirs.nfe.tolist() == [8] * 4
    # the corrector matters: its predictor alone (DPM-Solver++(2M)) is far from diffusers' UniPC
    predictor_only = generate(tiny.model, tiny.schedule, policy, SolverSpec("dpmpp-2m"), n=4, seed=5)
    assert not close(predictor_only.x0, theirs.x0)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("policy", [StepDrop(nfe=6, base_steps=12), Adaptive(base_steps=12, p0=0.1)],
                         ids=["stepdrop", "adaptive"])
def test_a_sample_comes_out_the_same_at_any_batch_size(tiny, policy, solver):
    # the clamp keeps an untrained net's samples in [−1, 1], where float32 resolves the 1e-5 asked for
    runs = [generate(tiny.model, tiny.schedule, policy, SolverSpec(solver), n=5, seed=11, batch_size=b, runtime=CLAMPED)
            for b in (1, 3, 5)]
    for run in runs[1:]:
        assert torch.equal(run.evaluated, runs[0].evaluated)
        assert torch.allclose(run.x0, runs[0].x0, atol=1e-5, rtol=0)
    assert len(set(runs[0].nfe.tolist())) > 1  # the samples took different paths


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_skipping_sample_steps_as_a_dense_run_over_the_steps_it_evaluated(tiny, solver):
    """Under StepDrop each sample's history is its own evaluations: its result is the static run over its path."""
    n, seed = 4, 7
    run = generate(tiny.model, tiny.schedule, StepDrop(nfe=6, base_steps=12), SolverSpec(solver), n=n, seed=seed, runtime=CLAMPED)
    x_T = initial_noise(n, (tiny.config.in_channels, tiny.config.image_size, tiny.config.image_size), seed)
    assert len({tuple(path.tolist()) for path in run.evaluated}) > 1
    for b in range(n):
        path = Explicit(steps=tuple(run.grid[run.evaluated[b]].tolist()), schedule=tiny.schedule)
        alone = generate(tiny.model, tiny.schedule, path, SolverSpec(solver), n=1, seed=seed, x_T=x_T[b:b + 1], runtime=CLAMPED)
        assert torch.allclose(alone.x0[0], run.x0[b], atol=1e-5, rtol=0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_cli_sample_with_the_solver_spends_the_nfe_asked_for(tiny_checkpoint, tmp_path, solver):
    out = tmp_path / "grid.png"
    result = runner.invoke(app, ["sample", "--model", str(tiny_checkpoint), "--policy", "uniform", "--nfe", "10",
                                 "--solver", solver, "--n", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"solver {solver}" in result.output and "measured NFE 10.00 (min 10, max 10;" in " ".join(result.output.split())
    assert out.read_bytes()[:4] == b"\x89PNG"

