"""``--model`` to a ready-to-sample model: the loader is chosen by the spec's form.

* nothing: the model shipped inside the package (offline, no data);
* ``diffusers:DIR``: a locally saved diffusers ``UNet2DModel`` with its scheduler config;
* a path: one of our training checkpoints or exported weights files.

Kept apart from both loaders so neither needs to know the other.
"""

from __future__ import annotations

import os

import torch

from stepdrop_search.checkpoint import LoadedModel, default_model_path, load_checkpoint_model
from stepdrop_search.interop import PREFIX as DIFFUSERS_PREFIX
from stepdrop_search.interop import load_diffusers_model


def load_model(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
               use_ema: bool = True) -> LoadedModel:
    """Load the model a ``--model`` value names (see the module docstring); EMA weights when present."""
    if path is None:
        return load_default_model(device=device)
    if str(path).startswith(DIFFUSERS_PREFIX):
        return load_diffusers_model(str(path)[len(DIFFUSERS_PREFIX):], device=device)
    return load_checkpoint_model(path, device=device, use_ema=use_ema)


def load_default_model(device: str | torch.device = "cpu") -> LoadedModel:
    """The shipped Fashion-MNIST ``xs`` model (EMA weights), loaded from the package; no data, no network."""
    return load_checkpoint_model(default_model_path(), device=device)
