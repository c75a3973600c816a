"""Runtimes: the conventions, besides the σ list and the solver, that decide which samples a tool draws.

Two tools given the same σ list and the same solver still sample different images when they differ in any of:

* **clamp** — whether x̂0 is clipped to the data range [−1, 1] at every evaluation (diffusers' ``clip_sample``);
* **network time** — whether the network is fed the real t of a continuous-time step or the nearest integer step;
* **Heun pattern** — which intervals a Heun step corrects (a second evaluation at the end of the interval);
* **start** — how the start noise is scaled at the first σ: the exact VP state x_T = ε (x̃ = ε·√(1 + σ₀²)), or
  x̃ = ε·σ₀ as k-diffusion's example scripts and A1111 do, or ComfyUI's rule (the former only when σ₀ is the
  model's σ_max);
* **solvers** — which of our solvers the tool has, under its own name;
* **family** — which models the tool's conventions are for: ε models on β schedules ("vp"), rectified flows ("flow"),
  or both (our own sampler). A flow tool's σ is the flow time s, and its start, network time and solvers differ.

A :class:`Runtime` names one such set and the sampler follows it, so a number measured "under comfyui" is what a
ComfyUI user gets. NFE follows from the same conventions: it is counted by wrapping the network, and a Heun budget
is a ceiling in the runtime's own pattern. Every policy file records the runtime its numbers were measured under,
and an export refuses a target whose runtime would sample something else (:func:`export_differences`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from stepdrop_search.errors import UserError, unknown_name

#: network time: the real t of a continuous-time step, or the nearest integer step (in log σ, which for our log-σ
#: interpolation is the same as rounding t)
NETWORK_TIMES = ("continuous", "nearest")
#: Heun: correct every interval whose end is not x̂0 (k-diffusion, ComfyUI, A1111, diffusers: K steps cost 2K − 1), or
#: that and, at an even budget, leave the first interval uncorrected too (this project before 2026-12: K steps cost 2K − 2)
HEUN_PATTERNS = ("all-but-last", "euler-first")
#: start noise: "vp" x̃ = ε·√(1 + σ₀²) (x_T = ε exactly), "sigma" x̃ = ε·σ₀, "vp-at-max" vp when σ₀ ≥ σ_max, else sigma
STARTS = ("vp", "sigma", "vp-at-max")
#: A start scale this close to another is the same start: x̃ = ε·σ₀ and ε·√(1 + σ₀²) differ by less than 1e-4 once
#: σ₀ > 70 (our σ_max is 157), far inside the float32 sample tolerance of the real-client tests.
START_TOLERANCE = 1e-4
#: ComfyUI's ``max_denoise`` test: ``math.isclose(sigma_max, sigma, rel_tol=1e-05) or sigma > sigma_max``
MAX_DENOISE_RTOL = 1e-5
#: the model families a runtime's conventions are for (see the module docstring)
FAMILIES = ("any", "vp", "flow")


@dataclass(frozen=True)
class Runtime:
    """One tool's sampling conventions (see the module docstring). ``solvers`` maps each of our solvers the tool has
    to its own name for it; None means every registered solver (our own sampler). ``source`` says where each
    convention was read."""

    name: str
    description: str
    clamp: bool = False
    network_time: str = "continuous"
    heun: str = "all-but-last"
    start: str = "vp"
    solvers: dict[str, str] | None = field(default=None, hash=False, compare=False)
    source: str = ""
    #: a solver the tool has only at one η (diffusers' SDE-DPM-Solver++ is η = 1): our name → that η
    fixed_eta: dict[str, float] = field(default_factory=dict, hash=False, compare=False)
    family: str = "any"

    def __post_init__(self) -> None:
        for value, allowed, what in ((self.network_time, NETWORK_TIMES, "network time"), (self.heun, HEUN_PATTERNS, "Heun pattern"),
                                     (self.start, STARTS, "start"), (self.family, FAMILIES, "family")):
            if value not in allowed:
                raise ValueError(f"runtime {self.name}: {what} {value!r} is not one of {', '.join(allowed)}")

    @property
    def spends_even_heun_budgets(self) -> bool:
        """Whether Heun spends an even NFE exactly (by leaving its first interval uncorrected)."""
        return self.heun == "euler-first"

    def has_solver(self, name: str) -> bool:
        return self.solvers is None or name in self.solvers

    def solver_names(self, registered) -> tuple[str, ...]:
        """The registered solver names this runtime has, in registry order."""
        return tuple(n for n in registered if self.has_solver(n))

    def check_solver(self, name: str, eta: float | None = None) -> None:
        """One line when the runtime has no such solver (or not at that η)."""
        if not self.has_solver(name):
            raise UserError(f"runtime {self.name} has no {name} solver; it has {', '.join(self.solvers)} "
                            "(or pick another --runtime: `stepdrop` has every solver)")
        if name in self.fixed_eta and eta is not None and eta != self.fixed_eta[name]:
            raise UserError(f"runtime {self.name} runs {name} at η = {self.fixed_eta[name]:g} only, not {eta:g}")

    def check_family(self, flow: bool) -> None:
        """One line when this tool's conventions are for the other model family (a flow tool reads σ as the flow time)."""
        if self.family != "any" and (self.family == "flow") != flow:
            names = ", ".join(name for name, r in RUNTIMES.items() if r.family in ("any", "flow" if flow else "vp"))
            raise UserError(f"runtime {self.name} is for {'rectified-flow' if self.family == 'flow' else 'ε'} models and this "
                            f"model is {'a rectified flow' if flow else 'an ε model'}; its runtimes: {names}")

    def tool_name(self, solver: str) -> str:
        return solver if self.solvers is None else self.solvers[solver]

    def start_scale(self, abar_start: torch.Tensor, abar_max: torch.Tensor) -> torch.Tensor:
        """The factor on the VP start state x_T = ε at ᾱ(t₀) that gives this runtime's start (0-dim, float64).

        x̃ = x/α, so x̃ = ε·σ₀ is x = ε·α₀σ̃₀ = ε·√(1 − ᾱ₀); "vp" is 1. ``abar_max`` is ᾱ at the model's last step (σ_max),
        which ComfyUI's rule compares against."""
        sigma_scale = (1 - abar_start).sqrt()
        if self.start == "vp":
            return torch.ones_like(abar_start)
        if self.start == "sigma" or not at_sigma_max(abar_start, abar_max):
            return sigma_scale
        return torch.ones_like(abar_start)

    def network_time_of(self, t: torch.Tensor) -> torch.Tensor:
        """The time the network is fed for a step at ``t`` (the solver's coefficients keep the real t)."""
        return t.round() if self.network_time == "nearest" and t.is_floating_point() else t

    def to_dict(self) -> dict:
        """The conventions as a policy file records them (the name is what is read back; the rest is for people)."""
        return {"name": self.name, "clamp": self.clamp, "network_time": self.network_time, "heun": self.heun,
                "start": self.start}


