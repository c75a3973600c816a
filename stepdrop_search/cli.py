"""The ``stepdrop-search`` command line: a thin typer layer over the Python API.

Each command parses flags, calls one library function and prints the result. A :class:`UserError`
from anywhere below becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from stepdrop_search.errors import UserError
from stepdrop_search.policies.io import PolicyDocument

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find the best way to sample a diffusion model with few network evaluations.")
console = Console(soft_wrap=True)
err_console = Console(stderr=True)


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


def command_line() -> str:
    return shlex.join(["stepdrop-search", *sys.argv[1:]])


@app.command()
@user_errors_exit_2
def train(
    preset: Annotated[str, typer.Option(help="model size: tiny, xs, s, paper")] = "xs",
    dataset: Annotated[str, typer.Option(help="fashion-mnist, mnist, cifar10, folder, synthetic")] = "fashion-mnist",
    data: Annotated[str | None, typer.Option(help="data folder (default: the data set's standard place or $STEPDROP_DATA)")] = None,
    image_size: Annotated[int | None, typer.Option(help="resize images to this size (default: native)")] = None,
    steps: Annotated[int, typer.Option(help="total optimizer steps of the run")] = 6000,
    batch_size: int = 128,
    lr: Annotated[float, typer.Option(help="peak AdamW learning rate")] = 5e-4,
    warmup_steps: Annotated[int | None, typer.Option(help="linear warm-up steps (default: min(200, steps/10))")] = None,
    ema_decay: float = 0.999,
    grad_clip: float = 1.0,
    flip: Annotated[bool | None, typer.Option("--flip/--no-flip", help="random horizontal flips (default: where it makes sense)")] = None,
    seed: int = 0,
    schedule: Annotated[str, typer.Option(help="noise schedule: linear or cosine")] = "linear",
    timesteps: Annotated[int, typer.Option("--timesteps", help="T, the number of diffusion steps")] = 1000,
    skip_loss_every: Annotated[int, typer.Option(help="S2-DM skip K (e.g. 10); 0 = plain DDPM loss")] = 0,
    skip_loss_tau: Annotated[float, typer.Option(help="S2-DM weight τ of the plain loss")] = 0.99,
    checkpoint_every: int = 250,
    out: Annotated[str, typer.Option(help="run folder; the checkpoint is OUT/last.pt")] = "runs/default",
    resume: Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
) -> None:
    """Train a U-Net with the DDPM ε-objective (optionally with the S2-DM skip-step loss)."""
    from stepdrop_search.train import TrainConfig
    from stepdrop_search.train import train as run_training

    cfg = TrainConfig(preset=preset, dataset=dataset, data_dir=data, image_size=image_size, steps=steps,
                      batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, ema_decay=ema_decay,
                      grad_clip=grad_clip, flip=flip, seed=seed, schedule=schedule, T=timesteps,
                      skip_loss_every=skip_loss_every, skip_loss_tau=skip_loss_tau,
                      checkpoint_every=checkpoint_every, out_dir=out, device=device, command=command_line())
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
    checkpoint: Annotated[Path, typer.Argument(help="training checkpoint (runs/…/last.pt)")],
    out: Annotated[Path, typer.Option(help="weights file to write; a JSON card is written beside it")],
) -> None:
    """Export the EMA weights of a training checkpoint as a small model file with a JSON card."""
    from stepdrop_search.train import export_weights

    card = export_weights(checkpoint, out)
    console.print(f"wrote {out} and {out.with_suffix('.json')} (steps {card['steps']}, weights {card['weights_hash']})")


@app.command()
@user_errors_exit_2
def models(
    channels: int = 1,
    image_size: int = 28,
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


def parse_params(items: list[str] | None) -> dict:
    """--param key=value (repeatable); values are read as JSON (numbers, lists, true/false), else text."""
    params = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--param {item!r} is not key=value")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def resolve_policy(spec: str, nfe: int | None, params: list[str] | None, solver: str | None, eta: float | None,
                   schedule) -> PolicyDocument:
    """A policy file (validated against the model's schedule) or a built-in KIND built for that schedule."""
    from stepdrop_search.diffusion.solvers import SolverSpec
    from stepdrop_search.policies import POLICIES, load_policy, policy_class

    if spec not in POLICIES and (spec.endswith(".json") or Path(spec).exists()):
        doc = load_policy(spec, schedule)
        if nfe is not None and nfe != doc.policy.nfe:
            raise UserError(f"{spec} has nfe {doc.policy.nfe}; drop --nfe or export a new policy")
        if params:
            raise UserError("--param applies to a policy KIND, not to a policy file")
        if solver is None and eta is None:
            return doc
        return PolicyDocument(doc.policy, SolverSpec(solver or doc.solver.name, doc.solver.eta if eta is None else eta),
                              doc.provenance)
    policy = policy_class(spec).from_params(parse_params(params), nfe=nfe, schedule=schedule)
    return PolicyDocument(policy, SolverSpec(solver or "ddim", eta or 0.0))


PolicyOption = Annotated[str, typer.Option(help="a policy file (JSON) or a built-in kind (`policy list`)")]
NfeOption = Annotated[int | None, typer.Option(help="target NFE (expected NFE for stochastic kinds)")]
ParamOption = Annotated[list[str] | None, typer.Option("--param", help="kind parameter key=value (repeatable)")]
SolverOption = Annotated[str | None, typer.Option(help="ddim, ddpm (ancestral) or dpmpp-2m (default: the file's, else ddim)")]
EtaOption = Annotated[float | None, typer.Option(help="DDIM η (0 = deterministic)")]
ModelOption = Annotated[Path | None, typer.Option(help="checkpoint or weights file (default: the shipped model)")]


@app.command()
@user_errors_exit_2
def sample(
    policy: PolicyOption = "uniform",
    nfe: NfeOption = None,
    param: ParamOption = None,
    solver: SolverOption = None,
    eta: EtaOption = None,
    model: ModelOption = None,
    n: Annotated[int, typer.Option(help="number of images")] = 64,
    seed: int = 0,
    batch_size: int = 256,
    calibrate: Annotated[bool, typer.Option(help="OSS amplitude calibration against a 100-step DDIM teacher")] = False,
    out: Annotated[Path, typer.Option(help="PNG grid to write")] = Path("samples.png"),
    barcode: Annotated[Path | None, typer.Option(help="also write the barcode PNG of evaluated timesteps")] = None,
    device: str = "auto",
) -> None:
    """Sample a grid of images with any policy and solver; prints the measured NFE."""
    from stepdrop_search.checkpoint import load_model
    from stepdrop_search.devices import resolve_device
    from stepdrop_search.diffusion.sampler import AmplitudeCalibration
    from stepdrop_search.generation import amplitude_profile, generate
    from stepdrop_search.images import save_barcode, save_grid

    loaded = load_model(model, device=resolve_device(device))
    doc = resolve_policy(policy, nfe if nfe is not None else (None if policy.endswith(".json") else 50),
                         param, solver, eta, loaded.schedule)
    calibration = AmplitudeCalibration(amplitude_profile(loaded.model, loaded.schedule)) if calibrate else None
    result = generate(loaded.model, loaded.schedule, doc.policy, doc.solver, n=n, seed=seed, batch_size=batch_size,
                      calibration=calibration)
    save_grid(result.x0, out)
    if barcode is not None:
        save_barcode(result.evaluated, result.grid, loaded.schedule.T, barcode)
    nfe_measured = result.nfe.float()
    console.print(f"wrote {out}: {n} images, policy {doc.policy.kind}, solver {doc.solver.name}, measured NFE "
                  f"{nfe_measured.mean():.2f} (min {int(nfe_measured.min())}, max {int(nfe_measured.max())}; "
                  f"expected {doc.policy.expected_nfe():.2f})" + (f"; barcode {barcode}" if barcode else ""))


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


def _policy_document(policy: str, nfe, param, solver, eta, model) -> tuple[PolicyDocument, object]:
    from stepdrop_search.checkpoint import load_model
    from stepdrop_search.policies.io import provenance

    loaded = load_model(model)
    doc = resolve_policy(policy, nfe, param, solver, eta, loaded.schedule)
    if not doc.provenance:
        doc = PolicyDocument(doc.policy, doc.solver, provenance(command_line(), loaded.weights_hash))
    return doc, loaded


@policy_app.command("show")
@user_errors_exit_2
def policy_show(
    policy: Annotated[str, typer.Argument(help="a built-in kind or a policy file")],
    nfe: NfeOption = None, param: ParamOption = None, solver: SolverOption = None, eta: EtaOption = None,
    model: ModelOption = None,
) -> None:
    """Print a policy as its JSON document (timesteps included for static kinds)."""
    doc, _ = _policy_document(policy, nfe, param, solver, eta, model)
    typer.echo(doc.to_json(), nl=False)


@policy_app.command("export")
@user_errors_exit_2
def policy_export(
    policy: Annotated[str, typer.Argument(help="a built-in kind or a policy file")],
    out: Annotated[Path, typer.Option(help="JSON file to write")],
    nfe: NfeOption = None, param: ParamOption = None, solver: SolverOption = None, eta: EtaOption = None,
    model: ModelOption = None,
) -> None:
    """Write a policy file for the model's noise schedule (atomically)."""
    from stepdrop_search.policies import save_policy

    doc, loaded = _policy_document(policy, nfe, param, solver, eta, model)
    save_policy(out, doc)
    console.print(f"wrote {out} ({doc.policy.kind}, nfe {doc.policy.nfe}, schedule {doc.policy.schedule.hash})")


def main() -> None:
    app()
