"""A small time-conditioned U-Net for ε-prediction, with named size presets.

The architecture follows the DDPM U-Net in miniature: sinusoidal time embedding → MLP, ResNet blocks
(GroupNorm + SiLU, time added after the first conv), strided-conv downsampling, nearest-neighbour
upsampling, skip connections by concatenation, and optional self-attention at the lowest resolution.
Everything is described by :class:`UNetConfig`, a plain dataclass that travels inside checkpoints so
a model can always be rebuilt from its file.

A class-conditional model (``num_classes`` > 0) adds a learned class embedding to the time embedding, with one
extra row, :attr:`UNet.null_class`, for "no class": trained with label dropout it is the same network's
unconditional prediction, which classifier-free guidance (Ho & Salimans 2022) needs beside the conditional one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from stepdrop_search.errors import UserError, unknown_name


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 1
    image_size: int = 28
    base_channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2, 2)
    blocks_per_level: int = 1
    attention: bool = True
    dropout: float = 0.0
    num_classes: int = 0  # > 0: class-conditional, with a null class for the unconditional prediction

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mults", tuple(int(m) for m in self.channel_mults))
        factor = 2 ** (len(self.channel_mults) - 1)
        if self.image_size % factor:
            raise UserError(
                f"image size {self.image_size} is not divisible by {factor}, which the "
                f"{len(self.channel_mults)} levels of this preset need; resize the data or pick another preset"
            )
        if self.in_channels < 1 or self.base_channels < 1 or not self.channel_mults:
            raise UserError("model needs ≥1 input channel, ≥1 base channel and at least one level")
        if self.num_classes < 0:
            raise UserError(f"num_classes must be ≥ 0 (0: unconditional), not {self.num_classes}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["channel_mults"] = list(self.channel_mults)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"model config has unknown fields: {', '.join(sorted(unknown))}")
        return cls(**data)


#: Named sizes. Parameter counts are for a 1-channel 28×28 model (``stepdrop-search models`` prints them).
PRESETS: dict[str, dict] = {
    "tiny": dict(base_channels=8, channel_mults=(1, 2), blocks_per_level=1, attention=False),
    "xs": dict(base_channels=16, channel_mults=(1, 2, 2), blocks_per_level=1, attention=True),
    "s": dict(base_channels=32, channel_mults=(1, 2, 2), blocks_per_level=1, attention=True),
    "paper": dict(base_channels=32, channel_mults=(1, 2, 3), blocks_per_level=2, attention=True),
}


def preset_config(name: str, in_channels: int = 1, image_size: int = 28, num_classes: int = 0) -> UNetConfig:
    if name not in PRESETS:
        raise unknown_name("model preset", name, PRESETS)
    return UNetConfig(in_channels=in_channels, image_size=image_size, num_classes=num_classes, **PRESETS[name])


def _groups(channels: int) -> int:
    """Largest of 8, 4, 2, 1 that divides ``channels`` (GroupNorm needs an exact division)."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of integer (or real) timesteps, shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, time_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time = nn.Linear(time_dim, out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(temb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over the pixels of a (small) feature map, with a residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        attn = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(attn.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """ε_θ(x_t, t) for images of ``config.in_channels`` × ``config.image_size``², or ε_θ(x_t, t, y) for a class y when
    ``config.num_classes`` > 0 (y = :attr:`null_class`, or no y, is the unconditional prediction)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        base = config.base_channels
        time_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        if config.num_classes:
            self.class_embedding = nn.Embedding(config.num_classes + 1, time_dim)
        self.conv_in = nn.Conv2d(config.in_channels, base, 3, padding=1)

        widths = [base * m for m in config.channel_mults]
        last = len(widths) - 1
        self.down = nn.ModuleList()
        skip_widths = [base]
        ch = base
        for level, width in enumerate(widths):
            for _ in range(config.blocks_per_level):
                self.down.append(ResBlock(ch, width, time_dim, config.dropout))
                ch = width
                skip_widths.append(ch)
            if level != last:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_widths.append(ch)

        self.mid1 = ResBlock(ch, ch, time_dim, config.dropout)
        self.mid_attn = SelfAttention(ch) if config.attention else nn.Identity()
        self.mid2 = ResBlock(ch, ch, time_dim, config.dropout)

        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(config.blocks_per_level + 1):
                self.up.append(ResBlock(ch + skip_widths.pop(), width, time_dim, config.dropout))
                ch = width
            if level != 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))

        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, config.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def null_class(self) -> int:
        """The class index of the unconditional prediction (the embedding's last row)."""
        return self.config.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        temb = self.time_mlp(timestep_embedding(t, self.config.base_channels).to(x.dtype))  # float64 reference checks
        if self.config.num_classes:
            if y is None:
                y = torch.full((x.shape[0],), self.null_class, dtype=torch.long, device=x.device)
            temb = temb + self.class_embedding(y).to(temb.dtype)
        elif y is not None:
            raise UserError("this model is unconditional: it takes no class (train one with --conditional)")
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), temb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_gflops(model: UNet) -> float:
    """GFLOPs of one forward pass for one image, counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.config
    device = next(model.parameters()).device
    x = torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x, t)
    return counter.get_total_flops() / 1e9
