"""The ``stepdrop-search`` command line: a thin typer layer over the Python API.

Each command parses flags, calls one library function and prints the result. A :class:`UserError`
from anywhere below becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from stepdrop_search.errors import UserError
from stepdrop_search.files import check_writable
from stepdrop_search.policies.io import PolicyDocument
from stepdrop_search.policies.resolve import default_nfe, resolve_policy
from stepdrop_search.progress import reporter

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find the best way to sample a diffusion model with few network evaluations.")
#: Columns a table may take when the output is piped (| tee, > file): the whole table, never cut at 80 ("candida…").
PIPED_WIDTH = 400


def terminal_console(stderr: bool = False, **kwargs) -> Console:
    """A rich console that draws for the terminal's width, and for :data:`PIPED_WIDTH` when piped (unless COLUMNS
    says otherwise)."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=PIPED_WIDTH if piped else None, **kwargs)


console = terminal_console(soft_wrap=True)
err_console = terminal_console(stderr=True)


# help panels of the long commands' options
BASICS, SEARCH, SELECTION, WORKERS, METHODS = "Basics", "Search", "Selection", "Storage and workers", "DP and learned steps"
MEASURED, ADVANCED = "What is measured", "Advanced"
DeviceOption = Annotated[str, typer.Option(help="auto (the GPU when there is one), cpu, cuda or cuda:N")]


def examples(*lines: str) -> str:
    """A command's help epilog: example command lines, one per paragraph (typer's rich help joins single lines)."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


def show_version(value: bool) -> None:
    if value:
        from stepdrop_search import __version__

        console.print(f"stepdrop-search {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def about(version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True,
                                                help="print the version and exit")] = False) -> None:
    """Find the best way to sample a diffusion model with few network evaluations."""


def user_errors_exit_2(command):
    """Turn a UserError into one red line and exit code 2 instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def warn(message: str) -> None:
    """A warning: one line on stderr; the command goes on."""
    err_console.print(f"warning: {message}", highlight=False, markup=False, soft_wrap=True)


def command_line() -> str:
    return shlex.join(["stepdrop-search", *sys.argv[1:]])


@app.command(epilog=examples("stepdrop-search train --preset xs --steps 6000 --out runs/xs",
                             "stepdrop-search train --resume --out runs/xs     # continue a killed run",
                             "stepdrop-search train --init-from default --skip-loss-every 10 --steps 4000 --out runs/s2dm",
                             "stepdrop-search train --conditional --preset xs --steps 22000 --out runs/cond-xs"))
@user_errors_exit_2
def train(
    preset: Annotated[str, typer.Option(help="model size: tiny, xs, s, paper")] = "xs",
    dataset: Annotated[str, typer.Option(help="fashion-mnist, mnist, cifar10, folder, synthetic")] = "fashion-mnist",
    data: Annotated[str | None, typer.Option(help="data folder (default: the data set's standard place or $STEPDROP_DATA)")] = None,
    image_size: Annotated[int | None, typer.Option(help="resize images to this size (default: native)")] = None,
    steps: Annotated[int, typer.Option(help="total optimizer steps of the run")] = 6000,
    batch_size: Annotated[int, typer.Option(help="images per optimizer step")] = 128,
    lr: Annotated[float, typer.Option(help="peak AdamW learning rate")] = 5e-4,
    warmup_steps: Annotated[int | None, typer.Option(help="linear warm-up steps (default: min(200, steps/10))")] = None,
    ema_decay: Annotated[float, typer.Option(help="decay of the weights' exponential moving average (what is sampled)")] = 0.999,
    grad_clip: Annotated[float, typer.Option(help="clip the gradient's norm to this")] = 1.0,
    flip: Annotated[bool | None, typer.Option("--flip/--no-flip", help="random horizontal flips (default: where it makes sense)")] = None,
    seed: Annotated[int, typer.Option(help="initialisation, data order and noise")] = 0,
    objective: Annotated[str, typer.Option(help="epsilon (DDPM's ε) or flow (a rectified flow's velocity, as SD3 and "
                                                "Flux: s drawn logit-normal)")] = "epsilon",
    schedule: Annotated[str | None, typer.Option(help="noise schedule of an epsilon model: linear or cosine "
                                                      "(default linear; a flow has its own)")] = None,
    timesteps: Annotated[int, typer.Option("--timesteps", help="T, the number of diffusion steps")] = 1000,
    skip_loss_every: Annotated[int, typer.Option(help="S2-DM skip K (e.g. 10); 0 = plain DDPM loss")] = 0,
    skip_loss_tau: Annotated[float, typer.Option(help="S2-DM weight τ of the plain loss")] = 0.99,
    conditional: Annotated[bool, typer.Option(help="class-conditional on the data set's labels, with a null class for "
                                                   "classifier-free guidance")] = False,
    label_dropout: Annotated[float, typer.Option(help="share of a conditional batch trained on the null class")] = 0.1,
    init_from: Annotated[str | None, typer.Option(help="fine-tune from these weights (EMA if present); 'default': the shipped model")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="save OUT/last.pt every N steps (what --resume continues from)")] = 250,
    snapshot_every: Annotated[int, typer.Option(help="also keep the EMA weights every N steps in OUT/snapshots/ "
                                                "(a training curve; 0: off)")] = 0,
    out: Annotated[str, typer.Option(help="run folder; the checkpoint is OUT/last.pt")] = "runs/default",
    resume: Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
) -> None:
    """Train a U-Net: the DDPM ε-objective (optionally with the S2-DM skip-step loss), or a rectified flow (--objective flow)."""
    check_writable(out, "--out", folder=True)
    from stepdrop_search.train import TrainConfig
    from stepdrop_search.train import train as run_training

    cfg = TrainConfig(preset=preset, dataset=dataset, data_dir=data, image_size=image_size, steps=steps,
                      batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, ema_decay=ema_decay,
                      grad_clip=grad_clip, flip=flip, seed=seed, objective=objective, schedule=schedule, T=timesteps,
                      skip_loss_every=skip_loss_every, skip_loss_tau=skip_loss_tau, conditional=conditional,
                      label_dropout=label_dropout, init_from=init_from,
                      checkpoint_every=checkpoint_every, snapshot_every=snapshot_every, out_dir=out, device=device, command=command_line())
    with training_progress() as on_step:
        path = run_training(cfg, resume=resume, on_step=on_step)
    console.print(f"checkpoint: {path}")


