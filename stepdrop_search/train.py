"""Training: DDPM (ε-MSE, optional S2-DM skip-step loss) or rectified flow (velocity MSE), with EMA and resumable
atomic checkpoints.

Every random draw of a step (batch indices, flips, t, noise) comes from one CPU ``torch.Generator``
whose state is saved in each checkpoint, so a run killed and resumed with ``--resume`` takes exactly
the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from stepdrop_search.checkpoint import load_checkpoint, save_checkpoint, state_dict_hash
from stepdrop_search.data import horizontal_flip_makes_sense, load_dataset, num_classes
from stepdrop_search.devices import resolve_device
from stepdrop_search.diffusion.flow import FlowAdapter, logit_normal
from stepdrop_search.diffusion.schedule import FLOW_KINDS, NoiseSchedule
from stepdrop_search.errors import UserError
from stepdrop_search.files import write_json
from stepdrop_search.loading import load_model
from stepdrop_search.model import UNet, count_parameters, preset_config

CHECKPOINT_NAME = "last.pt"
#: what a model file holds besides its card: what sampling needs, nothing of the optimizer
WEIGHTS_FILE_KEYS = ("model_config", "schedule", "schedule_hash", "dataset", "model")
#: what the network learns: "epsilon" (DDPM's ε on a β schedule) or "flow" (the velocity ε − x0 of a rectified flow)
OBJECTIVES = ("epsilon", "flow")


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "xs"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    image_size: int | None = None
    steps: int = 6000
    batch_size: int = 128
    lr: float = 5e-4
    warmup_steps: int | None = None  # None: min(200, steps // 10)
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    flip: bool | None = None  # None: flip where the data set is mirror-symmetric in meaning
    seed: int = 0
    objective: str = "epsilon"
    schedule: str | None = None  # None: the objective's own ("linear" for epsilon, "flow" for flow)
    T: int = 1000
    skip_loss_every: int = 0  # S2-DM "skip" K; 0 disables the skip-step loss
    skip_loss_tau: float = 0.99
    conditional: bool = False  # class-conditional, with label dropout: the data set's labels, a null class for CFG
    label_dropout: float = 0.1  # the share of a conditional batch trained on the null class (Ho & Salimans 2022)
    init_from: str | None = None  # fine-tune: start from this model's weights (EMA when present), fresh optimizer
    checkpoint_every: int = 250
    snapshot_every: int = 0  # also keep the EMA weights every N steps (out_dir/snapshots/step-N.pt) for a training curve
    out_dir: str = "runs/default"
    device: str = "auto"
    command: str = ""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise UserError("--steps and --batch-size must be ≥ 1")
        if self.skip_loss_every < 0 or not 0.0 <= self.skip_loss_tau <= 1.0:
            raise UserError("--skip-loss-every must be ≥ 0 and --skip-loss-tau in [0, 1]")
        if self.checkpoint_every < 1 or self.snapshot_every < 0:
            raise UserError("--checkpoint-every must be ≥ 1 and --snapshot-every ≥ 0")
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown --objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        flow = self.objective == "flow"
        if self.schedule is None:
            object.__setattr__(self, "schedule", "flow" if flow else "linear")
        if flow != (self.schedule in FLOW_KINDS):
            raise UserError("--objective flow trains a rectified flow, which has no β schedule: drop --schedule"
                            if flow else f"--schedule {self.schedule} is a rectified flow's: train it with --objective flow")
        if not 0.0 <= self.label_dropout < 1.0:
            raise UserError(f"--label-dropout must be in [0, 1), not {self.label_dropout}")
        if flow and self.skip_loss_every:
            raise UserError("--skip-loss-every is S2-DMs' loss for ε models (it needs a β schedule); drop it with --objective flow")

    @property
    def warmup(self) -> int:
        return max(1, min(200, self.steps // 10)) if self.warmup_steps is None else max(1, self.warmup_steps)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio · lr`` at the last step."""
    warmup = cfg.warmup
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def ema_decay_at(cfg: TrainConfig, step: int) -> float:
    """EMA decay with warm-up, min(decay, (1+n)/(10+n)), so early averages are not dominated by init."""
    return min(cfg.ema_decay, (1 + step) / (10 + step))