def at_sigma_max(abar_start: torch.Tensor, abar_max: torch.Tensor) -> bool:
    """ComfyUI's full-denoise test on σ̃₀ against the model's σ̃_max (a host read, once per run)."""
    sigma, sigma_max = float(((1 - abar_start) / abar_start).sqrt()), float(((1 - abar_max) / abar_max).sqrt())
    return math.isclose(sigma_max, sigma, rel_tol=MAX_DENOISE_RTOL) or sigma > sigma_max


#: The solvers k-diffusion 0.1.1.post1 (and the forks ComfyUI and A1111/Forge ship) has for ours, by its function
#: name. DDIM η = 0 is ``sample_euler``; DDIM η > 0 and the DDPM posterior step (DDIM η = 1) are
#: ``sample_euler_ancestral(eta=η)``, which is the same step in σ̃ (get_ancestral_step's σ_up² = η²σ̃_s²(σ̃_t² − σ̃_s²)/σ̃_t²
#: is DDIM's σ²/ᾱ_s). Not here: iPNDM and UniPC (not in k-diffusion; ComfyUI's own ``ipndm`` takes an Adams–Bashforth
#: step to σ = 0 instead of returning x̂0, and its ``uni_pc`` is another implementation), and DPM-Solver++(3M):
#: ``sample_dpmpp_3m_sde`` warms up with a φ₂ second-order step where ours takes diffusers' midpoint one.
KDIFFUSION_SOLVERS = {"ddim": "sample_euler", "ddpm": "sample_euler_ancestral", "heun": "sample_heun",
                      "dpmpp-2m": "sample_dpmpp_2m", "dpmpp-2m-sde": "sample_dpmpp_2m_sde"}
