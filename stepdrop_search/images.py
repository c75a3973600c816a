"""Writing samples out: image grids and barcodes (PNG), and the raw arrays (NPZ) for external metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

from stepdrop_search.errors import UserError
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
    columns = (T - 1 - grid).round().long()  # continuous t: the nearest column
    bars[:, columns] = evaluated[:rows].to(torch.uint8) * 255
    img = Image.fromarray(bars.repeat_interleave(6, dim=0).numpy())
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def check_npz_path(path: str | Path) -> Path:
    """Refuse a sample-array path that numpy would silently rename (it appends .npz), before any sampling."""
    path = Path(path)
    if path.suffix != ".npz":
        raise UserError(f"--save-samples {path}: the file name must end in .npz")
    return path


def save_samples(images: torch.Tensor, nfe: torch.Tensor, path: str | Path, **metadata: str) -> Path:
    """The samples as an NPZ any external metric can read (clean-fid, a user's classifier): ``samples`` float32
    (N, C, H, W) in [−1, 1] (the clamp the grid also applies), ``nfe`` (N,) int64 network evaluations per sample,
    and each ``metadata`` value as a 0-d string array (no pickle needed to load it)."""
    arrays = {"samples": images.detach().cpu().clamp(-1, 1).float().numpy(),
              "nfe": nfe.detach().cpu().long().numpy()} | {key: np.array(value) for key, value in metadata.items()}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would append ".npz" to the temp name
            np.savez(handle, **arrays)

    return atomic_write(check_npz_path(path), write)
