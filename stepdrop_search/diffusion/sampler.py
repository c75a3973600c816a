"""Deterministic DDIM sampling over a given set of timesteps (η = 0, x̂0 clamped to [−1, 1])."""

from __future__ import annotations

import torch

from stepdrop_search.diffusion.schedule import NoiseSchedule


def uniform_timesteps(T: int, nfe: int) -> torch.Tensor:
    """'Trailing' spacing: round(T − k·T/nfe) − 1 for k = 0..nfe−1, so the first evaluated step is T−1."""
    return (T - torch.arange(nfe, dtype=torch.float64) * T / nfe).round().long() - 1


@torch.no_grad()
def ddim_sample(model: torch.nn.Module, schedule: NoiseSchedule, x: torch.Tensor,
                timesteps: torch.Tensor) -> torch.Tensor:
    """Run DDIM from pure noise ``x`` through strictly decreasing ``timesteps``; the last jump goes to x̂0."""
    a = schedule.alphas_cumprod.to(device=x.device, dtype=torch.float32)
    ts = timesteps.to(x.device)
    a_next = torch.cat([a[ts[1:]], torch.ones(1, device=x.device)])
    for i in range(len(ts)):
        eps = model(x, ts[i].expand(x.shape[0]))
        x0 = ((x - (1 - a[ts[i]]).sqrt() * eps) / a[ts[i]].sqrt()).clamp(-1, 1)
        x = a_next[i].sqrt() * x0 + (1 - a_next[i]).sqrt() * eps
    return x
