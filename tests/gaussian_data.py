"""Gaussian data, where the exact ε-prediction and the probability-flow ODE's solution are analytic: a problem with a
known answer for the gradient-learned steps and solvers (tests/test_gradient.py, tests/test_learned_solver.py)."""

import torch
from torch import nn

from stepdrop_search.diffusion.schedule import NoiseSchedule

SCHEDULE = NoiseSchedule()
MU, S = 0.1, 0.5  # data x0 ~ N(MU, S²) per pixel


class GaussianEps(nn.Module):
    """The exact ε-prediction for Gaussian data: ε̂ = (x − α E[x0 | x]) / σ, E[x0 | x] = μ + α s² (x − α μ)/(α² s² + σ²)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = SCHEDULE.alphas_cumprod_at(t.double()).view(-1, 1, 1, 1)
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        mean = MU + alpha * S ** 2 / (a * S ** 2 + sigma ** 2) * (x - alpha * MU)
        return ((x - alpha * mean) / sigma).float()


def exact_x0(x_T: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE keeps (x − α μ)/√(α² s² + σ²) constant: its solution from x_T in closed form."""
    a = SCHEDULE.alphas_cumprod_at(torch.tensor(float(SCHEDULE.T - 1)))
    return (MU + S * (x_T - a.sqrt() * MU) / (a * S ** 2 + 1 - a).sqrt()).float()