#: the same samplers by the names ComfyUI's KSampler / KSamplerSelect list (``comfy/samplers.py`` KSAMPLER_NAMES). Only the
#: deterministic ones: ComfyUI's euler_ancestral and dpmpp_2m_sde draw their noise inside (a seeded generator, a Brownian
#: tree), so no export could reproduce samples measured here; they would be the same sampler in law only.
COMFYUI_SAMPLERS = {"ddim": "euler", "heun": "heun", "dpmpp-2m": "dpmpp_2m"}
#: and by A1111/Forge's sampler names (``modules/sd_samplers_kdiffusion.py`` samplers_k_diffusion); deterministic ones,
#: for the same reason
A1111_SAMPLERS = {"ddim": "Euler", "heun": "Heun", "dpmpp-2m": "DPM++ 2M"}
#: η-less use of a solver that has η: DDIM is Euler at η = 0 only in these tools
DETERMINISTIC_DDIM = {"ddim": 0.0}
#: the diffusers scheduler class that takes a custom list and steps each of our solvers (see ``interop.diffusers_recipe``)
DIFFUSERS_SCHEDULERS = {"ddim": "EulerDiscreteScheduler", "heun": "HeunDiscreteScheduler",
                        "dpmpp-2m": "DPMSolverMultistepScheduler", "dpmpp-3m": "DPMSolverMultistepScheduler",
                        "dpmpp-2m-sde": "DPMSolverMultistepScheduler"}

RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("stepdrop", "this project's sampler, with the conventions of the σ-list tools: no clamp, real t, Heun corrects "
            "every interval but the last, exact VP start; every solver",
            source="stepdrop_search/diffusion/sampler.py"),
    Runtime("stepdrop-clamp", "this project's sampler with x̂0 clipped to [-1, 1] at every evaluation (diffusers' "
            "clip_sample=True, the default of its DDIM/DDPM schedulers); every solver", clamp=True,
            source="diffusers schedulers/scheduling_ddim.py and scheduling_ddpm.py: clip_sample=True, clip_sample_range=1.0"),
    Runtime("legacy", "what this project measured before 2026-12-04 (policy files without a runtime): x̂0 clamp, and Heun "
            "at an even NFE leaves its first interval uncorrected", clamp=True, heun="euler-first",
            source="stepdrop-search before schema 3 (diffusion/solvers/heun.py, sampler clamp=True)"),
    # k_diffusion/sampling.py (0.1.1.post1): sample_* never clip `denoised`; sample_heun corrects `if sigmas[i + 1] != 0`;
    # external.py DiscreteEpsDDPMDenoiser: sigma_to_t interpolates log σ (quantize=False); the exact start of our x_T is
    # noise * (1 + sigmas[0]**2) ** 0.5 (the example scripts' noise * sigmas[0] is the "sigma" start).
    Runtime("k-diffusion", "k-diffusion 0.1.1.post1's samplers on an exported σ list, started at noise·√(1 + σ₀²)",
            solvers=KDIFFUSION_SOLVERS, family="vp", source="k_diffusion/sampling.py, k_diffusion/external.py (0.1.1.post1)"),
    # comfy/model_sampling.py ModelSamplingDiscrete.timestep: nearest t in log σ (argmin |log σ − log σ_t|);
    # EPS.noise_scaling: noise * sqrt(1 + σ²) if max_denoise else noise * σ; comfy/samplers.py KSAMPLER.max_denoise:
    # isclose(σ_max, σ₀, rel_tol=1e-5) or σ₀ > σ_max; comfy/k_diffusion/sampling.py: no clamp, sample_heun as k-diffusion.
    Runtime("comfyui", "ComfyUI's KSampler/SamplerCustom on a SIGMAS input: network fed the nearest integer t, start "
            "noise·√(1 + σ₀²) only when σ₀ is the model's σ_max (else noise·σ₀)", network_time="nearest", start="vp-at-max",
            solvers=COMFYUI_SAMPLERS, fixed_eta=DETERMINISTIC_DDIM, family="vp",
            source="comfy/model_sampling.py, comfy/samplers.py, comfy/k_diffusion/sampling.py"),
    # modules/sd_samplers_kdiffusion.py: CompVisDenoiser(quantize=opts.enable_quantization), default False (real t);
    # KDiffusionSampler.sample: x = x * sigmas[0] unless opts.sgm_noise_multiplier (default False).
    Runtime("a1111", "AUTOMATIC1111/Forge's k-diffusion samplers with a custom σ list: real t, start noise·σ₀",
            start="sigma", solvers=A1111_SAMPLERS, fixed_eta=DETERMINISTIC_DDIM, family="vp",
            source="modules/sd_samplers_kdiffusion.py (A1111 1.10, Forge)"),
    # diffusers 0.42: EulerDiscreteScheduler.set_timesteps(sigmas=) (_sigma_to_t interpolates log σ; no clipping),
    # HeunDiscreteScheduler (2N − 1 timesteps for N steps), DPMSolverMultistepScheduler(timesteps=, final_sigmas_type="zero",
    # lower_order_final=False, thresholding=False); init_noise_sigma √(σ_max² + 1) with timestep_spacing "leading".
    # Not here: UniPC, iPNDM and DDIM (η > 0: EulerAncestral) take no custom list; DDPMScheduler draws its own noise (its
    # step has no variance_noise argument, DPMSolverMultistep's has).
    Runtime("diffusers", "diffusers 0.42 schedulers that take a custom list (Euler, Heun, DPM-Solver multistep) with the "
            "scheduler config the export writes", solvers=DIFFUSERS_SCHEDULERS, fixed_eta={**DETERMINISTIC_DDIM, "dpmpp-2m-sde": 1.0},
            family="vp", source="diffusers schedulers/scheduling_euler_discrete.py, scheduling_heun_discrete.py, "
                                "scheduling_dpmsolver_multistep.py (0.42)"),
    # comfy/model_sampling.py ModelSamplingDiscreteFlow (SD3, Flux): timestep(σ) = σ·1000, no rounding; CONST.noise_scaling
    # = σ·noise + (1 − σ)·latent_image (σ₀·noise from an empty latent, our "sigma" start: y = c x with x = ε·√(1 − ᾱ₀) is
    # s₀·ε); calculate_denoised x0 = x − σ·v. Its euler is the flow's Euler step, which is our DDIM on any path; its heun
    # corrects in s where ours corrects in σ̃ = s/(1 − s), and its dpmpp_2m's exponential step is the VE one (x = x0 + σ ε),
    # so neither is ours on a flow. The model node's shift moves its own schedulers' σ, never a custom SIGMAS list.
    Runtime("comfyui-flow", "ComfyUI on a rectified flow (ModelSamplingSD3/Flux) with a SIGMAS input of flow times s: "
            "network fed s·1000, start σ₀·noise, euler", start="sigma", solvers={"ddim": "euler"}, fixed_eta=DETERMINISTIC_DDIM,
            family="flow", source="comfy/model_sampling.py (ModelSamplingDiscreteFlow, CONST), comfy/k_diffusion/sampling.py"),
    # diffusers 0.42 FlowMatchEulerDiscreteScheduler: set_timesteps(sigmas=…) shifts them by `shift` (or by `mu` with
    # use_dynamic_shifting), appends 0, and feeds the network σ·num_train_timesteps; step is the flow's Euler step. Its
    # init_noise_sigma is 1 (latents = noise at σ = 1); the export's code scales the latents to our start at σ₀ < 1.
    # FlowMatchHeunDiscreteScheduler.set_timesteps takes a step count only, so no flow Heun here.
    Runtime("diffusers-flow", "diffusers 0.42's FlowMatchEulerDiscreteScheduler (shift 1, no dynamic shifting) with "
            "set_timesteps(sigmas=…) and the latents scaled as the export says", solvers={"ddim": "FlowMatchEulerDiscreteScheduler"},
            fixed_eta=DETERMINISTIC_DDIM, family="flow",
            source="diffusers schedulers/scheduling_flow_match_euler_discrete.py (0.42)"),
)}
DEFAULT_RUNTIME = RUNTIMES["stepdrop"]
#: what a policy file without a "runtime" field (schemas 1 and 2) was measured under
UNRECORDED_RUNTIME = RUNTIMES["legacy"]
#: the runtime each text export runs under, for ε models and for rectified flows (None: no such tool for flows:
#: k-diffusion 0.1.1 has no flow denoiser wrapper, and A1111/Forge's flow sampling is not checked here)
EXPORT_RUNTIMES = {"sigmas": "k-diffusion", "comfyui": "comfyui", "a1111": "a1111", "diffusers": "diffusers"}
FLOW_EXPORT_RUNTIMES = {"sigmas": None, "comfyui": "comfyui-flow", "a1111": None, "diffusers": "diffusers-flow"}