class training_progress:
    """A rich progress bar on a terminal; a plain log line every 100 steps otherwise (nohup, CI)."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.live = err_console.is_terminal
        self.progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]:.4f} · {task.fields[ips]:.0f} img/s"),
                                 TimeRemainingColumn(), console=err_console, disable=not self.live)
        self.task = None
        self.progress.__enter__()
        return self.report

    def report(self, r) -> None:
        if self.task is None:
            self.task = self.progress.add_task("train", total=r.total, completed=r.step - 1, loss=r.loss, ips=0.0)
        self.progress.update(self.task, completed=r.step, loss=r.loss, ips=r.images_per_s)
        if not self.live and (r.step % 100 == 0 or r.step == r.total):
            err_console.print(f"step {r.step}/{r.total} loss {r.loss:.4f} lr {r.lr:.2e} {r.images_per_s:.0f} img/s",
                              highlight=False)

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)


@app.command()
@user_errors_exit_2
def export(
    checkpoint: Annotated[Path, typer.Argument(
        help="training checkpoint (runs/…/last.pt) or one of its snapshots (runs/…/snapshots/step-N.pt)")],
    out: Annotated[Path, typer.Option(help="weights file to write; a JSON card is written beside it")],
    curve: Annotated[list[Path] | None, typer.Option(
        help="training curve (bench/training_curve.py --out) for the card; repeatable")] = None,
) -> None:
    """Export the EMA weights of a training checkpoint (or a snapshot the curve chose) as a small model file with a
    JSON card."""
    check_writable(out, "--out")
    from stepdrop_search.train import export_weights

    card = export_weights(checkpoint, out, curve)
    console.print(f"wrote {out} and {out.with_suffix('.json')} (steps {card['steps']}, weights {card['weights_hash']})")


@app.command()
@user_errors_exit_2
def models(
    channels: Annotated[int, typer.Option(help="image channels (1: grey, 3: colour)")] = 1,
    image_size: Annotated[int, typer.Option(help="image side in pixels")] = 28,
) -> None:
    """List the model presets with their parameter count and forward GFLOPs per image."""
    from stepdrop_search.model import PRESETS, UNet, count_parameters, forward_gflops, preset_config

    table = Table(title=f"presets at {channels}×{image_size}×{image_size}")
    for column in ("preset", "parameters", "GFLOPs / image / forward", "levels", "attention"):
        table.add_column(column)
    for name in PRESETS:
        model = UNet(preset_config(name, channels, image_size))
        cfg = model.config
        table.add_row(name, f"{count_parameters(model):,}", f"{forward_gflops(model):.4f}",
                      "-".join(map(str, cfg.channel_mults)), "yes" if cfg.attention else "no")
    console.print(table)


PolicyOption = Annotated[str, typer.Option(help="a policy file (JSON) or a built-in kind (`policy list`)")]
NfeOption = Annotated[int | None, typer.Option(help="target NFE (expected NFE for stochastic kinds)")]
ParamOption = Annotated[list[str] | None, typer.Option("--param", help="kind parameter key=value (repeatable)")]
#: The solver names for help texts (the registry in diffusion.solvers is the truth; a test keeps the two equal).
SOLVER_NAMES = "ddim, ddpm, dpmpp-2m, dpmpp-3m, dpmpp-2m-sde, ipndm, unipc, heun, learned-3m"
SolverOption = Annotated[str | None, typer.Option(help=f"{SOLVER_NAMES} (default: the file's, else ddim)")]
EtaOption = Annotated[float | None, typer.Option(help="solver noise η in [0, 1] (0 = deterministic; default 0 for ddim, 1 for "
                                                  "dpmpp-2m-sde); refused for solvers without η")]
ModelOption = Annotated[Path | None, typer.Option(help="checkpoint, weights file, diffusers UNet2DModel folder, or a "
                                                  "shipped model by name: default (the shipped ε model, also used "
                                                  "when omitted), conditional (class-conditional ε) or flow "
                                                  "(rectified flow)")]
#: The runtime names for help texts (the registry in diffusion.runtimes is the truth; a test keeps the two equal).
RUNTIME_NAMES = "stepdrop, stepdrop-clamp, legacy, k-diffusion, comfyui, a1111, diffusers, comfyui-flow, diffusers-flow"
RuntimeOption = Annotated[str | None, typer.Option(help=f"the conventions to sample under, those of the tool that will run "
                                                   f"the schedule: {RUNTIME_NAMES} (default: a policy file's own, else "
                                                   "stepdrop: no x̂0 clamp, real t, as k-diffusion)")]
GuidanceOption = Annotated[str | None, typer.Option(help="classifier-free guidance of a class-conditional model: W "
                                                    "(scale W at every step) or W:LO:HI (only while k-diffusion's σ is "
                                                    "in [LO, HI]; 2 evaluations per guided step); default: a policy "
                                                    "file's own, else none")]


@app.command(epilog=examples("stepdrop-search sample --policy policies/best.json --n 64 --out grid.png",
                             "stepdrop-search sample --policy karras --nfe 10 --solver dpmpp-2m --save-samples x.npz"))
@user_errors_exit_2
def sample(
    policy: PolicyOption = "uniform",
    nfe: NfeOption = None,
    param: ParamOption = None,
    solver: SolverOption = None,
    eta: EtaOption = None,
    model: ModelOption = None,
    n: Annotated[int, typer.Option(help="number of images")] = 64,
    seed: Annotated[int, typer.Option(help="x_T and solver noise (the same seed gives the same images)")] = 0,
    batch_size: Annotated[int, typer.Option(help="images per network call")] = 256,
    calibrate: Annotated[bool, typer.Option(help="OSS amplitude calibration against a 100-step DDIM teacher")] = False,
    out: Annotated[Path, typer.Option(help="PNG grid to write")] = Path("samples.png"),
    barcode: Annotated[Path | None, typer.Option(help="also write the barcode PNG of evaluated timesteps")] = None,
    save_samples: Annotated[Path | None, typer.Option(help="also write the samples as FILE.npz: `samples` float32 "
                                                      "(N, C, H, W) in [-1, 1], `nfe` per sample, `policy` JSON")] = None,
    runtime: RuntimeOption = None,
    guidance: GuidanceOption = None,
    classes: Annotated[list[int] | None, typer.Option("--class", help="a class-conditional model's classes to sample, "
                                                      "in turn (repeatable; default: class i mod K for image i)")] = None,
    device: DeviceOption = "auto",
) -> None:
    """Sample a grid of images with any policy and solver; prints the measured NFE."""
    for path, flag in ((out, "--out"), (barcode, "--barcode"), (save_samples, "--save-samples")):
        check_writable(path, flag)
    from stepdrop_search.devices import resolve_device
    from stepdrop_search.diffusion.guidance import check_conditioning
    from stepdrop_search.generation import document_nfe, sample_policy
    from stepdrop_search.images import check_npz_path, save_barcode, save_grid
    from stepdrop_search.images import save_samples as write_samples
    from stepdrop_search.loading import load_model

    if save_samples is not None:
        check_npz_path(save_samples)
    loaded = load_model(model, device=resolve_device(device))
    doc = resolve_policy(policy, nfe if nfe is not None else default_nfe(policy), param, solver, eta, loaded, runtime,
                         warn=warn, guidance=guidance)
    check_conditioning(loaded.model, classes=tuple(classes) if classes else None)  # before any calibration or sampling
    with reporter(err_console) as log:
        result = sample_policy(loaded, doc, n=n, seed=seed, batch_size=batch_size, calibrate=calibrate, log=log,
                               classes=tuple(classes) if classes else None)
    written = [save_grid(result.x0, out)]
    if barcode is not None:
        written.append(save_barcode(result.evaluated, result.grid, loaded.schedule.T, barcode))
    if save_samples is not None:
        written.append(write_samples(result.x0, result.nfe, save_samples, policy=doc.to_json(), model=loaded.source))
    nfe_measured = result.nfe.float()
    guided = f", {doc.guidance.describe()}" if doc.guidance is not None else ""
    console.print(f"{n} images, policy {doc.policy.kind}, solver {doc.solver.name}, runtime {doc.runtime.name}{guided}, measured NFE "
                  f"{nfe_measured.mean():.2f} (min {int(nfe_measured.min())}, max {int(nfe_measured.max())}; "
                  f"expected {document_nfe(doc):.2f}); wrote {', '.join(map(str, written))}")


policy_app = typer.Typer(no_args_is_help=True, help="List, show and export skip policies.")
app.add_typer(policy_app, name="policy")


@policy_app.command("list")
def policy_list() -> None:
    """The built-in policy kinds and their parameters (with defaults)."""
    from dataclasses import MISSING, fields

    from stepdrop_search.policies import POLICIES

    table = Table()
    for column in ("kind", "type", "parameters (default)"):
        table.add_column(column)
    for kind, cls in sorted(POLICIES.items()):
        params = [f"{f.name}={f.default if f.default is not MISSING else f.default_factory()}"
                  for f in fields(cls) if f.name not in ("nfe", "schedule")]
        table.add_row(kind, "static" if cls.static else "stochastic", ", ".join(params) or "-")
    console.print(table)


def _policy_document(policy: str, nfe, param, solver, eta, model, runtime=None,
                     guidance=None) -> tuple[PolicyDocument, object]:
    from stepdrop_search.loading import load_model
    from stepdrop_search.policies.io import provenance

    loaded = load_model(model)
    doc = resolve_policy(policy, nfe, param, solver, eta, loaded, runtime, warn=warn, guidance=guidance)
    if not doc.provenance:
        doc = replace(doc, provenance=provenance(command_line(), loaded.weights_hash))
    return doc, loaded


@policy_app.command("show")
@user_errors_exit_2
def policy_show(
    policy: Annotated[str, typer.Argument(help="a built-in kind or a policy file")],
    nfe: NfeOption = None, param: ParamOption = None, solver: SolverOption = None, eta: EtaOption = None,
    model: ModelOption = None, runtime: RuntimeOption = None, guidance: GuidanceOption = None,
) -> None:
    """Print a policy as its JSON document (timesteps included for static kinds)."""
    doc, _ = _policy_document(policy, nfe, param, solver, eta, model, runtime, guidance)
    typer.echo(doc.to_json(), nl=False)


@policy_app.command("export", epilog=examples(
    "stepdrop-search policy export policies/best.json --format comfyui     # a SIGMAS string",
    "stepdrop-search policy export policies/best.json --format diffusers",
    "stepdrop-search policy export karras --nfe 10 --solver dpmpp-2m --out karras10.json"))
@user_errors_exit_2
def policy_export(
    policy: Annotated[str, typer.Argument(help="a built-in kind or a policy file")],
    out: Annotated[Path | None, typer.Option(help="file to write (required for --format json)")] = None,
    format: Annotated[str, typer.Option(help="json (our policy file), diffusers (the scheduler, config and set_timesteps "
                                           "call that reproduce it), sigmas (k-diffusion σ list with a trailing 0), "
                                           "comfyui (a SIGMAS string), a1111 (the \"[…]\" list of the Forge/reForge "
                                           "custom-scheduler extensions) or python (a torch-only sampler file for learned "
                                           "solvers); refused where that tool would sample "
                                           "something else than was measured")] = "json",
    nfe: NfeOption = None, param: ParamOption = None, solver: SolverOption = None, eta: EtaOption = None,
    model: ModelOption = None, runtime: RuntimeOption = None, guidance: GuidanceOption = None,
) -> None:
    """Write a policy file for the model's noise schedule (atomically), or its steps in another tool's form."""
    check_writable(out, "--out")
    from stepdrop_search.files import write_text
    from stepdrop_search.policies import save_policy
    from stepdrop_search.policies.transfer import FORMATS, a1111_text, check_export, comfyui_text, export_hints, python_text

    if format not in FORMATS:
        raise UserError(f"unknown --format {format!r}; choose {', '.join(FORMATS)}")
    doc, loaded = _policy_document(policy, nfe, param, solver, eta, model, runtime, guidance)
    if format != "json":
        check_export(doc, format, policy)
    if format == "diffusers":
        _export_diffusers(doc, out)
        return
    if format == "sigmas":
        _export_sigmas(doc, out)
        return
    if format == "python":
        text = python_text(doc, policy)
        if out is None:
            typer.echo(text, nl=False)
        else:
            write_text(out, text)
            err_console.print(f"wrote {out}: x0 = sample(model, noise * (1 + SIGMAS[0] ** 2) ** 0.5, SIGMAS, COEFFICIENTS) "
                              "with a k-diffusion denoiser", highlight=False)
        return
    if format in ("comfyui", "a1111"):
        text = comfyui_text(doc.policy) if format == "comfyui" else a1111_text(doc.policy)
        console.print(text, markup=False, highlight=False, soft_wrap=True)
        err_console.print("\n".join(export_hints(doc, format)), markup=False, highlight=False, soft_wrap=True)
        if out is not None:
            write_text(out, text + "\n")
            err_console.print(f"wrote {out}", highlight=False)
        return
    if out is None:
        raise UserError("--format json needs --out FILE")
    save_policy(out, doc)
    console.print(f"wrote {out} ({doc.policy.kind}, nfe {doc.policy.nfe}, schedule {doc.policy.schedule.hash})")


@policy_app.command("import")
@user_errors_exit_2
def policy_import(
    out: Annotated[Path, typer.Option(help="policy file to write")],
    sigmas: Annotated[str | None, typer.Option(help="a published σ list, e.g. \"[14.61, 6.47, …, 0.029, 0]\" "
                                               "(brackets, commas, spaces as any tool writes them)")] = None,
    timesteps: Annotated[str | None, typer.Option(help="a published timestep list, descending")] = None,
    source_t: Annotated[int | None, typer.Option(help="the T the --timesteps were published for (rescaled onto "
                                                 "the model's T)")] = None,
    solver: SolverOption = None, eta: EtaOption = None, model: ModelOption = None, runtime: RuntimeOption = None,
) -> None:
    """Turn any published σ or timestep list into an explicit policy for the model's noise schedule (σ → t in log σ; on a
    rectified flow σ is the flow time s, as flow tools write it)."""
    check_writable(out, "--out")
    from stepdrop_search.diffusion.runtimes import runtime_named
    from stepdrop_search.diffusion.solvers import SolverSpec
    from stepdrop_search.loading import load_model
    from stepdrop_search.policies import save_policy
    from stepdrop_search.policies.io import provenance
    from stepdrop_search.policies.transfer import from_sigmas, from_timesteps, parse_numbers

    if (sigmas is None) == (timesteps is None):
        raise UserError("give exactly one of --sigmas or --timesteps")
    if source_t is not None and timesteps is None:
        raise UserError("--source-t rescales --timesteps; a σ list needs none")
    values = parse_numbers(sigmas if sigmas is not None else timesteps, "--sigmas" if sigmas is not None else "--timesteps")
    wanted = runtime_named(runtime)
    loaded = load_model(model)
    wanted.check_family(loaded.schedule.is_flow)
    policy = from_sigmas(values, loaded.schedule) if sigmas is not None else \
        from_timesteps(values, loaded.schedule, source_t)
    run = SolverSpec(solver or "ddim", eta)  # the list is the grid: Heun spends what its length costs
    wanted.check_solver(run.name, run.eta)
    doc = PolicyDocument(policy, run, provenance(command_line(), loaded.weights_hash,
                                                 imported={"sigmas": sigmas, "timesteps": timesteps, "source_T": source_t}),
                         wanted)
    save_policy(out, doc)
    console.print(f"wrote {out}: {policy.nfe} steps {[round(float(t), 3) for t in policy.timesteps()]}", highlight=False)


@policy_app.command("resample")
@user_errors_exit_2
def policy_resample(
    policy: Annotated[str, typer.Argument(help="a policy file (or a built-in kind)")],
    nfe: Annotated[int, typer.Option(help="the NFE to move the schedule to (a ceiling, counted in the file's runtime)")],
    out: Annotated[Path, typer.Option(help="policy file to write")],
    model: ModelOption = None,
) -> None:
    """Move a schedule to another number of steps by log-linear interpolation in σ (as AYS does); the solver is kept."""
    check_writable(out, "--out")
    from stepdrop_search.diffusion.solvers import spec_for_nfe
    from stepdrop_search.policies import save_policy
    from stepdrop_search.policies.io import provenance
    from stepdrop_search.policies.transfer import resample

    doc, loaded = _policy_document(policy, None, None, None, None, model)
    solver = doc.solver.solver
    name = solver.base if solver.learned else doc.solver.name  # learned coefficients belong to the old grid's steps
    spec, steps = spec_for_nfe(name, nfe, doc.solver.eta if solver.has_eta else None, doc.runtime)
    if solver.learned:
        err_console.print(f"{doc.solver.name}'s coefficients belong to its {doc.policy.nfe} steps: the resampled schedule "
                          f"runs its base solver, {name} (`optimize --nfe {nfe}` learns a solver for {nfe})", highlight=False)
    moved = resample(doc.policy, steps)
    save_policy(out, PolicyDocument(moved, spec, provenance(command_line(), loaded.weights_hash,
                                                            resampled_from={"policy": policy, "nfe": doc.policy.nfe}),
                                    doc.runtime))
    console.print(f"wrote {out}: {steps} steps {[round(float(t), 2) for t in moved.timesteps()]}", highlight=False)


def _export_diffusers(doc, out: Path | None) -> None:
    """The scheduler, config and ``set_timesteps`` call that reproduce the policy in diffusers (with --out, as JSON)."""
    from stepdrop_search.files import write_json
    from stepdrop_search.interop import diffusers_export
    from stepdrop_search.policies.transfer import run_cost

    payload = diffusers_export(doc)
    start = "our x_T is the pipeline's latents" if "latents_scale" not in payload else \
        f"our x_T times {payload['latents_scale']!r} is the pipeline's latents"
    lines = [payload["code"], f"# {payload['scheduler']}; {start}; {run_cost(doc)} network "
             f"evaluations per sample; measured under runtime {doc.runtime.name}"]
    if "if_you_keep_your_scheduler" in payload:
        lines.append("# keeping your pipeline's own scheduler (SD3's shift 3, Flux's dynamic shifting)? It shifts these σ again: "
                     "run this first (mu: what the pipeline passes)")
        lines += [f"# {line}" for line in payload["if_you_keep_your_scheduler"].splitlines()]
    if payload["takes_solver_noise"]:
        lines.append("# pass each step's noise as scheduler.step(..., variance_noise=z) to reproduce samples one for one")
    if out is not None:
        write_json(out, payload)
        lines.append(f"# wrote {out}")
    console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)


def _export_sigmas(doc, out: Path | None) -> None:
    """Print (and with --out write as JSON) the σ list, in positional notation: ComfyUI's ManualSigmas reads no
    exponents, and the shortest round-trip digits give back the same steps through ``--policy sigmas``."""
    from stepdrop_search.files import write_json
    from stepdrop_search.policies.transfer import a1111_text, export_hints, kdiffusion_call, run_cost, sigma_list

    sigmas = sigma_list(doc.policy)
    lines = [f"sigmas = {a1111_text(doc.policy)}", *export_hints(doc, "sigmas")]
    if out is not None:
        write_json(out, {"sigmas": sigmas, "timesteps": doc.policy.timesteps().tolist(), "solver": doc.solver.to_dict(),
                         "k_diffusion": kdiffusion_call(doc), "nfe": run_cost(doc), "runtime": doc.runtime.to_dict(),
                         "noise_schedule": doc.policy.schedule.to_dict(), "noise_schedule_hash": doc.policy.schedule.hash})
        lines.append(f"# wrote {out}")
    console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)


def parse_int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values:
        raise UserError(f"{flag} needs at least one value")
    return values


@app.command(epilog=examples(
    "stepdrop-search evaluate --policy policies/best.json --baselines ddim,dpmpp-2m,heun --nfe 10,25",
    "stepdrop-search evaluate --policy pool/ --samples 500 --metrics fid     # every file in a folder",
    "stepdrop-search evaluate --suite stepdrop --samples 100 --seeds 2"))
@user_errors_exit_2
def evaluate(
    policy: Annotated[list[Path] | None, typer.Option("--policy", help="policy file, or a folder of them "
                                                      "(optimize --save-pool), to evaluate (repeatable)", rich_help_panel=BASICS)] = None,
    baselines: Annotated[str, typer.Option(help=f"comma-separated: a solver on uniform steps ({SOLVER_NAMES}) or any "
                                           "policy kind (with DDIM)", rich_help_panel=BASICS)] = "",
    nfe: Annotated[str, typer.Option(help="comma-separated NFE values for the baselines", rich_help_panel=BASICS)] = "10,25,50",
    suite: Annotated[str | None, typer.Option(help="'stepdrop': StepDrop's Tables 1-3; 'peers': every peer schedule at each --nfe",
                                              rich_help_panel=MEASURED)] = None,
    solvers: Annotated[str | None, typer.Option(help="also run each --policy with these solvers (schedule transfer)",
                                                rich_help_panel=MEASURED)] = None,
    dp_samples: Annotated[int, typer.Option(help="teacher trajectories for the DP rows of --suite peers", rich_help_panel=MEASURED)] = 32,
    samples: Annotated[int, typer.Option(help="samples per policy and seed", rich_help_panel=BASICS)] = 2000,
    seeds: Annotated[int, typer.Option(help="seeds 0..S-1; every policy gets the same x_T per seed", rich_help_panel=BASICS)] = 3,
    metrics: Annotated[str, typer.Option(help="comma-separated from fid,kid,is,prc,residual,throughput,gflops,memory",
                                         rich_help_panel=MEASURED)] =
    ",".join(("fid", "kid", "throughput", "gflops")),
    teacher: Annotated[str, typer.Option(help="teacher of the residual, <solver>-<steps>", rich_help_panel=MEASURED)] = "ddim-1000",
    residual_samples: Annotated[int, typer.Option(help="samples (per seed) compared with the teacher", rich_help_panel=MEASURED)] = 256,
    batch_size: Annotated[int, typer.Option(help="images per network call", rich_help_panel=ADVANCED)] = 256,
    model: Annotated[Path | None, typer.Option(help="checkpoint, weights file or diffusers UNet2DModel folder (default: "
                                                          "the shipped model)", rich_help_panel=BASICS)] = None,
    features: Annotated[Path | None, typer.Option(help="the coach feature file, what searches optimise (default: the "
                                                  "shipped one for the model's data)", rich_help_panel=MEASURED)] = None,
    judge: Annotated[Path | None, typer.Option(help="the judge feature file, which no search sees; the report leads "
                                               "with it (default: the shipped one for the model's data)", rich_help_panel=MEASURED)] = None,
    inception_weights: Annotated[Path | None, typer.Option(help="torch-fidelity Inception weights, for inception-fid",
                                                           rich_help_panel=ADVANCED)] = None,
    data: Annotated[str | None, typer.Option(help="real images for inception-fid (the model's data set folder)",
                                             rich_help_panel=ADVANCED)] = None,
    out: Annotated[Path, typer.Option(help="results stem: writes OUT.json, .csv, .md and .png",
                                      rich_help_panel=BASICS)] = Path("results/evaluation"),
    device: Annotated[str, typer.Option(help="auto (the GPU when there is one), cpu, cuda or cuda:N", rich_help_panel=BASICS)] = "auto",
    compile_mode: Annotated[str, typer.Option("--compile", help="torch.compile the network: on, off, or auto "
                                              "(when the run makes ≥ 250k sample-forwards)", rich_help_panel=ADVANCED)] = "auto",
    runtime: Annotated[str, typer.Option(help=f"the conventions every row is sampled under: {RUNTIME_NAMES}; a policy "
                                         "file measured under another is re-run under this one", rich_help_panel=MEASURED)] = "stepdrop",
    guidance: Annotated[str, typer.Option(help="a class-conditional model's classifier-free guidance, comma-separated: "
                                          "every row once per W (scale W at every step) or W:LO:HI (only while σ ∈ "
                                          "[LO, HI]); NFE counts both evaluations of a guided step, and a baseline "
                                          "takes the most uniform steps whose counted NFE fits --nfe",
                                          rich_help_panel=MEASURED)] = "",
) -> None:
    """Measure policies against baselines: quality with error bars, measured NFE, throughput, GFLOPs, memory."""
    check_writable(out.with_suffix(".json"), "--out")
    from stepdrop_search.compare import CompareConfig, run_comparison, write_comparison
    from stepdrop_search.report import results_table

    cfg = CompareConfig(baselines=comma_list(baselines), nfes=tuple(parse_int_list(nfe, "--nfe")),
                        policies=tuple(map(str, policy or ())), solvers=comma_list(solvers or ""), suite=suite,
                        dp_samples=dp_samples, samples=samples, seeds=seeds, metrics=comma_list(metrics), teacher=teacher,
                        residual_samples=residual_samples, batch_size=batch_size, model=str(model) if model else None,
                        features=str(features) if features else None, judge=str(judge) if judge else None,
                        inception_weights=str(inception_weights) if inception_weights else None, data=data,
                        device=device, compile=compile_mode, command=command_line(), runtime=runtime,
                        guidance=comma_list(guidance))
    with reporter(err_console) as log:
        comparison = run_comparison(cfg, log=log, warn=warn)
    spread = "(mean ± std over seeds)" if seeds > 1 else "(one seed: no spread; --seeds 3 gives error bars)"
    console.print(results_table(comparison.results, f"{samples} samples × {seeds} seeds, same x_T per seed {spread}, "
                                                    f"runtime {runtime}"))
    console.print("wrote " + ", ".join(str(p) for p in write_comparison(comparison, out)))


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


@app.command(epilog=examples(
    "stepdrop-search optimize --nfe 10     # the shipped model, the whole search in --budget 480 s",
    "stepdrop-search optimize --nfe 25 --runtime comfyui --out my-sigmas.json     # for ComfyUI's samplers",
    "stepdrop-search optimize --model diffusers:path/to/unet --nfe 10 --budget 3600 --n-jobs 4"))
@user_errors_exit_2
def optimize(
    nfe: Annotated[int, typer.Option(help="NFE of the sampler to find (network evaluations, counted)", rich_help_panel=BASICS)] = 25,
    method: Annotated[str, typer.Option(help="all, or a comma-separated subset of gradient, learned-solver (steps and "
                                        "solver coefficients; by default at NFE ≤ 6), dp-gits, dp-oss, optuna (the pool's "
                                        "analytic schedules are always scored)", rich_help_panel=SEARCH)] = "all",
    kind: Annotated[str, typer.Option(help="policy kind to search (explicit = free step sets)", rich_help_panel=SEARCH)] = "explicit",
    solver: Annotated[str, typer.Option(help="auto (every solver in the pool, the best ones searched), one of: "
                                        + SOLVER_NAMES + "; or a comma-separated list (the pool holds only these, the "
                                        "best ones searched)", rich_help_panel=SEARCH)] = "auto",
    trials: Annotated[int, typer.Option(help="finished trials the study should hold (resumes count); --budget "
                                        "usually stops the search first", rich_help_panel=SEARCH)] = 10000,
    budget: Annotated[float | None, typer.Option(help="seconds for the whole run, teacher, DPs, search and selection "
                                                 "(0: no limit); the search gets half of what the pool's rungs "
                                                 "leave, the selection the rest", rich_help_panel=BASICS)] = 480.0,
    timeout: Annotated[float | None, typer.Option(help="seconds each worker may search (within --budget)", rich_help_panel=WORKERS)] = None,
    sampler: Annotated[str, typer.Option(help="tpe, cmaes, gp or nsga2", rich_help_panel=SEARCH)] = "tpe",
    study: Annotated[str | None, typer.Option(help="study name (default from kind, solver, NFE)", rich_help_panel=WORKERS)] = None,
    storage: Annotated[str | None, typer.Option(help="database URL or journal:PATH (default sqlite in studies/)",
                                                rich_help_panel=WORKERS)] = None,
    n_jobs: Annotated[int, typer.Option(help="local worker processes sharing the study", rich_help_panel=WORKERS)] = 1,
    samples: Annotated[int | None, typer.Option(help="rung 0: samples every pool candidate and every trial is scored on "
                                                "(default: about 1280/NFE, 64..512)", rich_help_panel=SEARCH)] = None,
    trial_samples: Annotated[int, typer.Option(help="samples each study trial is scored on (its best go to rung 1)",
                                               rich_help_panel=SEARCH)] = 64,
    promote: Annotated[int, typer.Option(help="study trials promoted to rung 1", rich_help_panel=SEARCH)] = 8,
    promote_samples: Annotated[int | None, typer.Option(help="rung 1: samples the promoted candidates are scored on "
                                                        "(default: 4 × rung 0, at most 1024)", rich_help_panel=SEARCH)] = None,
    held_out_samples: Annotated[int | None, typer.Option(help="the selection's largest round: samples of the held-out "
                                                         "selection seed a finalist can reach (default: 2 × rung 1, "
                                                         "at least 2048); a cheaper row level with the leader and the "
                                                         "leader get twice that in a deciding round", rich_help_panel=SELECTION)] = None,
    seed: Annotated[int, typer.Option(help="search noise: seed s searches on x_T seed 2^24+s and selects on "
                                      "2^24+2^23+s, never an evaluate seed", rich_help_panel=SEARCH)] = 0,
    residual_weight: Annotated[float, typer.Option(help="objective = proxy-FID + w · residual to --teacher (0: proxy-FID "
                                                   "alone, no teacher)", rich_help_panel=SEARCH)] = 0.0,
    teacher: Annotated[str, typer.Option(help="residual teacher <solver>-<steps>", rich_help_panel=SEARCH)] = "dpmpp-2m-200",
    free_boundary: Annotated[bool, typer.Option(help="search the first and last step too", rich_help_panel=SEARCH)] = True,
    search_eta: Annotated[bool, typer.Option(help="also search η (with a --solver that has one)", rich_help_panel=SEARCH)] = False,
    multi_objective: Annotated[bool, typer.Option(help="NSGA-II over (objective, NFE) → Pareto set; on a class-conditional model "
                                                  "also class accuracy (maximised)", rich_help_panel=SEARCH)] = False,
    nfe_range: Annotated[str | None, typer.Option(help="LO,HI for --multi-objective", rich_help_panel=SEARCH)] = None,
    dp_grid: Annotated[int, typer.Option(help="teacher grid size N of the DP searches (GITS: 61)", rich_help_panel=METHODS)] = 61,
    dp_spacing: Annotated[str, typer.Option(help="DP teacher grid: karras (ρ = 7 in σ, as GITS), uniform (integer steps) "
                                            "or logsnr (real-valued t)", rich_help_panel=METHODS)] = "karras",
    dp_teacher: Annotated[str, typer.Option(help="deterministic solver of the DP teacher run (GITS: ipndm)", rich_help_panel=METHODS)] = "ipndm",
    dp_samples: Annotated[int, typer.Option(help="teacher trajectories for DP-GITS", rich_help_panel=METHODS)] = 64,
    dp_oss_samples: Annotated[int, typer.Option(help="of those, the ones DP-OSS runs on (≈ N·K NFE each)", rich_help_panel=METHODS)] = 8,
    gits_cost: Annotated[str, typer.Option(help="dev (GITS: signed distance from each trajectory's line), "
                                           "l2-endpoint, l1 or l2", rich_help_panel=METHODS)] = "dev",
    gradient_loss: Annotated[str, typer.Option(help="gradient method's loss: fid (batch proxy-FID, no teacher), l2 or "
                                               "features (to --teacher's outputs)", rich_help_panel=METHODS)] = "fid",
    gradient_space: Annotated[str, typer.Option(help="learned steps are spaced in logsnr or sigma", rich_help_panel=METHODS)] = "logsnr",
    gradient_samples: Annotated[int, typer.Option(help="x_T the gradient method trains on (as many again validate)",
                                                  rich_help_panel=METHODS)] = 256,
    gradient_epochs: Annotated[int, typer.Option(help="most epochs per solver (--budget usually stops it first)", rich_help_panel=METHODS)] = 10,
    gits_gamma: Annotated[float, typer.Option(help="GITS's discount γ: the cost of the rest of the path counts γ "
                                              "times (γ > 1 weighs the later steps' errors more)", rich_help_panel=METHODS)] = 1.15,
    model: Annotated[Path | None, typer.Option(help="checkpoint, weights file or diffusers UNet2DModel folder (default: "
                                                          "the shipped model)", rich_help_panel=BASICS)] = None,
    features: Annotated[Path | None, typer.Option(help="the coach feature file the search scores on (default: the "
                                                  "shipped one)", rich_help_panel=SELECTION)] = None,
    judge: Annotated[Path | None, typer.Option(help="the judge feature file the selection decides on, which the search "
                                               "never sees (default: the shipped one)", rich_help_panel=SELECTION)] = None,
    out: Annotated[Path | None, typer.Option(help="policy file to write (default policies/best-….json; the "
                                             "selection's leaderboard goes beside it)", rich_help_panel=BASICS)] = None,
    save_pool: Annotated[Path | None, typer.Option(help="also write every pool candidate as a policy file into this "
                                                   "folder (for evaluate --policy FOLDER)", rich_help_panel=SELECTION)] = None,
    runtime: Annotated[str, typer.Option(help=f"search, select and export under this tool's conventions ({RUNTIME_NAMES}); "
                                         "only its solvers are searched", rich_help_panel=SELECTION)] = "stepdrop",
    device: Annotated[str, typer.Option(help="auto (the GPU when there is one), cpu, cuda or cuda:N", rich_help_panel=BASICS)] = "auto",
) -> None:
    """Find the best sampler (solver and steps) for an NFE, prove it on held-out noise and export it as a policy file."""
    from stepdrop_search.policies import load_policy
    from stepdrop_search.policies.transfer import runs_in
    from stepdrop_search.search.optimize import optimize as run_optimize
    from stepdrop_search.search.settings import OptimizeSettings

    span = tuple(parse_int_list(nfe_range, "--nfe-range")) if nfe_range else None
    if span is not None and len(span) != 2:
        raise UserError("--nfe-range takes LO,HI")
    settings = OptimizeSettings.from_flags(
        nfe=nfe, method=method, kind=kind, solver=solver, model=str(model) if model else None,
        features=str(features) if features else None, judge=str(judge) if judge else None, device=device,
        samples=samples, trial_samples=trial_samples,
        promote=promote, promote_samples=promote_samples, held_out_samples=held_out_samples,
        seed=seed, residual_weight=residual_weight, teacher=teacher, trials=trials, timeout=timeout, budget=budget,
        sampler=sampler, study=study, storage=storage, n_jobs=n_jobs, free_boundary=free_boundary, search_eta=search_eta,
        dp_grid=dp_grid, dp_spacing=dp_spacing, dp_samples=dp_samples, dp_oss_samples=dp_oss_samples,
        dp_teacher=dp_teacher, gits_cost=gits_cost, gits_gamma=gits_gamma, gradient_loss=gradient_loss,
        gradient_space=gradient_space, gradient_samples=gradient_samples, gradient_epochs=gradient_epochs,
        multi_objective=multi_objective, nfe_range=span, out=str(out) if out else None,
        save_pool=str(save_pool) if save_pool else None, command=command_line(), runtime=runtime)
    with reporter(err_console) as log:
        result = run_optimize(settings, log=log)
    console.print(leaderboard_table(result))
    console.print(f"{result.trials} trials in study {result.study_name}; {result.wall_time_s:.0f} s")
    if result.leaderboard is not None:
        console.print(result.leaderboard.verdict())
    for path in result.exported:
        console.print(f"exported {path}: {runs_in(load_policy(path))}")
    console.print("wrote " + ", ".join(map(str, result.reports)))


def leaderboard_table(result, rows: int = 12) -> Table:
    """The selection's first ``rows`` rows (those that reached the most samples, best judge FID first), each with its
    paired difference to the export and the coach beside it; a Pareto set's members with their judge FID."""
    board = result.leaderboard
    shown_rows = board.rows[:rows] if board else result.candidates
    title = (f"selection on the judge: {len(shown_rows)} of {len(board.rows)} finalists, those that went furthest, "
             "Δ paired with the export" if board else "Pareto set") + f"; runtime {result.settings.model.runtime}"
    table = Table(title=title)
    for column in ("finalist", "NFE", "samples", "judge FID", "Δ judge ± SE", "coach FID", "Δ coach", "status"):
        table.add_column(column)
    for c in shown_rows:
        h = c.held_out
        delta = f"{h.judge_difference:+.3f} ± {h.judge_se:.3f}" if h.judge_difference is not None else ""
        table.add_row(c.name, f"{h.nfe:.1f}", str(h.samples), _number(h.judge_fid), delta, _number(h.coach_fid),
                      f"{h.coach_difference:+.3f}" if h.coach_difference is not None else "", h.status)
    return table