def diffusion_loss(model: torch.nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                   alphas_cumprod: torch.Tensor, skip_coef: torch.Tensor | None, tau: float,
                   y: torch.Tensor | None = None) -> torch.Tensor:
    """DDPM ε-MSE, optionally mixed with the S2-DM skip-step loss.

    ``skip_coef[t]`` = √(1 − ᾱ_skip^t)/√ᾱ_skip^t, ᾱ_skip^t = Π_{s=t−K+1..t} α_s. We follow S2-DMs eq. (12)
    for L_skip = ‖ε − skip_coef·ε_θ(x_t, t)‖² and eq. (13) for the mix L = τ·L0 + (1−τ)·L_skip. Their
    Algorithm 1 writes the weights the other way round, (1−τ)·L0 + τ·L_skip, but with τ = 0.99 that would
    put 99% of the weight on a term the paper measures at 80–100× L0; the text's reading is the one
    whose stated purpose ("balance the scales") holds.
    """
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    eps = model(x_t, t) if y is None else model(x_t, t, y)
    loss = F.mse_loss(eps, noise)
    if skip_coef is None:
        return loss
    skip_loss = F.mse_loss(skip_coef[t].view(-1, 1, 1, 1) * eps, noise)
    return tau * loss + (1 - tau) * skip_loss


def flow_loss(model: torch.nn.Module, x0: torch.Tensor, s: torch.Tensor, noise: torch.Tensor, T: int,
              y: torch.Tensor | None = None) -> torch.Tensor:
    """Rectified flow (Liu et al. 2022; SD3): the velocity ε − x0 at y_s = (1 − s) x0 + s ε, the network fed s·T."""
    s_b = s.view(-1, 1, 1, 1)
    y_s = (1 - s_b) * x0 + s_b * noise
    return F.mse_loss(model(y_s, s * T) if y is None else model(y_s, s * T, y), noise - x0)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=False):
        e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=False):
        e.copy_(b)


@dataclass
class StepReport:
    step: int
    total: int
    loss: float
    images_per_s: float
    lr: float


def _check_resume_compatible(saved: dict, cfg: TrainConfig, path: Path) -> None:
    old = {"objective": "epsilon"} | saved.get("train_config", {})  # runs from before flows trained ε
    old = {"conditional": False} | old  # runs from before conditional models were unconditional
    for key in ("preset", "dataset", "image_size", "objective", "schedule", "T", "batch_size", "seed", "skip_loss_every",
                "conditional"):
        if old.get(key) != getattr(cfg, key):
            raise UserError(f"{path} was trained with {key}={old.get(key)!r}, not {getattr(cfg, key)!r}; "
                            "resume with the same settings or choose another --out")


def initial_weights(path: str, model_config, schedule: NoiseSchedule) -> tuple[dict, list[dict]]:
    """Weights to fine-tune from (EMA when the file has them) and the training stages that made them, refused
    unless they fit this run's model and noise schedule: a fine-tune that silently changed either would compare
    nothing."""
    start = load_model(path)
    if start.schedule.is_flow != schedule.is_flow:
        raise UserError(f"--init-from {path} is {'a rectified flow' if start.schedule.is_flow else 'an ε model'}; "
                        f"this run trains {'a flow' if schedule.is_flow else 'an ε model'} (--objective)")
    gains_classes = start.config.num_classes == 0 and model_config.num_classes > 0
    if start.config != (replace(model_config, num_classes=0) if gains_classes else model_config):
        raise UserError(f"--init-from {path} holds another architecture than --preset/--dataset/--conditional build "
                        "here; pass the preset, data set and conditioning it was trained with")
    if start.schedule.hash != schedule.hash:
        raise UserError(f"--init-from {path} was trained with another noise schedule; pass its --schedule/--timesteps")
    network = start.model.net if isinstance(start.model, FlowAdapter) else start.model  # the adapter holds a flow's network
    weights = network.state_dict()
    if gains_classes:  # an unconditional model made conditional: a zero class embedding predicts what it did for every class
        weights["class_embedding.weight"] = torch.zeros(model_config.num_classes + 1, weights["time_mlp.2.weight"].shape[0])
    return weights, lineage_of(start.card, start.weights_hash, path)


def training_stage(card: dict, weights_hash: str) -> dict:
    """One run of a model's history as its card tells it: what a fine-tune's card keeps of the weights it started
    from ("default" names another file after every new shipped model, so the weights' hash is what identifies it)."""
    cfg = card.get("train_config", {})
    steps, batch = card.get("steps"), cfg.get("batch_size")
    return {"command": card.get("command", ""), "steps": steps, "batch_size": batch,
            "images_seen": steps * batch if steps is not None and batch is not None else None, "wall_time_s": card.get("wall_time_s"),
            "final_loss_ema": card.get("final_loss_ema"), "weights_hash": weights_hash}


