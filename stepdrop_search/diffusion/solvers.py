"""Solvers as pure step functions of (x_t, x̂0, ᾱ_t, ᾱ_s, …) → x_s.

All take ᾱ values rather than timesteps so one function serves every policy: ``a_t`` is the ᾱ of the
evaluated step (a scalar tensor: every active sample shares it) and ``a_s`` the ᾱ of each sample's
target (a scalar or a (n, 1, 1, 1) tensor when samples jump to different targets). ``a_s = 1`` means
"jump to x̂0", the last step of every trajectory. No function here reads a value back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stepdrop_search.errors import UserError

Tensor = torch.Tensor


def predict_x0(x: Tensor, eps: Tensor, a_t: Tensor, clamp: bool) -> tuple[Tensor, Tensor]:
    """x̂0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t, clamped to the data range for pixel models.

    Returns (x̂0, ε′) where ε′ is the noise consistent with the clamped x̂0, so that every solver stays
    on the line through x_t and x̂0 (and DDIM with η = 1 equals the ancestral step exactly).
    """
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    if not clamp:
        return x0, eps
    x0 = x0.clamp(-1, 1)
    return x0, (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()


def ddim_step(x: Tensor, x0: Tensor, eps: Tensor, a_t: Tensor, a_s: Tensor, noise: Tensor | None, eta: float) -> Tensor:
    """DDIM (Song et al. eq. 12): x_s = √ᾱ_s x̂0 + √(1 − ᾱ_s − σ²) ε + σ z,
    σ = η √((1−ᾱ_s)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_s). StepDrop's code drops σ² from the direction term."""
    if eta == 0 or noise is None:
        return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps
    var = eta**2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
    return a_s.sqrt() * x0 + (1 - a_s - var).clamp(min=0).sqrt() * eps + var.sqrt() * noise


def ancestral_step(x: Tensor, x0: Tensor, a_t: Tensor, a_s: Tensor, noise: Tensor | None) -> Tensor:
    """Sample the Markovian posterior q(x_s | x_t, x̂0) for any s < t.

    With α_{t|s} = ᾱ_t/ᾱ_s, β_{t|s} = 1 − α_{t|s}: mean = √ᾱ_s β_{t|s}/(1−ᾱ_t) x̂0 + √α_{t|s}(1−ᾱ_s)/(1−ᾱ_t) x_t,
    variance = β_{t|s}(1−ᾱ_s)/(1−ᾱ_t). For s = t − 1 this is DDPM's ancestral step; for larger gaps it is the
    skipped-step jump of "Pretrained diffusion models are inherently skipped-step samplers".
    """
    alpha_ts = a_t / a_s
    beta_ts = 1 - alpha_ts
    mean = a_s.sqrt() * beta_ts / (1 - a_t) * x0 + alpha_ts.sqrt() * (1 - a_s) / (1 - a_t) * x
    if noise is None:
        return mean
    return mean + (beta_ts * (1 - a_s) / (1 - a_t)).sqrt() * noise


def log_snr(a: Tensor) -> Tensor:
    return torch.log(a) - torch.log1p(-a)


def dpmpp_2m_step(x: Tensor, x0: Tensor, a_t: Tensor, a_s: Tensor, prev_x0: Tensor, h_prev: Tensor) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, multistep in λ = log-SNR/2.

    h = λ_s − λ_t; first order (= DDIM) where ``h_prev`` is not finite (no history yet), otherwise
    D = (1 + 1/(2r)) x̂0 − 1/(2r) x̂0_prev with r = h_prev/h; x_s = (σ_s/σ_t) x_t − α_s (e^{−h} − 1) D.
    """
    lam_t, lam_s = log_snr(a_t) / 2, log_snr(a_s) / 2
    h = lam_s - lam_t
    has_history = torch.isfinite(h_prev)
    half_inv_r = torch.where(has_history, h / (2 * torch.where(has_history, h_prev, h)), torch.zeros_like(h))
    d = (1 + half_inv_r) * x0 - half_inv_r * prev_x0
    sigma_ratio = ((1 - a_s) / (1 - a_t)).sqrt()
    return sigma_ratio * x - a_s.sqrt() * torch.expm1(-h) * d


#: "ddpm" is the ancestral posterior step; with gaps larger than one it is the skipped-step jump.
SOLVERS = ("ddim", "ddpm", "dpmpp-2m")
#: Solvers with a stochasticity knob η; the others would silently ignore one.
ETA_SOLVERS = ("ddim",)


@dataclass(frozen=True)
class SolverSpec:
    """Which solver a sampler uses, and its one knob (η for DDIM)."""

    name: str = "ddim"
    eta: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in SOLVERS:
            raise UserError(f"unknown solver {self.name!r}; choose one of {', '.join(SOLVERS)}")
        if not 0.0 <= self.eta <= 1.0:
            raise UserError(f"eta must be in [0, 1], got {self.eta}")
        if self.eta and self.name not in ETA_SOLVERS:
            raise UserError(f"solver {self.name} has no η (eta {self.eta} would be ignored); η applies to "
                            f"{', '.join(ETA_SOLVERS)} only")

    def to_dict(self) -> dict:
        return {"name": self.name, "eta": self.eta}
