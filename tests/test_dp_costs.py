"""GITS's signed deviation cost against a hand-computed case; every solver's declared one-step form; OSS with Heun's."""

import pytest
import torch

from stepdrop_search.diffusion.sampler import Plan, sample
from stepdrop_search.diffusion.solvers import SOLVERS, SolverSpec
from stepdrop_search.errors import UserError
from stepdrop_search.loading import load_model
from stepdrop_search.search.dp import TeacherTrajectory, deviation, gits_costs, gits_schedule, oss_schedule, teacher_trajectory


def hand_trajectory() -> TeacherTrajectory:
    """Two nodes (ᾱ = 0.2, 0.5: σ̃ = 2, 1) and x̂0, one sample of 2 pixels, written in x̃ = x/α:
    x̃_0 = (4, 0), teacher x̃_1 = (1, 1), teacher x0 = (0, 0) — the line x_T → x_0 is the first axis —
    and the teacher's x̂0 predictions D_0 = (0.5, 0.5), D_1 = (0, 0.5)."""
    abar = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64)
    tilde = torch.tensor([[4.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    states = (tilde * abar.sqrt().float()[:, None]).view(3, 1, 1, 1, 2)
    denoised = torch.tensor([[0.5, 0.5], [0.0, 0.5]]).view(2, 1, 1, 1, 2)
    return TeacherTrajectory(torch.tensor([999, 500]), states, denoised, abar, 2)


def test_gits_dev_cost_is_the_signed_change_of_distance_from_the_trajectory_line():
    # Edge 0→1: d_0 = (x̃_0 − D_0)/σ̃_0 = (1.75, −0.25); x̃_0 + (σ̃_1 − σ̃_0) d_0 = (2.25, 0.25): 0.25 off the line,
    # the teacher's x̃_1 is 1 off, so the cost is 0.25 − 1 = −0.75. Edges to x̂0 land on D_i: 0.5 off, minus 0.
    C = gits_costs(hand_trajectory(), "dev")
    assert C[0, 1].item() == pytest.approx(-0.75, abs=1e-6)
    assert C[0, 2].item() == pytest.approx(0.5, abs=1e-6)
    assert C[1, 2].item() == pytest.approx(0.5, abs=1e-6)
    assert torch.isinf(C[1, 0]) and torch.isinf(C[0, 0])
    # V[0][2] = C[0][1] + γ·C[1][2]
    assert gits_schedule(hand_trajectory(), 2, gamma=1.15).cost == pytest.approx(-0.75 + 1.15 * 0.5, abs=1e-6)
    # the former "dev" is kept as l2-endpoint: ‖step − teacher‖ in the VP states, here √0.5·‖(1.25, −0.75)‖
    endpoint = gits_costs(hand_trajectory(), "l2-endpoint")
    assert endpoint[0, 1].item() == pytest.approx(0.5 ** 0.5 * (1.25 ** 2 + 0.75 ** 2) ** 0.5, abs=1e-6)
    with pytest.raises(UserError, match="unknown DP cost"):
        gits_costs(hand_trajectory(), "lpips")


def test_deviation_measures_distance_from_each_samples_own_line():
    start = torch.tensor([[0.0, 0.0], [0.0, 0.0]]).view(2, 1, 1, 2)
    end = torch.tensor([[2.0, 0.0], [0.0, 3.0]]).view(2, 1, 1, 2)
    y = torch.tensor([[1.0, 1.0], [1.0, 1.0]]).view(2, 1, 1, 2)
    assert deviation(y, start, end).tolist() == pytest.approx([1.0, 1.0])
    assert deviation(end, start, end).tolist() == pytest.approx([0.0, 0.0])


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_model(tiny_checkpoint)


@pytest.mark.parametrize("name", [n for n, cls in SOLVERS.items() if not cls(SolverSpec(n)).stochastic(SolverSpec(n).eta)])
def test_each_deterministic_solvers_first_step_is_its_declared_one_step_form(tiny, name):
    """On a two-step plan the first step is the solver's only multi-point-free step; the run's x0 (the x̂0 of the
    second evaluation) must not change when the first step is taken by the declared one-step form."""
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    grid = torch.tensor([999.0, 420.5], dtype=torch.float64)

    def run(first: str) -> torch.Tensor:
        return sample(tiny.model, tiny.schedule, x, Plan(grid, (first, name))).x0

    assert torch.allclose(run(name), run(SOLVERS[name].one_step_form), atol=1e-6)


def test_oss_with_heuns_one_step_form_pays_its_extra_evaluations(tiny):
    traj = teacher_trajectory(tiny, grid_size=8, n=2, seed=3)
    ddim, heun = oss_schedule(tiny, traj, 3, solver="ddim"), oss_schedule(tiny, traj, 3, solver="heun")
    assert heun.nfe_spent > ddim.nfe_spent
    for result in (ddim, heun):
        assert len(result.steps) == 3 and bool((result.steps[1:] < result.steps[:-1]).all())


def test_the_dp_teacher_refuses_a_solver_that_draws_noise(tiny):
    with pytest.raises(UserError, match="deterministic"):
        teacher_trajectory(tiny, grid_size=8, n=2, solver="ddpm")
