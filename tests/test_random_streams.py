"""Common random numbers: every random number belongs to one (seed, stream, sample), never to a batch or a row."""

import numpy as np
import pytest
import torch

from stepdrop_search.diffusion.runtimes import RUNTIMES
from stepdrop_search.diffusion.sampler import Plan, SampleStreams, sample
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.diffusion.solvers import SolverSpec, ancestral_step, predict_x0
from stepdrop_search.generation import generate, initial_noise
from stepdrop_search.loading import load_model
from stepdrop_search.policies.kinds import Adaptive, StepDrop, Uniform
from stepdrop_search.search.dp import gits_schedule, teacher_trajectory


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_model(tiny_checkpoint)


class ConstantEps(torch.nn.Module):
    """ε_θ ≡ ``value``: the sampler's arithmetic can then be inverted to read back the noise it drew."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.config = type("C", (), {"in_channels": 1, "image_size": 8})()

    def forward(self, x, t):
        return torch.full_like(x, self.value) + self.anchor


@pytest.mark.parametrize("policy, solver", [
    (StepDrop(nfe=6, base_steps=12), SolverSpec("ddpm")),
    (Adaptive(base_steps=12, p0=0.1), SolverSpec("ddim")),  # the tiny model's ‖ε‖/√D ≈ 0.13: p ≈ 0.8 f(u)
    (Uniform(nfe=6), SolverSpec("ddim", eta=0.7)),
], ids=["stepdrop-ddpm", "adaptive-ddim", "ddim-eta"])
def test_a_sample_comes_out_the_same_at_any_batch_size(tiny, policy, solver):
    # the clamp keeps an untrained net's samples in [−1, 1], where float32 resolves the 1e-5 asked for
    runs = [generate(tiny.model, tiny.schedule, policy, solver, n=5, seed=11, batch_size=b, runtime=RUNTIMES["stepdrop-clamp"])
            for b in (1, 3, 5)]
    for run in runs[1:]:
        assert torch.equal(run.evaluated, runs[0].evaluated)
        assert torch.allclose(run.x0, runs[0].x0, atol=1e-5, rtol=0)
    assert not torch.allclose(runs[0].x0[0], runs[0].x0[1], atol=1e-2)  # and samples are not copies of each other
    assert policy.static or len(set(runs[0].nfe.tolist())) > 1  # nor do they all take one path


@pytest.mark.parametrize("policy, solver", [(StepDrop(nfe=6, base_steps=12), SolverSpec("ddpm")),
                                            (Uniform(nfe=6), SolverSpec("ddim", eta=0.7))], ids=["stepdrop-ddpm", "ddim-eta"])
def test_samples_drawn_in_rounds_are_the_samples_of_one_run(tiny, policy, solver):
    clamp = RUNTIMES["stepdrop-clamp"]
    whole = generate(tiny.model, tiny.schedule, policy, solver, n=7, seed=5, batch_size=3, runtime=clamp)
    rounds = [generate(tiny.model, tiny.schedule, policy, solver, n=n, seed=5, first=first, batch_size=2, runtime=clamp)
              for first, n in ((0, 2), (2, 5))]
    assert torch.equal(torch.cat([r.evaluated for r in rounds]), whole.evaluated)
    assert torch.allclose(torch.cat([r.x0 for r in rounds]), whole.x0, atol=1e-5, rtol=0)


def test_a_grid_step_nobody_evaluates_does_not_shift_later_noise(tiny):
    """Sample 0 takes the same path in both runs; in the second, nobody evaluates grid step 2."""
    grid = Uniform(nfe=6).timesteps()
    someone = torch.ones(2, 6, dtype=torch.bool)
    someone[0, 2] = False
    nobody = someone.clone()
    nobody[1, 2] = False
    x = initial_noise(2, (1, 16, 16), 3)
    runs = [sample(tiny.model, tiny.schedule, x, Plan(grid, ("ddpm",) * 6, evaluate=mask), streams=SampleStreams(3, range(2)))
            for mask in (someone, nobody)]
    assert torch.equal(runs[0].evaluated[0], runs[1].evaluated[0])
    assert torch.allclose(runs[0].x0[0], runs[1].x0[0], atol=1e-6, rtol=0)


def first_step_noise(seed: int, n: int = 4) -> torch.Tensor:
    """The solver noise of grid step 0 that ``generate`` drew for ``seed``, read back from a 2-step ancestral run
    of a model with ε ≡ 1 (x_{t1} = mean + σ z, and the last step returns x̂0(x_{t1}) unclamped)."""
    schedule = NoiseSchedule()
    policy = Uniform(nfe=2, schedule=schedule)
    x0 = generate(ConstantEps(1.0), schedule, policy, SolverSpec("ddpm"), n=n, seed=seed).x0.double()
    t, s = policy.timesteps().tolist()
    a_t, a_s = schedule.alphas_cumprod.double()[t], schedule.alphas_cumprod.double()[s]
    x_T = initial_noise(n, (1, 8, 8), seed).double()
    mean = ancestral_step(x_T, predict_x0(x_T, torch.ones_like(x_T), a_t, clamp=False)[0], a_t, a_s, None)
    x_s = x0 * a_s.sqrt() + (1 - a_s).sqrt()
    sigma = ((1 - a_t / a_s) * (1 - a_s) / (1 - a_t)).sqrt()
    return ((x_s - mean) / sigma).float()


def test_a_seeds_solver_noise_is_its_own_not_another_seeds_noise_or_x_T():
    z = first_step_noise(5)
    assert torch.allclose(z, first_step_noise(5), atol=1e-6)
    assert abs(z.std().item() - 1) < 0.15  # it is the noise: unit normal
    for other in (first_step_noise(6), first_step_noise(7), *(initial_noise(4, (1, 8, 8), s) for s in (5, 6, 7))):
        assert (z - other).abs().mean() > 0.5  # independent unit normals differ by ≈ 1.13 on average


def test_different_policies_of_a_seed_get_the_same_solver_noise(tiny):
    """Adaptive with p0 = 0 on a 2-step base walks uniform-2's path, so only the noise could differ."""
    adaptive = Adaptive(base_steps=2, p0=0.0, schedule=tiny.schedule)
    uniform = Uniform(nfe=2, schedule=tiny.schedule)
    assert torch.equal(adaptive.grid(), uniform.timesteps())
    a, u = (generate(tiny.model, tiny.schedule, p, SolverSpec("ddpm"), n=4, seed=2).x0 for p in (adaptive, uniform))
    assert torch.allclose(a, u, atol=1e-6, rtol=0)