def lineage_of(card: dict, weights_hash: str, source: str) -> list[dict]:
    """The training stages behind a model, oldest first, ending with the run that wrote it."""
    if not card:  # weights from elsewhere (diffusers, a file without a card): all we know is which they are
        return [{"source": source, "weights_hash": weights_hash}]
    earlier = card.get("lineage")
    init_from = card.get("train_config", {}).get("init_from")
    if earlier is None and init_from is not None:  # a fine-tune whose card predates lineages: say what is unknown
        earlier = [{"source": f"{init_from} (when that run started; its card does not say more)", "weights_hash": None}]
    return list(earlier or []) + [training_stage(card, weights_hash)]


def train(cfg: TrainConfig, *, resume: bool = False, on_step: Callable[[StepReport], None] | None = None,
          stop_after: int | None = None) -> Path:
    """Train (or resume) a model; returns the path of the last checkpoint.

    ``stop_after`` ends the call after that many steps of this call (used to simulate an interrupted run).
    """
    device = resolve_device(cfg.device)
    out = Path(cfg.out_dir)
    ckpt_path = out / CHECKPOINT_NAME
    saved = None
    if resume and not ckpt_path.is_file():
        # A typo in --out must not turn a resume into a fresh run of many thousand steps.
        raise UserError(f"--resume: no checkpoint at {ckpt_path}; pass the --out of the run to continue, "
                        "or drop --resume to start a new run")
    if ckpt_path.exists():
        if not resume:
            raise UserError(f"{ckpt_path} already exists; pass --resume to continue that run or choose another --out")
        saved = load_checkpoint(ckpt_path)
        _check_resume_compatible(saved, cfg, ckpt_path)

    data = load_dataset(cfg.dataset, cfg.data_dir, split="train", image_size=cfg.image_size, seed=cfg.seed)
    schedule = NoiseSchedule(kind=cfg.schedule, T=cfg.T)
    model_config = preset_config(cfg.preset, data.channels, data.image_size, num_classes(data) if cfg.conditional else 0)
    torch.manual_seed(cfg.seed)
    model = UNet(model_config).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, wall_time, loss_log, lineage = 0, 0.0, [], []
    if saved is not None:
        model.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        optimizer.load_state_dict(saved["optimizer"])
        gen.set_state(saved["rng"])
        step, wall_time, loss_log = int(saved["step"]), float(saved["wall_time"]), list(saved["loss_log"])
        lineage = saved.get("lineage", [])
        if "lineage" not in saved and cfg.init_from is not None:  # a checkpoint from before lineages were kept
            lineage = initial_weights(cfg.init_from, model_config, schedule)[1]
    elif cfg.init_from is not None:
        start, lineage = initial_weights(cfg.init_from, model_config, schedule)
        model.load_state_dict(start)
        ema.load_state_dict(start)

    flip = horizontal_flip_makes_sense(cfg.dataset) if cfg.flip is None else cfg.flip
    images = data.images.to(device)
    labels = data.labels.to(device) if cfg.conditional else None
    alphas_cumprod = schedule.alphas_cumprod.float().to(device)
    skip_coef = None
    if cfg.skip_loss_every:
        a_skip = schedule.skip_alphas_cumprod(cfg.skip_loss_every)
        skip_coef = ((1 - a_skip) / a_skip).sqrt().float().to(device)

    def state() -> dict:
        return {
            "model_config": model_config.to_dict(), "schedule": schedule.to_dict(), "schedule_hash": schedule.hash,
            "dataset": {"name": data.name, "image_size": data.image_size, "channels": data.channels},
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "step": step, "rng": gen.get_state(), "wall_time": wall_time, "loss_log": loss_log,
            "train_config": asdict(cfg), "parameters": count_parameters(model), "lineage": lineage,
        }

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, state())

    model.train()
    ema_loss = loss_log[-1][1] if loss_log else None
    start_step = step
    while step < cfg.steps and (stop_after is None or step - start_step < stop_after):
        tick = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        # the noise level: a flow time s in (0, 1), or a DDPM step t
        level = logit_normal(cfg.batch_size, gen).float() if schedule.is_flow else \
            torch.randint(0, schedule.T, (cfg.batch_size,), generator=gen)
        noise = torch.randn((cfg.batch_size, *images.shape[1:]), generator=gen)
        x0 = images[idx.to(device)]
        y = None
        if labels is not None:  # drawn only for conditional runs: an unconditional run's random stream stays as it was
            dropped = (torch.rand(cfg.batch_size, generator=gen) < cfg.label_dropout).to(device)
            y = torch.where(dropped, model_config.num_classes, labels[idx.to(device)])
        if flip:
            mirror = (torch.rand(cfg.batch_size, generator=gen) < 0.5).to(device)
            x0 = torch.where(mirror.view(-1, 1, 1, 1), x0.flip(-1), x0)
        if schedule.is_flow:
            loss = flow_loss(model, x0, level.to(device), noise.to(device), schedule.T, y)
        else:
            loss = diffusion_loss(model, x0, level.to(device), noise.to(device), alphas_cumprod, skip_coef, cfg.skip_loss_tau, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        update_ema(ema, model, ema_decay_at(cfg, step))
        step += 1
        value = float(loss.detach())  # one sync per training step is fine; the step itself is ~100× longer
        if not math.isfinite(value):
            raise UserError(f"training diverged at step {step} (loss {value}); lower --lr or raise --warmup-steps")
        ema_loss = value if ema_loss is None else 0.98 * ema_loss + 0.02 * value
        elapsed = time.perf_counter() - tick
        wall_time += elapsed
        if step % 50 == 0 or step == cfg.steps:
            loss_log.append([step, round(ema_loss, 6)])
        if on_step is not None:
            on_step(StepReport(step, cfg.steps, ema_loss, cfg.batch_size / max(elapsed, 1e-9), learning_rate(cfg, step - 1)))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint()
        if cfg.snapshot_every and step % cfg.snapshot_every == 0:
            export_state(state(), Path(cfg.out_dir) / "snapshots" / f"step-{step:06d}.pt")
    if step == start_step and saved is None:
        checkpoint()
    return ckpt_path


def read_training_curve(path: str | Path) -> dict:
    """A ``bench/training_curve.py --out`` file, checked before anything is written: the card that carries it is
    the shipped model's evidence of whether training was still improving when it was exported."""
    path = Path(path)
    try:
        curve = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"--curve {path}: not a readable JSON file ({exc}); write it with bench/training_curve.py --out") from None
    if not isinstance(curve, dict) or not isinstance(curve.get("rows"), list) or not curve["rows"]:
        raise UserError(f"--curve {path}: no 'rows' of snapshot scores; write it with bench/training_curve.py --out")
    return curve


