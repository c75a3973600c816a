"""``--model`` to a ready-to-sample model: the loader is chosen by the spec's form.

* nothing, or a shipped model's name (``default``; :data:`~stepdrop_search.checkpoint.SHIPPED_MODELS`) when no file of
  that name is in the working folder: a model shipped inside the package (offline, no data);
* ``diffusers:DIR``, or a folder diffusers saved (``model_index.json`` or ``config.json``): a locally saved diffusers
  ``UNet2DModel`` with its scheduler config;
* a file: one of our training checkpoints or exported weights files.

Kept apart from both loaders so neither needs to know the other.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from stepdrop_search.checkpoint import SHIPPED_MODELS, LoadedModel, default_model_path, load_checkpoint_model
from stepdrop_search.errors import UserError
from stepdrop_search.interop import PREFIX as DIFFUSERS_PREFIX
from stepdrop_search.interop import is_diffusers_folder, load_diffusers_model


def load_model(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
               use_ema: bool = True) -> LoadedModel:
    """Load the model a ``--model`` value names (see the module docstring); EMA weights when present."""
    if path is None:
        return load_default_model(device=device)
    if str(path) in SHIPPED_MODELS and not Path(path).exists():
        return load_checkpoint_model(default_model_path(str(path)), device=device, use_ema=use_ema)
    if str(path).startswith(DIFFUSERS_PREFIX):
        return load_diffusers_model(str(path)[len(DIFFUSERS_PREFIX):], device=device)
    if Path(path).is_dir():
        if not is_diffusers_folder(Path(path)):
            raise UserError(f"{path} is a folder but not a diffusers model (no model_index.json or config.json): pass a "
                            "checkpoint file (runs/…/last.pt), exported weights (.pt) or a diffusers save_pretrained folder")
        return load_diffusers_model(path, device=device)
    return load_checkpoint_model(path, device=device, use_ema=use_ema)


def load_default_model(device: str | torch.device = "cpu") -> LoadedModel:
    """The shipped Fashion-MNIST ``xs`` model (EMA weights), loaded from the package; no data, no network."""
    return load_checkpoint_model(default_model_path(), device=device)
