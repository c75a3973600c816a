"""diffusers interop: a locally saved diffusers ``UNet2DModel`` as our model, our schedules handed to
diffusers schedulers, and our models stepped by diffusers' own scheduler loop for side-by-side runs.

diffusers is an optional extra (``pip install 'stepdrop-search[diffusers]'``). Nothing here reaches
the hub: models load with ``local_files_only=True`` from a directory the user saved.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from stepdrop_search.checkpoint import LoadedModel, state_dict_hash
from stepdrop_search.diffusion.flow import PRE_SHIFT_CODE, FlowAdapter
from stepdrop_search.diffusion.guidance import batch_conditioning
from stepdrop_search.diffusion.sampler import SampleResult, stream_seed
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.errors import UserError, unknown_name
from stepdrop_search.generation import noise_batches
from stepdrop_search.policies import PolicyDocument

#: ``--model diffusers:DIR`` names a locally saved diffusers UNet2DModel.
PREFIX = "diffusers:"
# diffusers beta_schedule → our NoiseSchedule kind (squaredcos_cap_v2 is Nichol & Dhariwal's cosine, s = 0.008).
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
# Short names for diffusers' scheduler classes, and which list arguments their ``set_timesteps`` takes as of
# diffusers 0.42 (FORMULAS §9); with diffusers installed, :func:`list_arguments` asks it instead.
SCHEDULERS = {
    "ddpm": ("DDPMScheduler", ("timesteps",)),
    "dpm-solver-multistep": ("DPMSolverMultistepScheduler", ("timesteps",)),
    "euler": ("EulerDiscreteScheduler", ("timesteps", "sigmas")),
    "heun": ("HeunDiscreteScheduler", ("timesteps",)),
    "ddim": ("DDIMScheduler", ()),
    "unipc": ("UniPCMultistepScheduler", ("sigmas",)),  # flow-matching sigmas only: SIGMAS_ONLY_FOR_FLOW
}


def diffusers_installed() -> bool:
    return importlib.util.find_spec("diffusers") is not None


def require_diffusers():
    try:
        import diffusers
    except ImportError:
        raise UserError("this needs the optional diffusers extra: pip install 'stepdrop-search[diffusers]'") from None
    return diffusers


#: schedulers whose ``sigmas=`` is not for a k-diffusion σ list of a VP model (FORMULAS §9)
SIGMAS_ONLY_FOR_FLOW = ("UniPCMultistepScheduler",)


def list_arguments() -> dict[str, tuple[str, ...]]:
    """Class name → the list arguments (``timesteps``, ``sigmas``) its ``set_timesteps`` accepts, read off the installed
    diffusers (a pipeline's ``retrieve_timesteps`` raises when a scheduler lacks the one it is given)."""
    try:
        import diffusers
    except ImportError:
        declared = dict(SCHEDULERS.values())
    else:
        declared = {cls: tuple(a for a in ("timesteps", "sigmas") if a in inspect.signature(getattr(diffusers, cls).set_timesteps).parameters)
                    for cls, _ in SCHEDULERS.values()}
    return {cls: tuple(a for a in accepted if not (a == "sigmas" and cls in SIGMAS_ONLY_FOR_FLOW))
            for cls, accepted in declared.items()}


def custom_timestep_support() -> dict[str, bool]:
    """Class name → whether its ``set_timesteps`` accepts ``timesteps=[…]``."""
    return {cls: "timesteps" in accepted for cls, accepted in list_arguments().items()}


@dataclass(frozen=True)
class ImageShape:
    """The part of a model config the sampler reads."""

    in_channels: int
    image_size: int
    num_classes: int = 0  # a class-conditional UNet's classes, its null class (the unconditional one) not counted


#: diffusers ``prediction_type``s the adapter turns into ε
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class DiffusersEpsilon(torch.nn.Module):
    """ε_θ(x, t) of a diffusers ``UNet2DModel`` behind the interface of our U-Net, whatever it predicts (with the
    default ``epsilon``, the UNet's raw output: a flow model's velocity, which :class:`FlowAdapter` then converts).

    With x_t = α x0 + σ ε (α = √ᾱ_t, σ = √(1 − ᾱ_t)): a ``v_prediction`` model's v = α ε − σ x0 gives ε = α v + σ x_t;
    a ``sample`` model's x̂0 gives ε = (x_t − α x̂0)/σ. ᾱ comes from the schedule at the (possibly real) t, in float64.
    """

    def __init__(self, unet: torch.nn.Module, schedule: NoiseSchedule | None = None, prediction: str = "epsilon") -> None:
        super().__init__()
        if prediction not in PREDICTION_TYPES:
            raise UserError(f"prediction_type {prediction!r} is not supported; supported: {', '.join(PREDICTION_TYPES)}")
        if prediction != "epsilon" and schedule is None:
            raise ValueError("a v_prediction or sample model needs its noise schedule")
        self.unet, self.schedule, self.prediction = unet, schedule, prediction
        embeds = int(getattr(unet.config, "num_class_embeds", None) or 0)
        self.config = ImageShape(int(unet.config.in_channels), int(unet.config.sample_size), max(0, embeds - 1))

    @property
    def null_class(self) -> int:
        """A class-conditional UNet's last class embedding is its null class (the unconditional prediction), as ours."""
        return self.config.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.num_classes and classes is None:
            classes = torch.full((x.shape[0],), self.null_class, dtype=torch.long, device=x.device)
        # Learned-variance models (improved DDPM) return [ε, v] along channels: keep the prediction.
        out = self.unet(x, t, class_labels=classes).sample[:, : x.shape[1]]
        if self.prediction == "epsilon":
            return out
        a = self.schedule.alphas_cumprod_at(t).view(-1, *([1] * (x.dim() - 1)))  # on t's device, differentiable
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        eps = alpha * out + sigma * x if self.prediction == "v_prediction" else (x - alpha * out) / sigma
        return eps.to(x.dtype)


#: the diffusers scheduler of rectified-flow models (SD3, Flux): its config in a folder means a velocity network
FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"


def is_flow_config(config: dict) -> bool:
    """Whether a scheduler config is a flow-matching one (``FlowMatch…Scheduler``)."""
    return str(config.get("_class_name", "")).startswith("FlowMatch")


def schedule_from_scheduler_config(config: dict, source: str) -> NoiseSchedule:
    """Our noise schedule from a diffusers ``scheduler_config.json``; refuses what our ε-sampler cannot run. A
    flow-matching config is a rectified flow whatever its ``shift``: the shift is a choice of steps (a policy here),
    not the model's path."""
    if is_flow_config(config):
        return NoiseSchedule(kind="flow", T=int(config.get("num_train_timesteps", 1000)))
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise UserError(f"{source}: prediction_type {prediction!r} is not supported; supported: {', '.join(PREDICTION_TYPES)}")
    if config.get("trained_betas") is not None:
        raise UserError(f"{source}: trained_betas are not supported; use a linear, scaled_linear or "
                        "squaredcos_cap_v2 beta_schedule")
    beta_schedule = config.get("beta_schedule", "linear")
    if beta_schedule not in BETA_SCHEDULES:
        raise UserError(f"{source}: beta_schedule {beta_schedule!r} is not supported; "
                        f"supported: {', '.join(BETA_SCHEDULES)}")
    return NoiseSchedule(kind=BETA_SCHEDULES[beta_schedule], T=int(config.get("num_train_timesteps", 1000)),
                         beta_start=float(config.get("beta_start", 1e-4)), beta_end=float(config.get("beta_end", 0.02)))


def scheduler_config_from_schedule(schedule: NoiseSchedule) -> dict:
    """The diffusers scheduler config describing one of our noise schedules (ε-prediction, no clipping
    beyond the data range). Every parameter of the kind is carried over, so that reading the config back gives
    the same schedule; one diffusers cannot express is refused rather than silently replaced."""
    if schedule.is_flow:  # shift 1: our steps are the σ themselves (a tool that shifts again would move them)
        return {"_class_name": FLOW_SCHEDULER, "num_train_timesteps": schedule.T, "shift": 1.0, "use_dynamic_shifting": False}
    beta_schedule = {kind: name for name, kind in BETA_SCHEDULES.items()}[schedule.kind]
    diffusers_cosine_s = 0.008  # hard-coded in diffusers' betas_for_alpha_bar
    if schedule.kind == "cosine" and schedule.cosine_s != diffusers_cosine_s:
        raise UserError(f"diffusers' squaredcos_cap_v2 fixes the cosine offset s = {diffusers_cosine_s}; this schedule "
                        f"has cosine_s = {schedule.cosine_s}, which no diffusers scheduler config can express")
    return {"num_train_timesteps": schedule.T, "beta_schedule": beta_schedule, "beta_start": schedule.beta_start,
            "beta_end": schedule.beta_end, "prediction_type": "epsilon", "clip_sample": True, "clip_sample_range": 1.0}


def _read_scheduler_config(directory: Path) -> tuple[dict, Path]:
    for path in (directory / "scheduler" / "scheduler_config.json", directory / "scheduler_config.json"):
        if path.is_file():
            try:
                return json.loads(path.read_text()), path
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise UserError(f"{path}: not valid JSON ({exc})") from None
    raise UserError(f"{directory}: no scheduler_config.json (looked in scheduler/ and the directory itself); save "
                    "the pipeline with save_pretrained or the scheduler with scheduler.save_pretrained(DIR)")


def is_diffusers_folder(directory: Path) -> bool:
    """A folder diffusers saved: a pipeline (``model_index.json``) or a model (``config.json``, here or in ``unet/``)."""
    return any((directory / name).is_file() for name in ("model_index.json", "config.json", "unet/config.json"))


#: What the refusal of an unsupported diffusers folder says is supported.
UNSUPPORTED = ("stepdrop-search samples pixel-space UNet2DModels (DDPM-style pipelines), unconditional or class-conditional "
               "(num_class_embeds)")


def check_supported_folder(directory: Path) -> None:
    """Refuse, from the configs alone (no weights read, no diffusers import), a pipeline or UNet this sampler cannot
    run: text- or class-conditional UNets (Stable Diffusion's UNet2DConditionModel) and latent pipelines (a VAE)."""
    index = _json_or_empty(directory / "model_index.json")
    if "vae" in index or "text_encoder" in index:
        what = "a latent, text-conditional pipeline" if "text_encoder" in index else "a latent pipeline (it has a VAE)"
        raise UserError(f"{directory}: {what} ({index.get('_class_name', 'diffusers')}) is not supported; {UNSUPPORTED}")
    for path in (directory / "unet" / "config.json", directory / "config.json"):
        config = _json_or_empty(path)
        name = config.get("_class_name", "")
        if name and name != "UNet2DModel":
            raise UserError(f"{path.parent}: a {name} is not supported"
                            + (" (text-conditional, as in Stable Diffusion)" if "Condition" in name else "")
                            + f"; {UNSUPPORTED}")
        if name:
            return


def _json_or_empty(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_diffusers_model(directory: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A diffusers ``UNet2DModel`` (pipeline layout ``DIR/unet`` or a bare model directory) with its
    scheduler config, offline."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"diffusers model directory {directory} does not exist")
    check_supported_folder(directory)
    diffusers = require_diffusers()
    config, config_path = _read_scheduler_config(directory)
    schedule = schedule_from_scheduler_config(config, str(config_path))
    unet_dir = directory / "unet" if (directory / "unet").is_dir() else directory
    diffusers.utils.logging.set_verbosity_error()  # its advice to install accelerate is noise for our users
    try:
        unet = diffusers.UNet2DModel.from_pretrained(unet_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{unet_dir}: cannot load a diffusers UNet2DModel ({first})") from None
    if getattr(unet.config, "class_embed_type", None) is not None:
        raise UserError(f"{unet_dir}: class_embed_type {unet.config.class_embed_type!r} is not supported: a class-"
                        "conditional UNet2DModel loads with the default embedding (num_class_embeds = classes + 1, the "
                        "last one the null class that classifier-free guidance needs)")
    if getattr(unet.config, "num_class_embeds", None) is not None and unet.config.num_class_embeds < 2:
        raise UserError(f"{unet_dir}: num_class_embeds {unet.config.num_class_embeds} leaves no class beside the null "
                        "class (the last embedding)")
    if unet.config.out_channels not in (unet.config.in_channels, 2 * unet.config.in_channels):
        raise UserError(f"{unet_dir}: out_channels {unet.config.out_channels} is neither ε nor [ε, variance] "
                        f"for {unet.config.in_channels} input channels")
    if schedule.is_flow:  # the UNet's raw output is the velocity
        model = FlowAdapter(DiffusersEpsilon(unet), schedule).to(device).eval()
    else:
        model = DiffusersEpsilon(unet, schedule, config.get("prediction_type", "epsilon")).to(device).eval()
    card = {"scheduler_config": config, "format": "diffusers"}
    return LoadedModel(model, schedule, {}, state_dict_hash(unet.state_dict()), f"{PREFIX}{directory}", card)


def diffusers_timesteps(document: PolicyDocument) -> list[int]:
    """The policy's steps in the form ``scheduler.set_timesteps(timesteps=[…])`` takes (descending ints).

    A continuous-time policy is refused rather than rounded: rounding moves every step and merges the close ones
    near t = 0 that such a schedule exists for. Its σ list (``--format sigmas``) carries it to diffusers exactly,
    through ``EulerDiscreteScheduler.set_timesteps(sigmas=…)``."""
    policy = document.policy
    steps = policy.fixed_timesteps("diffusers")
    if steps.is_floating_point():
        raise UserError(f"this {policy.kind} policy has real (continuous-time) timesteps and diffusers' "
                        "set_timesteps(timesteps=…) takes integers; export it with --format sigmas for "
                        "EulerDiscreteScheduler.set_timesteps(sigmas=…), or build it with continuous=false")
    return [int(t) for t in steps.tolist()]


@dataclass(frozen=True)
class DiffusersRecipe:
    """How diffusers runs one of our policy documents: the scheduler class, the config to build it from, the
    ``set_timesteps`` arguments, and whether its ``step`` takes our solver noise (``variance_noise``)."""

    scheduler: str
    config: dict
    set_timesteps: dict
    takes_noise: bool = False
    #: what the pipeline's latents (unit noise) are multiplied by to start where we do: 1 for ε models (the scheduler's
    #: init_noise_sigma does it); a flow's c₀ < 1, since our first step is at s₀ = T/(T + 1) and the scheduler's at 1
    latents_scale: float = 1.0
    #: a class-conditional model's classifier-free guidance scale at each step (1.0: the conditional prediction alone)
    guidance: tuple[float, ...] | None = None

    def code(self) -> str:
        """Python that builds the scheduler and sets the steps (the pipeline's own loop does the rest; with guidance,
        the loop itself, which no diffusers pipeline of a class-conditional UNet2DModel runs per step)."""
        if self.guidance is not None:
            return (f"GUIDANCE = {list(self.guidance)!r}  # per step; 1.0: the conditional prediction alone (one evaluation)\n"
                    f"scheduler = diffusers.{self.scheduler}.from_config({self.config!r})\n"
                    f"scheduler.set_timesteps({', '.join(f'{k}={v!r}' for k, v in self.set_timesteps.items())})\n"
                    + GUIDED_LOOP)
        if self.latents_scale == 1.0:
            return (f"scheduler = diffusers.{self.scheduler}.from_config({self.config!r})\n"
                    f"scheduler.set_timesteps({', '.join(f'{k}={v!r}' for k, v in self.set_timesteps.items())})")
        sigmas = self.set_timesteps["sigmas"]
        return (f"SIGMAS = {sigmas!r}\n"
                f"scheduler = diffusers.{self.scheduler}.from_config({self.config!r})\n"
                "scheduler.set_timesteps(sigmas=SIGMAS)\n"
                f"latents = torch.randn(shape, generator=generator) * {self.latents_scale!r}  # pass as latents=: "
                f"the start at σ = {sigmas[0]!r}, not 1")


#: the denoising loop of a guided recipe: ``unet`` a class-conditional UNet2DModel whose last class embedding is the null
#: class, ``labels`` the classes, ``latents`` unit noise (our x_T); both predictions of a guided step in one call
GUIDED_LOOP = """x = latents * scheduler.init_noise_sigma
null = torch.full_like(labels, unet.config.num_class_embeds - 1)
for i, t in enumerate(scheduler.timesteps):
    x_in = scheduler.scale_model_input(x, t)
    if GUIDANCE[i] == 1.0:
        eps = unet(x_in, t, class_labels=labels).sample
    else:
        eps_c, eps_u = unet(torch.cat([x_in, x_in]), t, class_labels=torch.cat([labels, null])).sample.chunk(2)
        eps = eps_u + GUIDANCE[i] * (eps_c - eps_u)
    x = scheduler.step(eps, t, x).prev_sample
"""

#: scheduler config changes each class needs to run our solver: the VP start √(σ_max² + 1) on the σ schedulers (their
#: "linspace" default starts at σ_max), no lowered order before the last step for DPM-Solver++ (our multistep solvers
#: lower only the last, to x̂0), no clipping
DIFFUSERS_CONFIG = {
    "ddim": {"timestep_spacing": "leading"},
    "heun": {"timestep_spacing": "leading"},
    "dpmpp-2m": {"solver_order": 2, "algorithm_type": "dpmsolver++", "solver_type": "midpoint"},
    "dpmpp-3m": {"solver_order": 3, "algorithm_type": "dpmsolver++"},
    "dpmpp-2m-sde": {"solver_order": 2, "algorithm_type": "sde-dpmsolver++", "solver_type": "midpoint"},
}
DPM_SOLVER_COMMON = {"lower_order_final": False, "euler_at_final": False, "final_sigmas_type": "zero", "thresholding": False}


def diffusers_recipe(document: PolicyDocument) -> DiffusersRecipe:
    """The recipe that reproduces ``document``'s samples in diffusers, or one line saying why none does (check the
    conventions first with ``policies.transfer.check_export``)."""
    from stepdrop_search.diffusion.runtimes import DIFFUSERS_SCHEDULERS

    name = document.solver.name
    schedule = document.policy.schedule
    if schedule.is_flow:
        if document.guidance is not None and document.guidance.scale != 1:
            raise UserError("a guided flow policy has no diffusers recipe yet: keep it as our policy file (--format json)")
        return flow_recipe(document)
    if name not in DIFFUSERS_SCHEDULERS:
        raise UserError(f"diffusers has no scheduler that runs {name} on custom steps")
    cls = DIFFUSERS_SCHEDULERS[name]
    config = {**scheduler_config_from_schedule(document.policy.schedule), "clip_sample": False, **DIFFUSERS_CONFIG[name],
              **(DPM_SOLVER_COMMON if cls == "DPMSolverMultistepScheduler" else {})}
    if "sigmas" in list_arguments().get(cls, ()):
        call = {"sigmas": document.policy.to_sigmas().tolist()}
    else:
        steps = document.policy.fixed_timesteps("diffusers")
        if steps.is_floating_point():
            raise UserError(f"diffusers' {cls} takes integer timesteps only and this policy's steps are real "
                            "(continuous time); build it with continuous=false, or use ddim (EulerDiscreteScheduler takes σ)")
        call = {"timesteps": [int(t) for t in steps.tolist()]}
    return DiffusersRecipe(cls, config, call, takes_noise=document.solver.solver.stochastic(document.solver.eta),
                           guidance=per_step_guidance(document))


def per_step_guidance(document: PolicyDocument) -> tuple[float, ...] | None:
    """The guidance scale at each of the document's steps (1.0 where unguided), or None without guidance; refused in one
    line where the scheduler's loop would not evaluate once per step of ours (Heun, noise-adding solvers)."""
    guidance = document.guidance
    if guidance is None or guidance.scale == 1:
        return None
    solver = document.solver
    if solver.solver.variable_cost or solver.solver.stochastic(solver.eta):
        raise UserError(f"a guided {solver.name} policy has no diffusers recipe: its scheduler's loop evaluates "
                        "differently from ours per step; search or export a deterministic one-evaluation solver "
                        "(ddim, dpmpp-2m, dpmpp-3m, unipc)")
    from stepdrop_search.diffusion.sampler import guided_steps

    flags = guided_steps(document.policy.schedule, document.policy.timesteps(), guidance)[:-1]
    return tuple(guidance.scale if flag else 1.0 for flag in flags)


def flow_recipe(document: PolicyDocument) -> DiffusersRecipe:
    """A rectified flow's recipe: FlowMatchEulerDiscreteScheduler with shift 1 (it shifts the σ it is given) on the flow
    times s, the latents scaled to our start (see :class:`DiffusersRecipe`)."""
    if document.solver.name != "ddim":
        raise UserError(f"diffusers runs a flow model's custom σ with {FLOW_SCHEDULER} only (Euler, our ddim); its "
                        f"FlowMatchHeunDiscreteScheduler takes a step count, not a list, so {document.solver.name} has no recipe")
    steps = document.policy.fixed_timesteps("diffusers")
    sigmas = document.policy.tool_sigmas()[:-1].tolist()  # the scheduler appends the 0
    scale = float(document.policy.schedule.model_scale(steps[:1])[0])
    return DiffusersRecipe(FLOW_SCHEDULER, scheduler_config_from_schedule(document.policy.schedule), {"sigmas": sigmas},
                           latents_scale=scale)


def diffusers_export(document: PolicyDocument) -> dict:
    """What ``policy export --format diffusers`` writes: the recipe (scheduler class, config, ``set_timesteps`` arguments)
    that reproduces the document's samples, with the steps in both forms for reference."""
    recipe = diffusers_recipe(document)
    steps = document.policy.fixed_timesteps("diffusers")
    payload = {"scheduler": recipe.scheduler, "scheduler_config": recipe.config, "set_timesteps": recipe.set_timesteps,
               "takes_solver_noise": recipe.takes_noise, "timesteps": steps.tolist(),
               "sigmas": document.policy.tool_sigmas().tolist(),
               "num_train_timesteps": document.policy.schedule.T, "runtime": document.runtime.to_dict(), "code": recipe.code()}
    if document.policy.schedule.is_flow:
        payload |= {"latents_scale": recipe.latents_scale, "if_you_keep_your_scheduler": PRE_SHIFT_CODE}
    if recipe.guidance is not None:
        payload |= {"guidance": list(recipe.guidance), "guidance_interval": document.guidance.to_dict()}
    return payload


def make_scheduler(name: str, loaded: LoadedModel):
    """A diffusers scheduler for ``loaded``: its own scheduler config for diffusers models, else one built from
    our noise schedule."""
    diffusers = require_diffusers()
    if name not in SCHEDULERS:
        raise unknown_name("diffusers scheduler", name, SCHEDULERS)
    if loaded.schedule.is_flow:  # these loops step VP models; fed a flow's ε through our adapter they would sample another path
        raise UserError(f"diffusers' {SCHEDULERS[name][0]} loop runs ε models on β schedules, and this is a rectified flow "
                        f"(its loop is {FLOW_SCHEDULER})")
    config = loaded.card.get("scheduler_config") or scheduler_config_from_schedule(loaded.schedule)
    # our model wrapper always returns ε (DiffusersEpsilon converts v and x0), so the scheduler must read ε
    return getattr(diffusers, SCHEDULERS[name][0]).from_config({**config, "prediction_type": "epsilon"})


@torch.no_grad()
def diffusers_sample(loaded: LoadedModel, scheduler_name: str, *, n: int, seed: int = 0, nfe: int | None = None,
                     timesteps: list[int] | None = None, sigmas: list[float] | None = None, batch_size: int = 256,
                     clamp: bool = True) -> SampleResult:
    """Sample ``loaded`` with a diffusers scheduler's own loop (its default spacing for ``nfe`` steps, the given
    ``timesteps``, or the given ``sigmas`` — k-diffusion's list: the evaluated σ, then the last step's end, 0), from the
    same x_T our sampler uses for ``seed``; NFE counted per model call.
    ``clamp`` clips the result to the data range, as diffusers' pipelines do before making images.

    Stochastic schedulers get one CPU torch generator per sample (diffusers' ``randn_tensor`` takes a list),
    seeded from the same (seed, "noise", sample index) SeedSequence as our sampler's noise stream, so a sample's
    noise does not depend on the batch or the device. They are not our sampler's numbers (diffusers only takes
    torch generators, whose mt19937 seeds are 32-bit): compare such rows with ours as unpaired."""
    if sum(v is not None for v in (nfe, timesteps, sigmas)) != 1:
        raise UserError("give one of an NFE (the scheduler's own spacing), a list of timesteps or a list of σ")
    scheduler = make_scheduler(scheduler_name, loaded)
    cls_name = SCHEDULERS[scheduler_name][0]
    if timesteps is not None and not custom_timestep_support()[cls_name]:
        raise UserError(f"diffusers' {cls_name} does not accept custom timesteps; use ddpm, dpm-solver-multistep "
                        "or euler")
    if sigmas is not None and "sigmas" not in list_arguments()[cls_name]:
        raise UserError(f"diffusers' {cls_name} does not accept a σ list; use euler")
    schedule = {"timesteps": timesteps} if timesteps is not None else {"sigmas": sigmas} if sigmas is not None else \
        {"num_inference_steps": nfe}
    return scheduler_loop(loaded, scheduler, schedule, n=n, seed=seed, batch_size=batch_size, clamp=clamp)


@torch.no_grad()
def diffusers_recipe_sample(loaded: LoadedModel, recipe: DiffusersRecipe, *, n: int, seed: int = 0,
                            batch_size: int = 256) -> SampleResult:
    """Sample with a :class:`DiffusersRecipe` in diffusers' own loop, from our x_T of ``seed`` and, for a solver that draws
    noise, our noise stream (``variance_noise``): what a user running the export gets, sample for sample."""
    scheduler = getattr(require_diffusers(), recipe.scheduler).from_config(recipe.config)
    if recipe.scheduler == FLOW_SCHEDULER:
        return flow_scheduler_loop(loaded, scheduler, recipe, n=n, seed=seed, batch_size=batch_size)
    return scheduler_loop(loaded, scheduler, recipe.set_timesteps, n=n, seed=seed, batch_size=batch_size, clamp=False,
                          our_noise=recipe.takes_noise, guidance=recipe.guidance)


def scheduler_loop(loaded: LoadedModel, scheduler, schedule: dict, *, n: int, seed: int, batch_size: int, clamp: bool,
                   our_noise: bool = False, guidance: tuple[float, ...] | None = None) -> SampleResult:
    """diffusers' denoising loop (as its pipelines run it) over ``scheduler.set_timesteps(**schedule)``; see
    :func:`diffusers_sample`. ``our_noise`` hands step i our stream's noise of grid step i (``variance_noise``).
    ``guidance`` (a guided recipe's scale per step) runs :data:`GUIDED_LOOP` on a class-conditional model; without
    it, a class-conditional model is called with sample i's class (i mod K) too, as our sampler draws it."""
    if guidance is not None:
        return guided_scheduler_loop(loaded, scheduler, schedule, guidance, n=n, seed=seed, batch_size=batch_size)
    from stepdrop_search.diffusion.sampler import SampleStreams

    model = loaded.model
    outputs, calls = [], torch.zeros(n, dtype=torch.long)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    for start, x in noise_batches(model, n, seed, batch_size):
        scheduler.set_timesteps(**schedule, device=x.device)
        x = x * scheduler.init_noise_sigma
        step_kwargs = {"generator": [torch.Generator().manual_seed(int(stream_seed(seed, "noise", i).generate_state(1)[0]))
                                     for i in range(start, start + x.shape[0])]} if takes_generator and not our_noise else {}
        noise = SampleStreams(seed, range(start, start + x.shape[0])).noise(x.shape[1:], len(scheduler.timesteps), x.device, x.dtype) \
            if our_noise else None
        conditioning = batch_conditioning(model, start, x)  # a class-conditional model: sample i of class i mod K
        for i, t in enumerate(scheduler.timesteps):
            eps = model(scheduler.scale_model_input(x, t), t.expand(x.shape[0]), *conditioning)
            calls[start:start + x.shape[0]] += 1
            if noise is not None:
                step_kwargs = {"variance_noise": noise.at(i)}
            x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
        outputs.append((x.clamp(-1, 1) if clamp else x).cpu())
    steps = len(scheduler.timesteps)
    return SampleResult(torch.cat(outputs), calls, torch.ones(n, steps, dtype=torch.bool),
                        scheduler.timesteps.detach().cpu().round().long())


def guided_scheduler_loop(loaded: LoadedModel, scheduler, schedule: dict, guidance: tuple[float, ...], *, n: int,
                          seed: int, batch_size: int) -> SampleResult:
    """:data:`GUIDED_LOOP`, executed as printed, on ``loaded``'s diffusers UNet (a :class:`DiffusersEpsilon`) for each
    batch of our x_T, each evaluation counted."""
    from stepdrop_search.diffusion.guidance import class_labels

    adapter = loaded.model
    if not isinstance(adapter, DiffusersEpsilon) or not adapter.config.num_classes:
        raise UserError("a guided recipe runs on a class-conditional diffusers UNet2DModel (a folder with num_class_embeds)")
    counted = CountingUNet(adapter.unet)
    outputs = []
    for start, latents in noise_batches(adapter, n, seed, batch_size):
        scheduler.set_timesteps(**schedule, device=latents.device)
        labels = class_labels(range(start, start + latents.shape[0]), adapter.config.num_classes).to(latents.device)
        scope = {"scheduler": scheduler, "unet": counted, "latents": latents, "labels": labels, "torch": torch,
                 "GUIDANCE": list(guidance)}
        exec(GUIDED_LOOP, scope)  # noqa: S102 (our own constant: the code the export prints, run as printed)
        outputs.append(scope["x"].cpu())
    steps = len(scheduler.timesteps)
    return SampleResult(torch.cat(outputs), counted.per_sample(n), torch.ones(n, steps, dtype=torch.bool),
                        scheduler.timesteps.detach().cpu().round().long())


class CountingUNet(torch.nn.Module):
    """A diffusers UNet that counts evaluations per sample (a doubled batch is two evaluations of each sample)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet, self.config, self.calls = unet, unet.config, []

    def forward(self, x: torch.Tensor, t, **kwargs):
        self.calls.append(x.shape[0])
        return self.unet(x, t, **kwargs)

    def per_sample(self, n: int) -> torch.Tensor:
        """Evaluations per sample: every sample makes the same calls in this loop, so the sample-evaluations over n (a
        guided call's doubled batch counts each of its samples twice)."""
        return torch.full((n,), round(sum(self.calls) / n), dtype=torch.long)


def flow_scheduler_loop(loaded: LoadedModel, scheduler, recipe: DiffusersRecipe, *, n: int, seed: int,
                        batch_size: int) -> SampleResult:
    """diffusers' flow loop as a pipeline runs it: latents (our x_T times the recipe's scale), the raw network fed the
    scheduler's timestep (σ·num_train_timesteps), ``scheduler.step`` on the velocity."""
    net = loaded.model.net  # the velocity network inside our adapter
    outputs, calls = [], torch.zeros(n, dtype=torch.long)
    for start, x in noise_batches(net, n, seed, batch_size):
        scheduler.set_timesteps(**recipe.set_timesteps, device=x.device)
        y, conditioning = x * recipe.latents_scale, batch_conditioning(net, start, x)
        for t in scheduler.timesteps:
            y = scheduler.step(net(y, t.expand(y.shape[0]), *conditioning), t, y).prev_sample
            calls[start:start + y.shape[0]] += 1
        outputs.append(y.cpu())
    steps = len(scheduler.timesteps)
    return SampleResult(torch.cat(outputs), calls, torch.ones(n, steps, dtype=torch.bool), scheduler.timesteps.detach().cpu())
