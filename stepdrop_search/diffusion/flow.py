"""Rectified-flow models behind the VP interface every sampler and solver here uses (see ``diffusion.schedule``).

A flow network v_θ(y, τ) predicts the velocity ε − x0 of the path y_s = (1 − s) x0 + s ε, fed τ = s·T (diffusers'
``FlowMatchEulerDiscreteScheduler`` timestep, ComfyUI's CONST sampling). Dividing the path by c_s = √((1 − s)² + s²)
gives a VP state with the same x0 and ε, so :class:`FlowAdapter` turns the network into ε_θ(x, t) over the ``flow``
noise schedule: y = c_s x, ε = y + (1 − s) v (since y − s ε = (1 − s) x0 and v = ε − x0).

Also here: SD3's time shift (Esser et al. 2024, eq. 23; diffusers' ``shift``), which flow tools apply to their σ, and
the logit-normal draw of s that flow training uses.
"""

from __future__ import annotations

import torch

from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.errors import UserError

Tensor = torch.Tensor


def time_shift(s: Tensor, shift: float) -> Tensor:
    """s′ = shift·s / (1 + (shift − 1)·s): more of a schedule's steps at high noise for shift > 1 (SD3 uses 3)."""
    return shift * s / (1 + (shift - 1) * s)


def inverse_time_shift(s: Tensor, shift: float) -> Tensor:
    """The s whose :func:`time_shift` is ``s`` (what to hand a tool that shifts again to get ``s`` back)."""
    return s / (shift - (shift - 1) * s)


#: Python a user runs on an exported ``SIGMAS`` list (flow times, without the trailing 0) before handing it to a flow
#: scheduler of their own that shifts the σ it is given: :func:`inverse_time_shift` with that scheduler's shift k.
#: diffusers 0.42's FlowMatchEulerDiscreteScheduler shifts by ``shift`` = k, or with use_dynamic_shifting by
#: time_shift(mu): k = e^mu when time_shift_type is "exponential" (its default), k = mu when it is "linear".
PRE_SHIFT_CODE = ("k = scheduler.config.shift if not scheduler.config.use_dynamic_shifting else "
                  "(math.exp(mu) if scheduler.config.time_shift_type == 'exponential' else mu)\n"
                  "SIGMAS = [s / (k - (k - 1) * s) for s in SIGMAS]")


def check_shift(shift: float, where: str) -> None:
    if not isinstance(shift, (int, float)) or isinstance(shift, bool) or not 0 < float(shift) < float("inf"):
        raise UserError(f"{where}: the time shift must be a positive finite number, got {shift!r}")


def logit_normal(n: int, generator: torch.Generator) -> Tensor:
    """Flow times sigmoid(z), z ~ N(0, 1): SD3's training-time density (its "rf/lognorm(0.00, 1.00)", the best of the
    samplers its Table 1 compares), which spends the training on middle noise levels."""
    return torch.sigmoid(torch.randn(n, generator=generator, dtype=torch.float64))


class FlowAdapter(torch.nn.Module):
    """ε_θ(x, t) of a velocity network over a ``flow`` schedule (see the module docstring). ``net(y, τ)`` is our U-Net or
    a diffusers UNet2DModel's forward; ``config`` is passed through for the sampler's shapes."""

    def __init__(self, net: torch.nn.Module, schedule: NoiseSchedule) -> None:
        super().__init__()
        if not schedule.is_flow:
            raise ValueError("FlowAdapter needs a flow noise schedule")
        self.net, self.schedule = net, schedule
        self.config = net.config

    def velocity(self, y: Tensor, s: Tensor, classes: Tensor | None = None) -> Tensor:
        """The network's own output at flow states ``y`` and flow times ``s`` ((n,) float64), for ``classes`` when the
        network is class-conditional."""
        tau = (s * self.schedule.T).to(torch.float32)
        return self.net(y, tau) if classes is None else self.net(y, tau, classes)

    def forward(self, x: Tensor, t: Tensor, classes: Tensor | None = None) -> Tensor:
        s = self.schedule.flow_time(t.to(x.device))
        shape = (-1, *([1] * (x.dim() - 1)))
        s_b = s.view(shape)
        y = (x * self.schedule.model_scale(t.to(x.device)).view(shape).to(x.dtype))
        v = self.velocity(y, s, classes)
        return (y + (1 - s_b).to(x.dtype) * v).to(x.dtype)