def export_weights(checkpoint_path: str | Path, out: str | Path, curves: list[str | Path] | None = None) -> dict:
    """Write a small EMA-only weights file plus a JSON card beside it; returns the card. ``curves``: training-curve
    files (bench/training_curve.py, e.g. one per NFE) the card carries as ``training_curves``."""
    extra = {"training_curves": [read_training_curve(curve) for curve in curves]} if curves else {}
    saved = load_checkpoint(checkpoint_path)
    if "ema" in saved:
        return export_state(saved, out, extra)
    if "card" in saved and "schedule" in saved:  # a snapshot (or an exported model): the weights and card as they are
        return write_model_file(out, saved, saved["model"], dict(saved["card"]) | extra)
    raise UserError(f"{checkpoint_path} holds no EMA weights and no model card; export a training checkpoint "
                    "(runs/…/last.pt) or one of its snapshots (runs/…/snapshots/step-N.pt)")


def export_state(saved: dict, out: str | Path, extra: dict | None = None) -> dict:
    """The EMA weights of a training state as a model file (+ JSON card): what export and the snapshots write."""
    cfg = saved.get("train_config", {})
    log = saved.get("loss_log", [])
    card = {
        "command": cfg.get("command", ""),
        "steps": int(saved["step"]),
        "wall_time_s": round(float(saved["wall_time"]), 1),
        "final_loss_ema": log[-1][1] if log else None,
        "dataset": saved["dataset"],
        "preset": cfg.get("preset"),
        "parameters": saved.get("parameters"),
        "noise_schedule": saved["schedule"],
        "noise_schedule_hash": saved["schedule_hash"],
        "weights_hash": state_dict_hash(saved["ema"]),
        "train_config": cfg,
        "torch": str(torch.__version__),
    }
    # a fine-tune's card also tells the runs before it: the model is all of them, not only the last
    card["lineage"] = saved.get("lineage", [])
    stages = lineage_of(card, card["weights_hash"], str(out))
    card["total"] = {key: sum(stage[key] for stage in stages) if all(stage.get(key) is not None for stage in stages) else None
                     for key in ("steps", "images_seen", "wall_time_s")}
    return write_model_file(out, saved, saved["ema"], card | (extra or {}))


def write_model_file(out: str | Path, saved: dict, weights: dict, card: dict) -> dict:
    """A model file (what sampling needs, the given weights and card; nothing of the optimizer) and its JSON card."""
    save_checkpoint(out, {key: saved[key] for key in WEIGHTS_FILE_KEYS if key != "model"} | {"model": weights, "card": card})
    write_json(Path(out).with_suffix(".json"), card)
    return card