def test_stepdrop_and_adaptive_of_a_seed_flip_the_same_coins():
    """With ‖ε‖/√D = 1 the adaptive rule keeps step j after i iff u_j ≥ p_j, as StepDrop's mask does."""
    schedule = NoiseSchedule()
    kw = dict(base_steps=30, p0=0.5, profile="cosine2", schedule=schedule)
    runs = [generate(ConstantEps(1.0), schedule, kind(**kw), SolverSpec(), n=16, seed=4) for kind in (StepDrop, Adaptive)]
    assert torch.equal(runs[0].evaluated, runs[1].evaluated)
    assert len({tuple(row) for row in runs[0].evaluated.tolist()}) > 1  # the coins do differ between samples


def test_deterministic_runs_draw_no_noise(tiny, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a deterministic run drew solver noise")

    monkeypatch.setattr(SampleStreams, "noise", refuse)
    for policy in (Uniform(nfe=4), StepDrop(nfe=4), Adaptive(nfe=4)):
        for solver in (SolverSpec("ddim"), SolverSpec("dpmpp-2m")):
            assert torch.isfinite(generate(tiny.model, tiny.schedule, policy, solver, n=2, seed=0).x0).all()


def test_noise_is_the_same_block_by_block_and_step_by_step():
    """Blocks are an implementation detail: grid step j's noise does not depend on how many steps a block holds."""
    streams = SampleStreams(8, range(3))
    whole = streams.noise((1, 4, 4), 10, torch.device("cpu"), torch.float32)
    tiny_blocks = streams.noise((1, 4, 4), 10, torch.device("cpu"), torch.float32)
    tiny_blocks.block = 3
    for j in (0, 4, 9):  # skipped steps are drawn and dropped, never shifted
        assert torch.equal(whole.at(j), tiny_blocks.at(j))
    with pytest.raises(IndexError):
        tiny_blocks.at(2)  # read in increasing step order only


def test_dp_teacher_is_deterministic_and_leaves_the_global_rngs_alone(tiny):
    """DP searches every solver's schedule on the probability-flow ODE (DDIM η = 0): the teacher draws nothing."""
    torch.manual_seed(123)
    np.random.seed(123)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    runs = [teacher_trajectory(tiny, grid_size=8, n=3, seed=1) for _ in range(2)]
    assert torch.equal(runs[0].states, runs[1].states) and torch.equal(runs[0].denoised, runs[1].denoised)
    assert torch.equal(gits_schedule(runs[0], 3).steps, gits_schedule(runs[1], 3).steps)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


def test_diffusers_ddpm_draws_each_samples_noise_from_its_own_stream(tiny):
    pytest.importorskip("diffusers")
    from stepdrop_search.interop import diffusers_sample

    runs = [diffusers_sample(tiny, "ddpm", n=3, nfe=5, seed=1, batch_size=b).x0 for b in (1, 3)]
    assert torch.allclose(runs[0], runs[1], atol=1e-5, rtol=0)
    assert not torch.allclose(runs[0], diffusers_sample(tiny, "ddpm", n=3, nfe=5, seed=2).x0, atol=1e-2)