def _number(value) -> str:
    return "" if value is None else f"{value:.4f}"


studies_app = typer.Typer(no_args_is_help=True, help="The studies optimize left: list them, show their trials, export one.")
app.add_typer(studies_app, name="studies")
StorageOption = Annotated[str | None, typer.Option(help="database URL or journal:PATH (default: the study files in studies/)")]


@studies_app.command("list")
@user_errors_exit_2
def studies_list(storage: StorageOption = None) -> None:
    """Every study in the storage (or in studies/): its trials by state and its best value."""
    from stepdrop_search.search.studies import list_studies

    table = Table()
    for column in ("storage", "study", "direction", "complete", "pruned", "failed", "best value", "best trial"):
        table.add_column(column)
    for row in list_studies(storage):
        table.add_row(row.storage, row.name, ", ".join(row.directions), str(row.complete), str(row.pruned),
                      str(row.failed), _number(row.best_value), "" if row.best_trial is None else str(row.best_trial))
    console.print(table)


@studies_app.command("show")
@user_errors_exit_2
def studies_show(
    name: Annotated[str, typer.Argument(help="the study")],
    storage: StorageOption = None,
    top: Annotated[int, typer.Option(help="rows to show, best first (0: all)")] = 20,
) -> None:
    """A study's trials, best first: state, objective value(s), solver and the steps each one proposed."""
    from stepdrop_search.search.studies import study_trials

    rows = study_trials(name, storage)
    states = {state: sum(row.state == state for row in rows) for state in dict.fromkeys(row.state for row in rows)}
    table = Table(title=f"{name}: {len(rows)} trials (" + ", ".join(f"{n} {state}" for state, n in states.items()) + ")")
    for column in ("trial", "state", "value", "solver", "steps", "seeded from"):
        table.add_column(column)
    for row in rows[:top or None]:
        values = ", ".join(f"{v:.4f}" for v in row.values) if row.values else "-"
        steps = ", ".join(f"{t:g}" for t in row.steps) if row.steps else "-"
        table.add_row(str(row.number), row.state, values, row.solver or "-", steps, row.source or "")
    console.print(table)


