"""Schedules that travel: σ lists for k-diffusion, ComfyUI and A1111/Forge, published lists imported onto a model's
noise schedule, a schedule moved to another NFE, and the check that an export samples there what was measured here.

Every list here is a k-diffusion σ list (σ = √((1 − ᾱ)/ᾱ), descending, a trailing 0 for the jump to x̂0) — for a rectified
flow, the flow times s its tools take as σ (ComfyUI's CONST sampling, diffusers' FlowMatch schedulers) — written
in positional notation (ComfyUI's ``ManualSigmas`` reads no exponents) with the shortest digits that give back the
same float, so an export imported again gives the same steps. Importing maps σ → t by the schedule's own
interpolation in log σ (k-diffusion's ``sigma_to_t``), so a published list lands on real-valued steps of *this*
model's schedule. Resampling is AYS's log-linear interpolation (``../shared/FORMULAS.md`` §8) of the evaluation
levels — A1111's convention (interpolate the n evaluated σ, then append 0), not ComfyUI's (n+1 values with the last
forced to 0), which would move the last evaluation.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from stepdrop_search.diffusion.runtimes import (
    DEFAULT_RUNTIME,
    EXPORT_RUNTIMES,
    FLOW_EXPORT_RUNTIMES,
    KDIFFUSION_SOLVERS,
    RUNTIMES,
    Runtime,
    convention_differences,
)
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.errors import UserError
from stepdrop_search.policies.base import Policy, validate_timesteps
from stepdrop_search.policies.kinds import Explicit, Sigmas

#: what ``policy export --format`` writes
FORMATS = ("json", "diffusers", "sigmas", "comfyui", "a1111", "python")
#: ``--format python``: the sampler file of :mod:`.learned_sampler` with the policy's σ list and coefficients, run on a
#: k-diffusion denoiser. Its conventions are k-diffusion's; its solvers the learned one and its base (all-zero rows).
PYTHON_RUNTIME = replace(RUNTIMES["k-diffusion"], name="python",
                         description="the sampler file `policy export --format python` writes, on a k-diffusion denoiser",
                         solvers={"learned-3m": "sample", "dpmpp-3m": "sample"}, source="stepdrop_search/policies/learned_sampler.py")


#: Why an export format has no tool for rectified flows, for the refusal.
NO_FLOW_TOOL = {"sigmas": "k-diffusion 0.1.1 has no denoiser wrapper for flow models (ComfyUI's CONST sampling runs them: "
                          "--format comfyui)",
                "a1111": "A1111/Forge's flow sampling is not checked against this project's (--format comfyui or diffusers)",
                "python": "the python sampler is k-diffusion's for ε models"}


def export_target(fmt: str, schedule: NoiseSchedule | None = None) -> Runtime:
    """The runtime whose conventions the tool of export format ``fmt`` (not json) samples under, for a model with
    ``schedule`` (flow tools for a rectified flow); one line where no tool of that format runs such a model."""
    if schedule is not None and schedule.is_flow:
        if FLOW_EXPORT_RUNTIMES.get(fmt) is None:
            raise UserError(f"--format {fmt} has no tool for rectified-flow models: {NO_FLOW_TOOL[fmt]}")
        return RUNTIMES[FLOW_EXPORT_RUNTIMES[fmt]]
    return PYTHON_RUNTIME if fmt == "python" else RUNTIMES[EXPORT_RUNTIMES[fmt]]


def number_text(value: float) -> str:
    """A float in positional notation with the shortest digits that read back as the same float."""
    return np.format_float_positional(float(value), trim="-")


def sigma_list(policy: Policy) -> list[float]:
    """The policy's σ at each evaluation as its model's tools take them, then a trailing 0."""
    return policy.tool_sigmas().tolist()


def comfyui_text(policy: Policy) -> str:
    """A SIGMAS string for ComfyUI's custom-sigma nodes: ``ManualSigmas`` (a number regex, the 0 written out) and
    KJNodes ``CustomSigmas`` (split on ", ")."""
    return ", ".join(number_text(v) for v in sigma_list(policy))


def a1111_text(policy: Policy) -> str:
    """The "[…]" list the A1111/Forge custom-scheduler extensions read (n + 1 values ending in 0)."""
    return "[" + comfyui_text(policy) + "]"


def parse_numbers(text: str, flag: str) -> list[float]:
    """Numbers from any of the list forms above (brackets optional; commas and/or spaces between), refused in one line
    when anything else is there."""
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    values = []
    for item in (item for item in re.split(r"[,\s]+", body) if item):
        try:
            values.append(float(item))
        except ValueError:
            raise UserError(f"{flag}: {item!r} is not a number; give a list like \"14.61, 7.49, 1.2, 0\"") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise UserError(f"{flag}: give a non-empty list of finite numbers")
    return values


def from_sigmas(values: list[float], schedule: NoiseSchedule) -> Explicit:
    """An explicit policy at the σ levels ``values`` (descending, an optional trailing 0) of ``schedule``: each σ → t in
    log σ; the σ range is checked against the schedule (one line naming the range when outside)."""
    levels = Sigmas(sigmas=tuple(values), schedule=schedule)
    return Explicit(steps=tuple(levels.timesteps().tolist()), schedule=schedule)


def from_timesteps(values: list[float], schedule: NoiseSchedule, source_T: int | None = None) -> Explicit:
    """An explicit policy at timesteps ``values`` (descending), rescaled from a ``source_T``-step training schedule
    onto this one's T (t·(T−1)/(source_T−1)) when given. A flow tool's timestep is τ = s·T (diffusers' FlowMatch
    schedulers, ComfyUI's CONST sampling), so on a flow they are read as the flow times τ/T (T: ``source_T`` or the
    model's)."""
    if source_T is not None and source_T < 2:
        raise UserError("--source-t must be ≥ 2")
    if schedule.is_flow:
        return from_sigmas([v / (source_T or schedule.T) for v in values], schedule)
    if source_T is not None:
        values = [v * (schedule.T - 1) / (source_T - 1) for v in values]
    steps = validate_timesteps(values, schedule.T, "timesteps")
    return Explicit(steps=tuple(steps.tolist()), schedule=schedule)


def resample(policy: Policy, nfe: int) -> Explicit:
    """The schedule moved to ``nfe`` evaluations by log-linear interpolation in σ (AYS): the evaluated log σ, put on
    [0, 1] evenly, read at ``nfe`` even points. The first and last evaluations stay where they were."""
    if nfe < 1:
        raise UserError("--nfe must be ≥ 1")
    sigma = policy.to_sigmas()[:-1].double()
    if len(sigma) < 2 and nfe > 1:
        raise UserError("a one-step schedule has no shape to interpolate; give one of at least two steps")
    log_sigma = sigma.log().flip(0).numpy()  # ascending
    values = np.exp(np.interp(np.linspace(0, 1, nfe), np.linspace(0, 1, len(sigma)), log_sigma))[::-1]
    if policy.schedule.is_flow:  # from_sigmas reads a flow's σ as its tools write them, the flow time s = σ/(1 + σ)
        values = values / (1 + values)
    return from_sigmas(list(values), policy.schedule)


# ------------------------------------------------------------------------------------------- exports that refuse

#: Why a tool lacks one of our solvers, for the refusal (solvers the tool has need no reason).
MISSING_SOLVER_REASONS = {
    "unipc": "UniPC runs in this project's sampler only: k-diffusion has none, ComfyUI's uni_pc is another implementation "
             "and diffusers' UniPCMultistepScheduler takes no custom steps",
    "ipndm": "iPNDM runs in this project's sampler only: k-diffusion has none, ComfyUI's ipndm takes an Adams–Bashforth "
             "step to σ = 0 where ours returns x̂0, and diffusers' IPNDMScheduler takes no custom steps",
    "dpmpp-3m": "k-diffusion's sample_dpmpp_3m_sde warms up with a φ₂ second-order step where ours takes diffusers' midpoint "
                "one; diffusers' DPMSolverMultistepScheduler(solver_order=3) runs ours (--format diffusers)",
    "ddpm": "the tool draws the ancestral noise itself, so no export can reproduce samples measured here; "
            "k-diffusion's sample_euler_ancestral takes a noise_sampler (--format sigmas)",
    "dpmpp-2m-sde": "the tool draws the SDE noise itself (a Brownian tree), so no export can reproduce samples measured here; "
                    "k-diffusion's sample_dpmpp_2m_sde takes a noise_sampler (--format sigmas)",
    "learned-3m": "learned per-step solver coefficients, which no σ-list tool runs; --format python writes a sampler that does",
}


def export_problems(document, target: Runtime) -> list[str]:
    """What makes ``target`` sample something else from the exported steps than ``document`` measured: a solver the tool
    lacks (or has at another η), more than one solver along the steps, or a convention that differs for these steps.
    Empty when the export reproduces the document's samples (and NFE) there."""
    policy, solver = document.policy, document.solver
    steps = policy.fixed_timesteps(f"the {target.name} export")  # a per-sample kind is refused in one line
    problems = []
    along = set(policy.solvers(solver.name, len(steps)))
    if len(along) > 1:
        problems.append(f"the policy mixes solvers ({', '.join(sorted(along))}) and one σ list runs one sampler")
    if not target.has_solver(solver.name):
        problems.append(f"{target.name} has no {solver.name} ({MISSING_SOLVER_REASONS.get(solver.name, 'no such sampler')})")
    elif solver.name in target.fixed_eta and solver.eta != target.fixed_eta[solver.name]:
        problems.append(f"{target.name} runs {solver.name} at η = {target.fixed_eta[solver.name]:g} only, this is η = {solver.eta:g}")
    elif target.name == "diffusers" and solver.name != "ddim" and steps.is_floating_point():
        problems.append(f"diffusers' {target.tool_name(solver.name)} takes integer timesteps only and these steps are real "
                        "(continuous time); build the policy with continuous=false, or use ddim (EulerDiscreteScheduler takes σ)")
    schedule = policy.schedule
    problems += convention_differences(document.runtime, target, steps=steps, abar_start=schedule.alphas_cumprod_at(steps[:1])[0],
                                       abar_max=schedule.alphas_cumprod_at(torch.tensor(schedule.T - 1)),
                                       heun_uncorrected_first=solver.solver.uncorrected_first(len(steps)), flow=schedule.is_flow)
    return problems


def runs_in(document) -> str:
    """One line for people: the export formats whose tool reproduces ``document``'s samples, or why none does."""
    if not document.policy.static:
        return "draws its steps per sample: it runs in this project's sampler only"
    schedule = document.policy.schedule
    targets = {fmt: export_target(fmt, schedule) for fmt in FORMATS if fmt != "json" and not (
        schedule.is_flow and FLOW_EXPORT_RUNTIMES.get(fmt) is None)}
    accepted = [fmt for fmt, target in targets.items() if not export_problems(document, target)]
    if accepted:
        return f"runs as measured in {', '.join(f'{targets[f].name} (--format {f})' for f in accepted)}"
    tools = [target for target in targets.values() if target is not PYTHON_RUNTIME]  # runtimes a search can take
    if not any(target.has_solver(document.solver.name) for target in targets.values()):
        return (f"runs as measured in this project's sampler only (no other tool runs {document.solver.name} on custom steps); "
                f"optimize --runtime {', '.join(target.name for target in tools)} searches only what that tool runs")
    reference = targets["comfyui" if schedule.is_flow else "sigmas"]
    return f"runs as measured in this project's sampler only ({'; '.join(export_problems(document, reference))})"


def check_export(document, fmt: str, source: str) -> Runtime:
    """The runtime ``fmt`` runs under, after refusing in one line an export whose samples there would differ: what differs
    and the fix (measure the steps under that runtime, which is what ``--runtime`` on the export does)."""
    if document.guidance is not None and document.guidance.scale != 1 and fmt != "diffusers":
        raise UserError(f"{source} has guidance ({document.guidance.describe()}), which the {fmt} σ list does not carry: "
                        "the tool would sample it unguided. Export it with --format diffusers (the loop with the scale "
                        "per step), or keep it as our policy file (--format json)")
    target = export_target(fmt, document.policy.schedule)
    problems = export_problems(document, target)
    if problems:
        heun_recipe = "; k-diffusion reproduces an uncorrected first Heun interval with two calls, x = sample_euler(model, x, " \
                      "sigmas[:2]) then sample_heun(model, x, sigmas[1:])" if any("uncorrected" in p for p in problems) else ""
        fix = export_fix(document, fmt, target, source)
        raise UserError(f"{source} cannot be exported for {target.name} as it was measured: {'; '.join(problems)}. "
                        f"Fix: {fix}{heun_recipe}")
    return target


def export_fix(document, fmt: str, target: Runtime, source: str) -> str:
    """How to get an export that ``fmt``'s tool samples as measured."""
    if not target.has_solver(document.solver.name):
        if fmt == "python":
            return "--format python runs a learned-3m or dpmpp-3m policy (`optimize --nfe 5` learns one)"
        if document.solver.solver.learned:
            return "export it with --format python"
        return (f"search under it (`stepdrop-search optimize --runtime {target.name}`), which tries only the solvers it has "
                f"({', '.join(target.solvers)})")
    # the python sampler's conventions are our default runtime's, which has every solver
    runtime = DEFAULT_RUNTIME.name if fmt == "python" else target.name
    return (f"re-measure under it (`stepdrop-search evaluate --policy {source} --runtime {runtime}`), or export with "
            f"`--runtime {runtime}` to accept its conventions (the numbers measured under {document.runtime.name} are then dropped)")


def run_cost(document) -> int:
    """The network evaluations one sample of a static policy costs, counted as the runtime spends them (a guided step's
    unconditional evaluation included)."""
    from stepdrop_search.generation import document_nfe

    return round(document_nfe(document))


def kdiffusion_call(document) -> str:
    """The k-diffusion 0.1.1.post1 call that runs ``document``'s solver on ``sigmas`` from our x_T."""
    solver = document.solver
    name = KDIFFUSION_SOLVERS[solver.name]
    extra = ""
    if solver.name == "ddim" and solver.eta:
        name, extra = "sample_euler_ancestral", f", eta={solver.eta:g}, noise_sampler=noise_sampler"
    elif solver.name == "ddpm":
        extra = ", eta=1.0, noise_sampler=noise_sampler"
    elif solver.name == "dpmpp-2m-sde":
        extra = f", eta={solver.eta:g}, noise_sampler=noise_sampler"
    return f"x0 = k_diffusion.sampling.{name}(model, noise * (1 + sigmas[0] ** 2) ** 0.5, torch.tensor(sigmas){extra})"


def export_hints(document, fmt: str) -> list[str]:
    """Comment lines that say how to run a text export in its tool: the sampler to pick, the start, the NFE it costs
    there and what the numbers assume."""
    target = export_target(fmt, document.policy.schedule)
    nfe = run_cost(document)
    rt = document.runtime
    assumes = (f"# runtime {rt.name}: {'x̂0 clamp' if rt.clamp else 'no x̂0 clamp'}, {rt.network_time} t, {rt.start} start; "
               f"{nfe} network evaluations per sample")
    if fmt == "sigmas":
        return ["# k-diffusion: model = k_diffusion.external.DiscreteEpsDDPMDenoiser(unet, alphas_cumprod, quantize=False)",
                f"# {kdiffusion_call(document)}"
                + ("  # noise_sampler(σ, σ_next): the step's standard normal" if "noise_sampler" in kdiffusion_call(document) else ""),
                "# diffusers: --format diffusers (EulerDiscreteScheduler with timestep_spacing='leading' for ddim, whose default "
                "'linspace' starts at noise·σ₀); "
                "back: policy import --sigmas '[…]'", assumes]
    if fmt == "comfyui" and document.policy.schedule.is_flow:
        return ["# ComfyUI, flow model (ModelSamplingSD3/ModelSamplingFlux; their shift does not move a SIGMAS input): "
                f"ManualSigmas (this text, flow times s) → SamplerCustom's sigmas; KSamplerSelect sampler_name: "
                f"{target.tool_name(document.solver.name)}; add_noise on, EmptyLatentImage", assumes]
    if fmt == "comfyui":
        return [f"# ComfyUI: ManualSigmas (this text) → SamplerCustom's sigmas; KSamplerSelect sampler_name: "
                f"{target.tool_name(document.solver.name)}; add_noise on", assumes]
    return [f"# A1111/Forge: a custom-scheduler extension's σ list (this text); sampler: {target.tool_name(document.solver.name)}",
            assumes]


def python_text(document, source: str) -> str:
    """What ``--format python`` writes: the sampler of :mod:`.learned_sampler` (torch only) with this policy's ``SIGMAS``
    and ``COEFFICIENTS`` (one row per evaluation; rows of zeros for a plain dpmpp-3m policy) and how to call it."""
    steps = document.policy.timesteps()
    rows = document.solver.coefficient_rows() or ((0.0, 0.0),) * len(steps)
    sampler = (Path(__file__).parent / "learned_sampler.py").read_text()
    return (f"{sampler}\n\n# {source}: {document.solver.name} on {len(steps)} steps, {run_cost(document)} network evaluations "
            f"per sample, measured under runtime {document.runtime.name} (no x̂0 clamp, real t, exact start)\n"
            f"# x0 = sample(model, noise * (1 + SIGMAS[0] ** 2) ** 0.5, SIGMAS, COEFFICIENTS)\n"
            f"SIGMAS = [{', '.join(number_text(v) for v in sigma_list(document.policy))}]\n"
            f"COEFFICIENTS = [{', '.join('[' + ', '.join(repr(float(v)) for v in row) + ']' for row in rows)}]\n")
