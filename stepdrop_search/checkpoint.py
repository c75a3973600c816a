"""Checkpoint files: atomic writes, safe loads, and rebuilding a model from its file.

A checkpoint is a plain dict of tensors, numbers, strings and lists, loaded with
``torch.load(weights_only=True)`` so a file can never run code. Training checkpoints carry the model,
its EMA, the optimizer, the step and RNG state; exported *weights* files carry only the EMA weights.
Both carry the model config, the noise schedule (with its hash) and the data set they were trained on.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from stepdrop_search.diffusion.flow import FlowAdapter
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.errors import UserError
from stepdrop_search.files import atomic_write
from stepdrop_search.model import UNet, UNetConfig

FORMAT = "stepdrop-search/checkpoint"
VERSION = 1
DEFAULT_MODEL = "default-xs-fashion-mnist.pt"
#: the models shipped in the package, by the name ``--model NAME`` takes (a file of that name in the working folder wins)
SHIPPED_MODELS = {"default": DEFAULT_MODEL, "conditional": "conditional-xs-fashion-mnist.pt", "flow": "flow-xs-fashion-mnist.pt"}


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    return atomic_write(path, lambda tmp: torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load and sanity-check a checkpoint dict; any problem becomes one :class:`UserError` line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; train one with `stepdrop-search train` or omit it for the default model")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, disallowed global: all "not ours"
        text = str(exc).strip()
        if "Weights only load failed" in text:
            reason = "it holds Python objects besides tensors and plain data, which are refused for safety"
        else:
            reason = text.splitlines()[0][:120] if text else type(exc).__name__
        raise UserError(f"{path} is not a readable stepdrop-search checkpoint (truncated or another format: {reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a stepdrop-search checkpoint (no '{FORMAT}' header); pass a file written by `stepdrop-search train`")
    if payload.get("version") != VERSION:
        raise UserError(f"{path} has checkpoint version {payload.get('version')!r}; this stepdrop-search reads version {VERSION}")
    for key in ("model_config", "model"):
        if key not in payload:
            raise UserError(f"{path} is missing '{key}'; the file is damaged")
    return payload


def state_dict_hash(state: dict[str, torch.Tensor]) -> str:
    """Content hash of a set of weights, independent of file layout (what policy files record)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class LoadedModel:
    """A ready-to-sample model with everything a sampler and a policy file need to know about it."""

    model: torch.nn.Module  # our UNet, or an adapter with the same interface (``config``, ε(x, t))
    schedule: NoiseSchedule
    dataset: dict
    weights_hash: str
    source: str
    card: dict = field(default_factory=dict)

    @property
    def config(self):
        """Our UNetConfig, or an adapter's shape (``in_channels``, ``image_size``)."""
        return self.model.config


def build_model(payload: dict, weights: str, source: str) -> UNet:
    try:
        config = UNetConfig.from_dict(dict(payload["model_config"]))
    except (TypeError, ValueError) as exc:
        raise UserError(f"{source}: invalid model config ({exc})") from None
    model = UNet(config)
    try:
        model.load_state_dict(payload[weights])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"{source}: weights do not fit the model described in the file ({first}); "
                        "the checkpoint belongs to another architecture or is damaged") from None
    return model


def load_checkpoint_model(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                          use_ema: bool = True) -> LoadedModel:
    """Rebuild our U-Net from a training checkpoint or weights file (EMA weights when present)."""
    payload = load_checkpoint(path)
    if "schedule" not in payload or payload.get("kind") == "feature-net":
        raise UserError(f"{path} is not a diffusion model checkpoint (it holds no noise schedule)")
    weights = "ema" if use_ema and "ema" in payload else "model"
    # channels_last: oneDNN's faster layout for convolutions on CPU (and cuDNN's on recent GPUs); same values.
    model = build_model(payload, weights, str(path)).to(device, memory_format=torch.channels_last).eval()
    schedule = NoiseSchedule.from_dict(dict(payload["schedule"]))
    if payload.get("schedule_hash") not in (None, schedule.hash):
        raise UserError(f"{path}: stored noise-schedule hash does not match its schedule; the file is damaged")
    if schedule.is_flow:  # a velocity network: the sampler sees it as ε over the flow's VP schedule
        model = FlowAdapter(model, schedule)
    return LoadedModel(model, schedule, dict(payload.get("dataset", {})), state_dict_hash(payload[weights]),
                       str(path), dict(payload.get("card", {})))


def default_model_path(name: str = "default") -> Path:
    """The file of the shipped model called ``name`` (:data:`SHIPPED_MODELS`)."""
    return Path(str(resources.files("stepdrop_search") / "assets" / SHIPPED_MODELS[name]))
