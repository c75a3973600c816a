"""The sampler loop and solvers: exactness against reference samplers, NFE counting, per-sample skipping."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from stepdrop_search.diffusion.runtimes import RUNTIMES
from stepdrop_search.diffusion.sampler import AmplitudeCalibration, Plan, SampleStreams, sample
from stepdrop_search.diffusion.solvers import SOLVERS, SolverSpec
from stepdrop_search.errors import UserError
from stepdrop_search.generation import amplitude_profile, generate, initial_noise
from stepdrop_search.loading import load_model
from stepdrop_search.policies.kinds import Adaptive, StepDrop, Uniform


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_model(tiny_checkpoint)


@torch.no_grad()
def reference_ddpm(model, schedule, x, streams):
    """Textbook 1000-step DDPM ancestral sampling with x̂0 clamped (independent of our solvers), fed the noise
    our sampler draws at each grid step."""
    a = schedule.alphas_cumprod
    betas = schedule.betas
    noise = streams.noise(x.shape[1:], schedule.T, torch.device("cpu"), torch.float32)
    for t in range(schedule.T - 1, -1, -1):
        eps = model(x, torch.full((x.shape[0],), t))
        x0 = ((x - (1 - a[t]).sqrt() * eps) / a[t].sqrt()).clamp(-1, 1)
        z = noise.at(schedule.T - 1 - t)
        if t == 0:
            return x0
        a_prev = a[t - 1]
        mean = a_prev.sqrt() * betas[t] / (1 - a[t]) * x0 + (1 - betas[t]).sqrt() * (1 - a_prev) / (1 - a[t]) * x
        x = (mean + ((1 - a_prev) / (1 - a[t]) * betas[t]).sqrt() * z).float()
    return x


def test_uniform_full_grid_with_ddpm_reproduces_the_1000_step_ddpm_sampler(tiny):
    x = initial_noise(4, (1, 16, 16), 0)
    ref = reference_ddpm(tiny.model, tiny.schedule, x.clone(), SampleStreams(5, range(4)))
    policy = Uniform(nfe=1000, schedule=tiny.schedule)
    ours = sample(tiny.model, tiny.schedule, x, policy.plan(4, solver="ddpm"), streams=SampleStreams(5, range(4)),
                  runtime=RUNTIMES["stepdrop-clamp"])  # the textbook sampler above clamps x̂0
    assert torch.allclose(ours.x0, ref, atol=1e-5)
    assert ours.nfe.tolist() == [1000] * 4


def test_ddim_with_eta_one_over_all_steps_equals_ddpm_ancestral(tiny):
    x = initial_noise(3, (1, 16, 16), 1)
    plan_ddim = Uniform(nfe=1000).plan(3, solver="ddim")
    plan_ddpm = Uniform(nfe=1000).plan(3, solver="ddpm")
    clamped = RUNTIMES["stepdrop-clamp"]  # an untrained net's x̂0 reach hundreds unclamped, beyond float32's 1e-5
    a = sample(tiny.model, tiny.schedule, x, plan_ddim, eta=1.0, streams=SampleStreams(9, range(3)), runtime=clamped)
    b = sample(tiny.model, tiny.schedule, x, plan_ddpm, streams=SampleStreams(9, range(3)), runtime=clamped)
    assert torch.allclose(a.x0, b.x0, atol=1e-5)


def test_deterministic_solvers_give_identical_results_for_the_same_noise(tiny):
    for name in ("ddim", "dpmpp-2m"):
        runs = [generate(tiny.model, tiny.schedule, Uniform(nfe=10), SolverSpec(name), n=4, seed=3) for _ in range(2)]
        assert torch.equal(runs[0].x0, runs[1].x0)
        assert torch.isfinite(runs[0].x0).all()


def test_dpm_solver_first_step_equals_ddim(tiny):
    """With no history DPM-Solver++(2M) is first order, i.e. DDIM; one step checks the λ algebra."""
    x = initial_noise(2, (1, 16, 16), 4)
    grid = torch.tensor([999, 500])
    a = sample(tiny.model, tiny.schedule, x, Plan(grid, ("ddim", "ddim")), trajectory=True)
    b = sample(tiny.model, tiny.schedule, x, Plan(grid, ("dpmpp-2m", "dpmpp-2m")), trajectory=True)
    assert torch.allclose(a.trajectory[1], b.trajectory[1], atol=1e-5)


def test_batched_and_per_sample_paths_agree_when_nobody_skips(tiny):
    """A pre-drawn mask of all True runs the gather path; it must equal the dense path."""
    x = initial_noise(3, (1, 16, 16), 2)
    grid = Uniform(nfe=8).timesteps()
    dense = sample(tiny.model, tiny.schedule, x, Plan(grid, ("dpmpp-2m",) * 8))
    masked = sample(tiny.model, tiny.schedule, x, Plan(grid, ("dpmpp-2m",) * 8, evaluate=torch.ones(3, 8, dtype=torch.bool)))
    assert torch.allclose(dense.x0, masked.x0, atol=1e-6)


def test_stepdrop_skips_per_sample_and_counts_real_nfe(tiny):
    policy = StepDrop(nfe=10, schedule=tiny.schedule)
    calls = []

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, x, t):
            calls.append(x.shape[0])
            return self.inner(x, t)

    result = generate(Spy(tiny.model), tiny.schedule, policy, SolverSpec(), n=64, seed=0)
    assert torch.equal(result.nfe, result.evaluated.sum(1))
    assert sum(calls) == int(result.nfe.sum())  # skipped samples were not evaluated
    assert len(set(result.nfe.tolist())) > 1  # decisions differ per sample
    assert abs(result.nfe.float().mean().item() - policy.expected_nfe()) < 1.5
    assert result.evaluated[:, 0].all() and result.evaluated[:, -1].all()  # protected ends


def test_adaptive_decides_from_eps_without_extra_evaluations(tiny):
    policy = Adaptive(nfe=10, schedule=tiny.schedule)
    result = generate(tiny.model, tiny.schedule, policy, SolverSpec(), n=32, seed=0)
    assert torch.equal(result.nfe, result.evaluated.sum(1))
    assert (result.nfe <= policy.base_steps).all() and (result.nfe >= 2).all()
    assert torch.isfinite(result.x0).all()


def test_skipping_everything_in_the_middle_still_ends_at_x0(tiny):
    grid = Uniform(nfe=6).timesteps()
    evaluate = torch.zeros(2, 6, dtype=torch.bool)
    evaluate[:, 0] = True
    result = sample(tiny.model, tiny.schedule, initial_noise(2, (1, 16, 16), 0), Plan(grid, ("ddim",) * 6, evaluate=evaluate),
                    runtime=RUNTIMES["stepdrop-clamp"])
    assert result.nfe.tolist() == [1, 1]
    assert result.x0.abs().max() <= 1  # the clamped x̂0 of the first evaluation


def test_amplitude_calibration_maps_quantiles_onto_the_teacher_profile(tiny):
    profile = amplitude_profile(tiny.model, tiny.schedule, n=8, steps=10)
    assert profile.shape == (1000, 2) and (profile[:, 1] > profile[:, 0]).all()
    calib = AmplitudeCalibration(profile)
    x = torch.randn(4, 1, 16, 16) * 3
    y = calib(x, torch.tensor(500))
    q = torch.quantile(y.flatten(1), torch.tensor([0.05, 0.95]), dim=1)
    assert torch.allclose(q[0], profile[500, 0].expand(4), atol=1e-4)
    result = generate(tiny.model, tiny.schedule, Uniform(nfe=5), SolverSpec(), n=4, calibration=calib)
    assert torch.isfinite(result.x0).all()


class WholeStatesInFloat64(TorchFunctionMode):
    """Records every torch call that returns a float64 tensor as large as the batch of states."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.calls = numel, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.numel() >= self.numel:
            self.calls.append(getattr(func, "__name__", str(func)))
        return out


@pytest.mark.parametrize("policy", [Uniform(nfe=8), StepDrop(nfe=8)], ids=["dense", "per-sample targets"])
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_no_solver_computes_on_whole_states_in_float64(tiny, solver, policy):
    """Coefficients are formed in float64 but applied in the states' dtype: a per-sample float64 factor applied as it
    is promotes the whole product, which made the multistep solvers' arithmetic 4–6× slower."""
    x = initial_noise(4, (1, 16, 16), 0)
    plan = policy.plan(4, solver=solver)
    spec = SolverSpec(solver)
    if spec.solver.learned and not plan.dense:  # its coefficients belong to grid steps: refused before any evaluation
        with pytest.raises(UserError, match="static policies only"):
            sample(tiny.model, tiny.schedule, x, plan, solver=spec, streams=SampleStreams(0, range(4)))
        return
    with WholeStatesInFloat64(x.numel()) as watch:
        run = sample(tiny.model, tiny.schedule, x, plan, solver=spec, streams=SampleStreams(0, range(4)))
    assert torch.isfinite(run.x0).all() and run.x0.dtype == torch.float32
    assert watch.calls == []