@studies_app.command("export")
@user_errors_exit_2
def studies_export(
    name: Annotated[str, typer.Argument(help="the study")],
    out: Annotated[Path, typer.Option(help="policy file to write")],
    trial: Annotated[str, typer.Option(help="a trial number, or best")] = "best",
    storage: StorageOption = None,
) -> None:
    """A chosen trial's policy as a policy file (what `evaluate --policy` and `sample --policy` read)."""
    check_writable(out, "--out")
    from stepdrop_search.policies import save_policy
    from stepdrop_search.search.studies import trial_document

    doc = trial_document(name, trial, storage)
    save_policy(out, doc)
    console.print(f"wrote {out}: trial {doc.provenance['search']['trial']} of {name} ({doc.solver.name}, "
                  f"{doc.policy.nfe} steps)", highlight=False)


@studies_app.command("dashboard")
@user_errors_exit_2
def studies_dashboard(
    name: Annotated[str, typer.Argument(help="the study")],
    storage: StorageOption = None,
    host: Annotated[str, typer.Option(help="address to serve on (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to serve on (0: a free one)")] = 0,
) -> None:
    """Open a study in optuna-dashboard (its trials, history, parameter importances) until Ctrl-C."""
    from stepdrop_search.search.studies import dashboard

    server, url = dashboard(name, storage, host, port)
    console.print(f"optuna-dashboard for {name}: {url} (Ctrl-C stops it)", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


features_app = typer.Typer(no_args_is_help=True, help="The proxy feature network behind proxy-FID/KID/IS/PR.")
app.add_typer(features_app, name="features")


@features_app.command("train")
@user_errors_exit_2
def features_train(
    dataset: Annotated[str, typer.Option(help="a labelled data set: fashion-mnist, mnist, cifar10, synthetic, or folder "
                                         "(--data DIR with one subfolder of images per class)")] = "fashion-mnist",
    data: Annotated[str | None, typer.Option(help="data folder (default: the data set's standard place)")] = None,
    image_size: Annotated[int | None, typer.Option(help="resize to the diffusion model's resolution")] = None,
    steps: Annotated[int, typer.Option(help="optimizer steps")] = 1200,
    batch_size: Annotated[int, typer.Option(help="images per optimizer step")] = 128,
    seed: Annotated[int, typer.Option(help="initialisation and data order")] = 0,
    family: Annotated[str, typer.Option(help="plain (the coach's) or residual (the judge's)")] = "plain",
    width: Annotated[int, typer.Option(help="channels of the first block (doubled twice)")] = 16,
    images: Annotated[str, typer.Option(help="training images: all, half-a (even indices) or half-b (odd)")] = "all",
    out: Annotated[Path, typer.Option(help="feature file to write (a JSON card goes beside it)")] = Path("features.pt"),
    device: DeviceOption = "auto",
) -> None:
    """Train the classifier, report its held-out accuracy and store the real data's reference statistics.

    The shipped judge: --family residual --width 24 --images half-b --seed 1 --steps 2400."""
    check_writable(out, "--out")
    from stepdrop_search.devices import resolve_device
    from stepdrop_search.objectives.features import train_feature_net

    card = train_feature_net(dataset, data, out, steps=steps, batch_size=batch_size, seed=seed, image_size=image_size,
                             family=family, width=width, images=images, command=command_line(), device=resolve_device(device),
                             log=lambda m: err_console.print(m, highlight=False))
    console.print(f"wrote {out}: test accuracy {card['accuracy_test']:.2%} on {card['test_images']} images")


@features_app.command("score")
@user_errors_exit_2
def features_score(
    dataset: Annotated[str, typer.Option(help="the data set whose real images are scored")] = "fashion-mnist",
    data: Annotated[str | None, typer.Option(help="data folder (default: the data set's standard place)")] = None,
    split: Annotated[str, typer.Option(help="train or test")] = "train",
    samples: Annotated[int, typer.Option(help="real images to score (0 = all)")] = 2000,
    seed: Annotated[int, typer.Option(help="which images are drawn, and KID's subsets")] = 0,
    features: Annotated[Path | None, typer.Option(help="feature file (default: the shipped one of --role)")] = None,
    role: Annotated[str, typer.Option(help="which shipped network scores: coach or judge")] = "coach",
    device: DeviceOption = "auto",
) -> None:
    """Score *real* images against the reference statistics: the metric's floor for that many samples."""
    import torch

    from stepdrop_search.data import load_dataset
    from stepdrop_search.devices import resolve_device
    from stepdrop_search.objectives.features import SHIPPED, load_features
    from stepdrop_search.objectives.metrics import fidelity_metrics

    dev = resolve_device(device)
    if role not in SHIPPED:
        raise UserError(f"--role is one of {', '.join(SHIPPED)}")
    feature_file = load_features(features, dataset={"name": dataset}, role=role, device=dev)
    real = load_dataset(dataset, data, split=split, image_size=feature_file.dataset.get("image_size")).images
    if 0 < samples < len(real):
        real = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:samples]]
    values = fidelity_metrics(real, feature_file, {"fid", "kid", "is", "prc"}, device=dev, seed=seed)
    console.print(f"{len(real)} real {split} images vs the {role}'s reference: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))


def main() -> None:
    from stepdrop_search.runtime import keep_freed_memory_for_reuse

    keep_freed_memory_for_reuse()
    app()
