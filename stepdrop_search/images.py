"""Writing image grids (PNG) from tensors in [−1, 1]."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import make_grid

from stepdrop_search.files import atomic_write


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 2) -> Path:
    """Tile ``images`` (B, C, H, W) in [−1, 1] into one PNG, upscaled ``scale``× for legibility."""
    from PIL import Image

    nrow = nrow or math.ceil(math.sqrt(images.shape[0]))
    grid = make_grid(images.detach().cpu().clamp(-1, 1).add(1).div(2), nrow=nrow, padding=2, pad_value=1.0)
    array = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(array[..., 0] if images.shape[1] == 1 else array)
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def save_barcode(evaluated: torch.Tensor, grid: torch.Tensor, T: int, path: str | Path, rows: int = 32) -> Path:
    """StepDrop's "barcode": one row per sample, one column per timestep 0..T−1 (noise on the left),
    white where the sample's network was evaluated."""
    from PIL import Image

    rows = min(rows, evaluated.shape[0])
    bars = torch.zeros(rows, T, dtype=torch.uint8)
    columns = (T - 1 - grid).long()
    bars[:, columns] = evaluated[:rows].to(torch.uint8) * 255
    img = Image.fromarray(bars.repeat_interleave(6, dim=0).numpy())
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
