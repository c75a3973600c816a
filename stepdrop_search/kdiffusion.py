"""k-diffusion as a client: an exported σ list run through k-diffusion 0.1.1.post1's own samplers, from our x_T.

What a user of an export runs, so the real-client tests and ``bench/export_fidelity.py`` can compare samples and FID
with ours. The ComfyUI and A1111 runtimes are emulated here with k-diffusion's samplers (both ship forks of them):
ComfyUI's nearest-step network time is k-diffusion's ``quantize=True``, and each tool's start noise is applied as
the runtime says. k-diffusion is an optional extra (``pip install 'stepdrop-search[kdiffusion]'``).

k-diffusion's package ``__init__`` imports CLIP, which needs ``pkg_resources`` (gone from setuptools ≥ 81); its
``sampling`` and ``external`` modules need neither, so they are imported without running that ``__init__``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import torch

from stepdrop_search.checkpoint import LoadedModel
from stepdrop_search.diffusion.guidance import batch_conditioning
from stepdrop_search.diffusion.runtimes import KDIFFUSION_SOLVERS, MAX_DENOISE_RTOL, Runtime
from stepdrop_search.diffusion.sampler import SampleResult, SampleStreams
from stepdrop_search.errors import UserError
from stepdrop_search.generation import noise_batches
from stepdrop_search.policies import PolicyDocument


def kdiffusion_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """(``k_diffusion.sampling``, ``k_diffusion.external``), imported without the package's ``__init__``."""
    if "k_diffusion" not in sys.modules:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or not spec.submodule_search_locations:
            raise UserError("this needs k-diffusion: pip install 'stepdrop-search[kdiffusion]'")
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = package
    return importlib.import_module("k_diffusion.sampling"), importlib.import_module("k_diffusion.external")


class CountingNetwork(torch.nn.Module):
    """Our ε network behind k-diffusion's ``inner_model(x, t)`` call, counting evaluations per sample. A
    class-conditional network gets the batch's classes (``conditioning``), as a tool's class conditioning would pass
    them."""

    def __init__(self, model: torch.nn.Module, batch: int, conditioning: tuple[torch.Tensor, ...] = ()) -> None:
        super().__init__()
        self.model, self.conditioning = model, conditioning
        self.calls = torch.zeros(batch, dtype=torch.long)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x, t, *self.conditioning)


def start_scale(runtime: Runtime, sigma_start: torch.Tensor, sigma_max: torch.Tensor) -> torch.Tensor:
    """The factor on unit noise at σ₀ in k-diffusion's space (x̃ = x/α) for ``runtime``: √(1 + σ₀²) (our exact x_T),
    σ₀ (k-diffusion's scripts, A1111), or ComfyUI's choice between the two.

    Written again on purpose, in σ as the tools write it (ComfyUI's ``EPS.noise_scaling``), not by calling
    ``Runtime.start_scale``: this module is the client side of the real-client tests, and a shared helper would let a
    wrong rule agree with itself. Only the tolerance is shared."""
    exact = (1 + sigma_start ** 2).sqrt()
    if runtime.start == "vp":
        return exact
    if runtime.start == "sigma":
        return sigma_start
    at_max = torch.isclose(sigma_max, sigma_start, rtol=MAX_DENOISE_RTOL) or bool(sigma_start > sigma_max)
    return exact if at_max else sigma_start


class ConstDenoiser(torch.nn.Module):
    """ComfyUI's CONST model sampling around a flow network (comfy/model_sampling.py): the network fed σ·1000 at the
    flow state x, and the denoised x − σ·v, counting evaluations per sample. Written from ComfyUI's rules, not from
    our adapter's conversions, for the same reason as :func:`start_scale`."""

    def __init__(self, adapter: torch.nn.Module, batch: int, conditioning: tuple[torch.Tensor, ...] = ()) -> None:
        super().__init__()
        self.net, self.T, self.conditioning = adapter.net, adapter.schedule.T, conditioning
        self.calls = torch.zeros(batch, dtype=torch.long)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        sigma = sigma.expand(x.shape[0]).to(x.dtype)
        return x - sigma.view(-1, *([1] * (x.dim() - 1))) * self.net(x, sigma * self.T, *self.conditioning)


def flow_start_scale(runtime: Runtime, s_start: torch.Tensor) -> torch.Tensor:
    """The factor on unit noise at flow time s₀: ComfyUI's CONST.noise_scaling from an empty latent, s₀ ("sigma"), or
    our exact start √((1 − s₀)² + s₀²) (the VP x_T = ε seen on the flow's path)."""
    return s_start if runtime.start == "sigma" else ((1 - s_start) ** 2 + s_start ** 2).sqrt()


