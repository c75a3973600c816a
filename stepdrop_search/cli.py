"""The ``stepdrop-search`` command line: a thin typer layer over the Python API.

Each command parses flags, calls one library function and prints the result. A :class:`UserError`
from anywhere below becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from stepdrop_search.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find the best way to sample a diffusion model with few network evaluations.")
console = Console()
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


@app.command()
@user_errors_exit_2
def sample(
    model: Annotated[Path | None, typer.Option(help="checkpoint or weights file (default: the shipped model)")] = None,
    nfe: Annotated[int, typer.Option(help="network evaluations (DDIM steps, trailing spacing)")] = 50,
    n: Annotated[int, typer.Option(help="number of images")] = 64,
    seed: int = 0,
    out: Annotated[Path, typer.Option(help="PNG grid to write")] = Path("samples.png"),
    device: str = "auto",
) -> None:
    """Sample a grid of images with DDIM (η = 0)."""
    import torch

    from stepdrop_search.checkpoint import load_model
    from stepdrop_search.diffusion.sampler import ddim_sample, uniform_timesteps
    from stepdrop_search.images import save_grid
    from stepdrop_search.train import resolve_device

    loaded = load_model(model, device=resolve_device(device))
    if not 1 <= nfe <= loaded.schedule.T:
        raise UserError(f"--nfe must be between 1 and T={loaded.schedule.T}, got {nfe}")
    cfg = loaded.config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen).to(next(loaded.model.parameters()).device)
    images = ddim_sample(loaded.model, loaded.schedule, x, uniform_timesteps(loaded.schedule.T, nfe))
    save_grid(images, out)
    console.print(f"wrote {out} ({n} images, NFE {nfe}, model {loaded.source})")


def main() -> None:
    app()
