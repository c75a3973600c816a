"""Gradient-learned timesteps (LD3): a known optimum recovered, the step map, and the method on a real model."""

import itertools

import pytest
import torch

from stepdrop_search.diffusion.sampler import Plan, sample
from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.errors import UserError
from stepdrop_search.loading import load_model
from stepdrop_search.search.gradient import StepLogits, learn_schedule
from tests.gaussian_data import SCHEDULE, GaussianEps, exact_x0


def test_gradient_steps_reach_the_brute_force_optimum_of_a_gaussian_problem():
    model, spec = GaussianEps(), SolverSpec("ddim")
    gen = torch.Generator().manual_seed(0)
    x_train, x_val = torch.randn(64, 1, 4, 4, generator=gen), torch.randn(64, 1, 4, 4, generator=gen)
    logits = StepLogits(SCHEDULE, 3)

    def loss(steps: torch.Tensor) -> float:
        x0 = sample(model, SCHEDULE, x_val, Plan(steps, ("ddim",) * 3), solver=spec).x0
        return float((x0 - exact_x0(x_val)).pow(2).mean())

    # brute force: both free steps on a 60-point grid uniform in log-SNR (u ∈ (0, 1))
    us = torch.linspace(0, 1, 62, dtype=torch.float64)[1:-1]
    best_loss, best_u = min((loss(torch.cat([torch.tensor([999.0], dtype=torch.float64),
                                              logits._time(logits.start + torch.stack([a, b]) * (logits.end - logits.start))])),
                             (float(a), float(b))) for a, b in itertools.combinations(us, 2))
    result = learn_schedule(model, SCHEDULE, spec, 3, train=(x_train, exact_x0(x_train)),
                            validation=(x_val, exact_x0(x_val)), epochs=40, forcing=False)
    learned_u = (logits._coordinate(result.steps[1:]) - logits.start) / (logits.end - logits.start)
    assert result.initial_validation_loss > 2 * best_loss  # uniform in log-SNR is far from the optimum
    assert result.validation_loss <= best_loss * 1.001
    assert torch.allclose(learned_u, torch.tensor(best_u, dtype=torch.float64), atol=1 / 61)
    assert result.forward_nfe > result.backward_nfe > 0


@pytest.mark.parametrize("space", ["logsnr", "sigma"])
def test_step_logits_are_ordered_start_at_T_minus_1_and_invert_a_schedule(space):
    logits = StepLogits(SCHEDULE, 5, space)
    known = torch.tensor([999.0, 700.5, 400.0, 120.25, 3.0], dtype=torch.float64)
    assert torch.allclose(logits.timesteps(logits.logits_for(known)), known, atol=1e-6)
    for raw in torch.randn(20, 5, generator=torch.Generator().manual_seed(1)) * 3:
        steps = logits.timesteps(raw)
        assert steps[0] == 999 and bool((steps[1:] < steps[:-1]).all()) and steps[-1] > 0


def test_gradient_steps_refuse_a_solver_that_draws_noise():
    x = torch.randn(4, 1, 4, 4)
    with pytest.raises(UserError, match="deterministic"):
        learn_schedule(GaussianEps(), SCHEDULE, SolverSpec("ddpm"), 3, train=(x, x), validation=(x, x))


@pytest.mark.parametrize("solver,loss", [("heun", "l2"), ("dpmpp-3m", "features")])
def test_gradient_steps_on_a_trained_model_never_end_worse_than_they_start(tiny_checkpoint, tiny_features, solver, loss):
    from stepdrop_search.objectives.features import load_features_for_model

    loaded = load_model(tiny_checkpoint)
    features = load_features_for_model(str(tiny_features), loaded.config, loaded.dataset, device=torch.device("cpu"))
    spec = SolverSpec(solver)
    steps = spec.solver.steps_for_nfe(5)
    x = torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        teacher = sample(loaded.model, loaded.schedule, x, Plan(torch.arange(999, -1, -50), ("ddim",) * 20)).x0
    init = torch.linspace(999, 0, steps, dtype=torch.float64)  # ends at t = 0: the smallest increment there
    result = learn_schedule(loaded.model, loaded.schedule, spec, steps, train=(x[:8], teacher[:8]),
                            validation=(x[8:], teacher[8:]), init=init, loss=loss, features=features, epochs=3,
                            batch_size=4)
    assert result.validation_loss <= result.initial_validation_loss and result.epochs == 3
    assert len(result.steps) == steps and bool((result.steps[1:] < result.steps[:-1]).all())
    assert all(p.requires_grad for p in loaded.model.parameters())  # the weights are unfrozen afterwards