def runtime_named(name: str | Runtime | None, default: Runtime = DEFAULT_RUNTIME) -> Runtime:
    """The preset called ``name`` (None: ``default``); one line listing the names otherwise."""
    if isinstance(name, Runtime):
        return name
    if name is None:
        return default
    if name not in RUNTIMES:
        raise unknown_name("runtime", name, RUNTIMES)
    return RUNTIMES[name]


def convention_differences(measured: Runtime, target: Runtime, *, steps: torch.Tensor, abar_start: torch.Tensor,
                           abar_max: torch.Tensor, heun_uncorrected_first: bool, flow: bool = False) -> list[str]:
    """The conventions under which ``target`` samples something else than ``measured`` did, for this run: steps
    ``steps``, start at ᾱ = ``abar_start`` (the model's last step has ``abar_max``), and whether the run's Heun leaves
    its first interval uncorrected. A convention that cannot matter for this run is no difference (integer steps
    are fed the same t either way; a start at σ_max starts the same under ComfyUI's rule)."""
    out = []
    if measured.clamp != target.clamp:
        out.append(f"{measured.name} clips x̂0 to [-1, 1] and {target.name} does not" if measured.clamp else
                   f"{target.name} clips x̂0 to [-1, 1] and {measured.name} does not")
    if measured.network_time != target.network_time and steps.is_floating_point() and bool((steps != steps.round()).any()):
        out.append(f"the steps are continuous-time and {target.name} feeds the network "
                   f"{'the nearest integer t' if target.network_time == 'nearest' else 'the real t'}")
    scales = [float(r.start_scale(abar_start, abar_max)) for r in (measured, target)]
    exact = "√((1 − σ₀)² + σ₀²)" if flow else "√(1 + σ₀²)"  # our x_T = ε in the tools' σ (a flow's: its time s)
    if abs(scales[0] / scales[1] - 1) > START_TOLERANCE:
        out.append(f"{target.name} starts from noise·{'σ₀' if scales[1] != 1 else exact}, this was measured "
                   f"from noise·{'σ₀' if scales[0] != 1 else exact}")
    if heun_uncorrected_first and not target.spends_even_heun_budgets:
        out.append(f"this Heun run leaves its first interval uncorrected (an even NFE under {measured.name}); "
                   f"{target.name}'s Heun corrects every interval but the last")
    return out