@torch.no_grad()
def kdiffusion_sample(loaded: LoadedModel, document: PolicyDocument, *, n: int, seed: int = 0, batch_size: int = 256,
                      sigmas: torch.Tensor | None = None) -> SampleResult:
    """Samples of ``document``'s σ list (or ``sigmas``, e.g. as a tool parsed them) by k-diffusion's sampler for its
    solver, under its runtime's network time and start, from the x_T of ``seed``; a solver that draws noise gets our
    stream's noise of grid step i through ``noise_sampler``. Runs in the model's dtype. A class-conditional model samples
    class i mod K for sample i, unguided, as our sampler does: comparing against its null class would show the class
    conditioning as an export error (k-diffusion's samplers carry no guidance; a guided policy's σ-list exports are
    refused before this).

    A rectified flow runs as ComfyUI runs one: its σ list of flow times, the CONST denoiser, ``sample_euler`` (ddim), the
    only sampler of ComfyUI's that is ours on a flow."""
    sampling, external = kdiffusion_modules()
    runtime, solver = document.runtime, document.solver
    if solver.name not in KDIFFUSION_SOLVERS:
        raise UserError(f"k-diffusion has no {solver.name} sampler")
    if loaded.schedule.is_flow:
        return const_flow_sample(sampling, loaded, document, n=n, seed=seed, batch_size=batch_size, sigmas=sigmas)
    param = next(loaded.model.parameters())
    sigma_list = (document.policy.to_sigmas() if sigmas is None else sigmas).to(param.device, param.dtype)
    alphas_cumprod = loaded.schedule.alphas_cumprod.to(param.device, param.dtype)
    sigma_max = ((1 - alphas_cumprod[-1]) / alphas_cumprod[-1]).sqrt()
    outputs, calls = [], []
    for start, x in noise_batches(loaded.model, n, seed, batch_size):
        network = CountingNetwork(loaded.model, x.shape[0], batch_conditioning(loaded.model, start, x))
        model = external.DiscreteEpsDDPMDenoiser(network, alphas_cumprod, quantize=runtime.network_time == "nearest")
        function, kwargs = KDIFFUSION_SOLVERS[solver.name], {}
        if solver.name == "ddim" and solver.eta:
            function, kwargs = "sample_euler_ancestral", {"eta": solver.eta}
        elif solver.name == "ddpm":
            kwargs = {"eta": 1.0}
        elif solver.name == "dpmpp-2m-sde":
            kwargs = {"eta": solver.eta}
        if kwargs:
            noise = SampleStreams(seed, range(start, start + x.shape[0])).noise(x.shape[1:], len(sigma_list) - 1, x.device, x.dtype)
            drawn = iter(range(len(sigma_list) - 1))  # k-diffusion asks once per step into σ > 0, in order
            kwargs["noise_sampler"] = lambda sigma, sigma_next, noise=noise, drawn=drawn: noise.at(next(drawn))
        x = x * start_scale(runtime, sigma_list[0], sigma_max)
        outputs.append(getattr(sampling, function)(model, x, sigma_list, disable=True, **kwargs).cpu())
        calls.append(network.calls)
    steps = len(sigma_list) - 1
    return SampleResult(torch.cat(outputs), torch.cat(calls), torch.ones(n, steps, dtype=torch.bool),
                        document.policy.timesteps() if sigmas is None else torch.arange(steps))


def const_flow_sample(sampling, loaded: LoadedModel, document: PolicyDocument, *, n: int, seed: int, batch_size: int,
                      sigmas: torch.Tensor | None) -> SampleResult:
    """:func:`kdiffusion_sample` for a rectified flow (see there)."""
    if document.solver.name != "ddim" or document.solver.eta:
        raise UserError(f"ComfyUI's samplers other than euler are not ours on a flow; {document.solver.name} has no client here")
    param = next(loaded.model.parameters())
    sigma_list = (document.policy.tool_sigmas() if sigmas is None else sigmas).to(param.device, param.dtype)
    outputs, calls = [], []
    for start, x in noise_batches(loaded.model, n, seed, batch_size):
        denoiser = ConstDenoiser(loaded.model, x.shape[0], batch_conditioning(loaded.model, start, x))
        x = x * flow_start_scale(document.runtime, sigma_list[0])
        outputs.append(sampling.sample_euler(denoiser, x, sigma_list, disable=True).cpu())
        calls.append(denoiser.calls)
    steps = len(sigma_list) - 1
    return SampleResult(torch.cat(outputs), torch.cat(calls), torch.ones(n, steps, dtype=torch.bool),
                        document.policy.timesteps() if sigmas is None else torch.arange(steps))
