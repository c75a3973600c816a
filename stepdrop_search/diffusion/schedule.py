"""Noise schedules: discrete DDPM ones — linear (Ho et al.), cosine (Nichol & Dhariwal), scaled-linear (linear in √β,
the latent-diffusion schedule diffusers calls ``scaled_linear``) — and rectified flow.

A schedule is a small immutable value (kind, T, parameters). Everything else — β, ᾱ, σ, log-SNR — is
derived from it, so a checkpoint or a policy file only needs to store :meth:`NoiseSchedule.to_dict`
and can be checked against another one with :attr:`NoiseSchedule.hash`.

**One abstraction for both families.** Samplers, solvers and policies see a VP process x_t = α_t x0 + σ_t ε with
α = √ᾱ_t, σ = √(1 − ᾱ_t) and log-SNR log(α_t²/σ_t²) (what :attr:`log_snr` holds; DPM-Solver's λ is half of it) over
steps t in [0, T−1]. A rectified-flow model's path y_s = (1 − s) x0 + s ε (SD3, Flux) is that process scaled:
y_s = c_s x_t with c_s = √((1 − s)² + s²), the same x0 and ε, and log-SNR 2 log((1 − s)/s). So the ``flow`` kind is a VP
schedule with ᾱ_t = (1 − s)²/c_s², and a flow network joins the sampler through an adapter that scales the state by c_s
and turns its velocity into ε (``diffusion.flow.FlowAdapter``): every solver written in x̂0/λ form runs a flow model
unchanged, and DDIM *is* the flow's Euler step (both move along the line through the state and x̂0). Step t of T sits at
s_t = (t + 1)/(T + 1): T/(T + 1) at the top rather than diffusers' and ComfyUI's 1, because s = 1 is ᾱ = 0, where
x̂0 = (x − σ ε)/α has no value. Our start there is c·noise (c ≈ 1 − 1/(T + 1)), theirs noise at s = 1; the runtimes
and exports account for it (``diffusion.runtimes``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import cached_property

import torch

from stepdrop_search.errors import UserError

# The fields each kind's β is computed from (besides T): what to_dict stores and the hash covers.
KIND_PARAMETERS = {"linear": ("beta_start", "beta_end"), "scaled_linear": ("beta_start", "beta_end"), "cosine": ("cosine_s",),
                   "flow": ()}
SCHEDULE_KINDS = tuple(KIND_PARAMETERS)
#: the kinds whose model is a rectified flow (velocity network, path (1 − s) x0 + s ε); the others are VP (ε networks)
FLOW_KINDS = ("flow",)


@dataclass(frozen=True)
class NoiseSchedule:
    """β_t for t = 0..T-1 and its derived views, all as float64 CPU tensors.

    Only the fields in ``KIND_PARAMETERS[kind]`` (and T) shape β: ``beta_start``/``beta_end`` for ``linear`` and
    ``scaled_linear``, ``cosine_s`` for ``cosine``.
    """

    kind: str = "linear"
    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cosine_s: float = 0.008

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise UserError(f"unknown noise schedule {self.kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}")
        if not isinstance(self.T, int) or self.T < 2:
            raise UserError(f"noise schedule T must be an integer ≥ 2, got {self.T!r}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise UserError("noise schedule needs 0 < beta_start < beta_end < 1")

    @property
    def is_flow(self) -> bool:
        """Whether the model is a rectified flow (see the module docstring); its β are ᾱ's ratios, not parameters."""
        return self.kind in FLOW_KINDS

    def flow_time(self, t: torch.Tensor) -> torch.Tensor:
        """A flow schedule's s = (t + 1)/(T + 1) at steps ``t`` (float64, differentiable): the σ of the path
        (1 − s) x0 + s ε, which diffusers' and ComfyUI's flow samplers take as their σ."""
        return (torch.as_tensor(t).double() + 1) / (self.T + 1)

    def flow_step(self, s: torch.Tensor) -> torch.Tensor:
        """The real step t of flow time ``s`` (the inverse of :meth:`flow_time`), not clamped."""
        return torch.as_tensor(s, dtype=torch.float64) * (self.T + 1) - 1

    def model_scale(self, t: torch.Tensor) -> torch.Tensor:
        """c_t, the factor from the VP state the sampler keeps to the state the network sees: 1 for VP models,
        √((1 − s)² + s²) for a flow model (float64, differentiable)."""
        t = torch.as_tensor(t)
        if not self.is_flow:
            return torch.ones(t.shape, dtype=torch.float64, device=t.device)
        s = self.flow_time(t)
        return ((1 - s) ** 2 + s ** 2).sqrt()

    @cached_property
    def betas(self) -> torch.Tensor:
        if self.is_flow:  # the per-step β whose products are the flow's ᾱ (ancestral steps between grid steps)
            a = self.alphas_cumprod
            return 1 - a / torch.cat([a.new_ones(1), a[:-1]])
        if self.kind == "linear":
            return torch.linspace(self.beta_start, self.beta_end, self.T, dtype=torch.float64)
        if self.kind == "scaled_linear":
            return torch.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, self.T, dtype=torch.float64) ** 2
        # Nichol & Dhariwal: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T)+s)/(1+s)·π/2); β clipped at 0.999.
        steps = torch.arange(self.T + 1, dtype=torch.float64) / self.T
        f = torch.cos((steps + self.cosine_s) / (1 + self.cosine_s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)

    @cached_property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t = Π_{s≤t} (1 − β_s); for a flow, (1 − s)²/((1 − s)² + s²) at s = (t + 1)/(T + 1)."""
        if self.is_flow:
            return self.flow_alphas_cumprod(torch.arange(self.T))
        return torch.cumprod(self.alphas, dim=0)

    def flow_alphas_cumprod(self, t: torch.Tensor) -> torch.Tensor:
        s = self.flow_time(t)
        return (1 - s) ** 2 / ((1 - s) ** 2 + s ** 2)

    @cached_property
    def sigmas(self) -> torch.Tensor:
        """EDM-style noise level σ_t = √((1 − ᾱ_t)/ᾱ_t) (the x/√ᾱ parameterisation)."""
        a = self.alphas_cumprod
        return ((1 - a) / a).sqrt()

    @cached_property
    def log_snr(self) -> torch.Tensor:
        """λ_t = log(ᾱ_t / (1 − ᾱ_t)), strictly decreasing in t."""
        a = self.alphas_cumprod
        return torch.log(a) - torch.log1p(-a)

    def log_snr_at(self, t: torch.Tensor) -> torch.Tensor:
        """λ at timesteps ``t`` (float64): the table for integer t; for real t in [0, T−1], linear in λ between the
        neighbouring steps — the convention of k-diffusion's ``t_to_sigma`` and diffusers' ``_sigma_to_t`` (linear
        in log σ = −λ/2), so continuous-time schedules agree with them."""
        t = torch.as_tensor(t)
        table = self.table(self.log_snr, t.device)
        if not t.is_floating_point():
            return table[t]
        if self.is_flow:  # exact in continuous time: λ = 2 log((1 − s)/s)
            s = self.flow_time(t.double().clamp(0, self.T - 1))
            return 2 * (torch.log1p(-s) - torch.log(s))
        t = t.double().clamp(0, self.T - 1)
        low = t.floor().long().clamp(max=self.T - 2)
        weight = t - low
        return (1 - weight) * table[low] + weight * table[low + 1]

    def alphas_cumprod_at(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ at timesteps ``t`` (float64): indexed for integer t (exactly the discrete schedule, so integer policies
        sample as they always did), for real t the sigmoid of the interpolated λ (:meth:`log_snr_at`)."""
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            return self.table(self.alphas_cumprod, t.device)[t]
        return torch.sigmoid(self.log_snr_at(t))

    @cached_property
    def _device_tables(self) -> dict:
        return {}

    def table(self, values: torch.Tensor, device: torch.device) -> torch.Tensor:
        """A float64 table of this schedule (ᾱ or λ) on ``device``: copied there once, so that a model that looks up ᾱ
        at its t on an accelerator (diffusers v- and x0-prediction adapters) reads no value back to the host."""
        if device.type == "cpu":
            return values
        key = (id(values), str(device))
        if key not in self._device_tables:
            self._device_tables[key] = values.to(device)
        return self._device_tables[key]

    def sigma_at(self, t: torch.Tensor) -> torch.Tensor:
        """σ = √((1 − ᾱ)/ᾱ) = e^{−λ/2} at timesteps ``t`` (the k-diffusion noise level), on the same interpolation."""
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            return self.sigmas[t]
        return torch.exp(-self.log_snr_at(t) / 2)

    def timestep_at_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """The real t whose interpolated log-SNR is ``lam`` (the inverse of :meth:`log_snr_at`; clamped to [0, T−1]).

        Piecewise linear in torch, so gradients flow from t back to λ (schedules learned in log-SNR or σ)."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        if self.is_flow:  # s = 1/(1 + e^{λ/2})
            return self.flow_step(torch.sigmoid(-lam / 2)).clamp(0, self.T - 1)
        neg = -self.log_snr  # increasing in t
        x = (-lam).clamp(float(neg[0]), float(neg[-1]))
        high = torch.searchsorted(neg, x.detach().contiguous()).clamp(1, self.T - 1)
        low = high - 1
        return low + (x - neg[low]) / (neg[high] - neg[low])

    def timestep_at_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """The real t of noise level σ > 0 (the inverse of :meth:`sigma_at`: λ = −2 log σ)."""
        return self.timestep_at_log_snr(-2 * torch.as_tensor(sigma, dtype=torch.float64).log())

    def skip_alphas_cumprod(self, skip: int) -> torch.Tensor:
        """ᾱ_skip^t = Π_{s=t−skip+1..t} α_s (S2-DMs' α_skip), truncated at s = 0 for small t."""
        log_alpha = torch.log(self.alphas)
        csum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(log_alpha, 0)])
        t = torch.arange(self.T)
        lower = (t - skip + 1).clamp(min=0)
        return torch.exp(csum[t + 1] - csum[lower])

    def to_dict(self) -> dict:
        """kind, T and exactly the parameters this kind's β reads: every one that changes β must be stored (and
        hashed), and none that does not, so that the pinned linear and cosine hashes stay what files record."""
        return {"kind": self.kind, "T": self.T, **{name: getattr(self, name) for name in KIND_PARAMETERS[self.kind]}}

    @classmethod
    def from_dict(cls, data: dict) -> NoiseSchedule:
        """Requires the kind's own parameters: a default filled in for a missing one would silently give other β
        (scaled_linear files from before its betas were stored lack them)."""
        if not isinstance(data, dict):
            raise UserError(f"noise schedule must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"kind", "T", "beta_start", "beta_end", "cosine_s"}
        if unknown:
            raise UserError(f"noise schedule has unknown fields: {', '.join(sorted(unknown))}")
        kind = data.get("kind")
        missing = [name for name in KIND_PARAMETERS[kind] if name not in data] if kind in SCHEDULE_KINDS else []
        if missing:
            raise UserError(f"noise schedule ({kind}) lacks {', '.join(missing)}, which its β depend on; "
                            "re-create the file with this version")
        return cls(**data)

    @cached_property
    def hash(self) -> str:
        """Stable short hash of the defining parameters (not of floating-point tensors)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]
