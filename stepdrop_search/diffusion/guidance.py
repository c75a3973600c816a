"""Classifier-free guidance as part of a policy: a scale and the noise interval where it is applied.

A class-conditional network (``UNet`` with ``num_classes`` > 0, trained with label dropout) predicts ε for a class y
and, for its null class, unconditionally. Classifier-free guidance (Ho & Salimans 2022) samples with
ε̃ = ε_u + w·(ε_c − ε_u); w = 1 is the conditional model alone, one evaluation, and every w ≠ 1 costs a second
evaluation per step. Kynkäänniemi et al. (NeurIPS 2024, "Applying guidance in a limited interval improves sample and
distribution quality") apply it only while the noise level σ is inside an interval [σ_lo, σ_hi]: high-noise guidance
costs diversity and low-noise guidance does little, so the interval improves FID *and* saves the evaluations outside
it. Here the interval is in k-diffusion's σ = √((1 − ᾱ)/ᾱ), the σ of every exported list (for a rectified flow,
σ = s/(1 − s)), so it reads the same on both families and in the tools.

NFE counts network evaluations per sample, the unconditional one included: a guided step costs 2, an unguided one 1,
and the sampler's counter counts what ran. The two predictions of a guided step are one batched network call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from stepdrop_search.errors import UserError

Tensor = torch.Tensor


@dataclass(frozen=True)
class Guidance:
    """ε̃ = ε_u + ``scale``·(ε_c − ε_u) while σ ∈ [``sigma_lo``, ``sigma_hi``]; the conditional ε alone outside.

    The default interval [0, ∞) is constant guidance; ``scale`` 1 is no guidance (one evaluation everywhere)."""

    scale: float = 1.0
    sigma_lo: float = 0.0
    sigma_hi: float = math.inf

    def __post_init__(self) -> None:
        if not math.isfinite(self.scale) or self.scale < 0:
            raise UserError(f"guidance scale must be a finite number ≥ 0 (1: no guidance), not {self.scale}")
        if math.isnan(self.sigma_lo) or math.isnan(self.sigma_hi) or not 0 <= self.sigma_lo <= self.sigma_hi:
            raise UserError(f"guidance interval [{self.sigma_lo}, {self.sigma_hi}] must satisfy 0 ≤ σ_lo ≤ σ_hi")

    @property
    def constant(self) -> bool:
        """Guidance at every noise level (the interval covers all σ)."""
        return self.sigma_lo == 0 and self.sigma_hi == math.inf

    def active(self, sigmas: Tensor) -> Tensor:
        """Bool per σ: whether a step at that noise level is guided (and so costs a second evaluation)."""
        if self.scale == 1:
            return torch.zeros_like(sigmas, dtype=torch.bool)
        return (sigmas >= self.sigma_lo) & (sigmas <= self.sigma_hi)

    def combine(self, conditional: Tensor, unconditional: Tensor) -> Tensor:
        return unconditional + self.scale * (conditional - unconditional)

    def to_dict(self) -> dict:
        return {"scale": self.scale, "sigma_lo": self.sigma_lo, "sigma_hi": None if self.sigma_hi == math.inf else self.sigma_hi}

    @classmethod
    def from_dict(cls, data: object, where: str = "guidance") -> Guidance:
        if not isinstance(data, dict) or set(data) - {"scale", "sigma_lo", "sigma_hi"} or "scale" not in data:
            raise UserError(f"{where}: expected {{\"scale\": w, \"sigma_lo\": σ, \"sigma_hi\": σ or null}}, got {data!r}")
        try:
            high = data.get("sigma_hi")
            return cls(float(data["scale"]), float(data.get("sigma_lo") or 0.0), math.inf if high is None else float(high))
        except (TypeError, ValueError):
            raise UserError(f"{where}: scale and interval must be numbers, got {data!r}") from None

    @classmethod
    def parse(cls, spec: str) -> Guidance:
        """``W`` (constant guidance at scale W) or ``W:LO:HI`` (only while σ ∈ [LO, HI]; HI may be ``inf``): the
        command line's form."""
        parts = spec.strip().split(":")
        if len(parts) not in (1, 3):
            raise UserError(f"guidance {spec!r}: write W (constant) or W:LO:HI (σ interval), e.g. 2 or 2:0.3:5")
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            raise UserError(f"guidance {spec!r}: W, LO and HI must be numbers, e.g. 2:0.3:5") from None
        return cls(*numbers)

    def label(self) -> str:
        """A short name for report rows: ``cfg2`` or ``cfg2@0.3-5``."""
        return f"cfg{self.scale:g}" + ("" if self.constant or self.scale == 1 else f"@{self.sigma_lo:g}-{self.sigma_hi:g}")

    def describe(self) -> str:
        if self.scale == 1:
            return "no guidance"
        where = "every step" if self.constant else f"σ ∈ [{self.sigma_lo:g}, {self.sigma_hi:g}]"
        return f"CFG {self.scale:g} at {where}"


def class_labels(indices: range, num_classes: int, classes: tuple[int, ...] | None = None) -> Tensor:
    """The class of each sample index: i mod K, so every K consecutive samples hold each class once — the same labels
    for every policy of a seed (paired comparisons) and balanced classes for per-class FID. ``classes`` (requested
    ones) cycle the same way: sample i gets classes[i mod len(classes)]."""
    chosen = tuple(range(num_classes)) if classes is None else classes
    bad = [c for c in chosen if not 0 <= c < num_classes]
    if bad or not chosen:
        raise UserError(f"class {bad[0] if bad else '(none)'} is not one of the model's classes 0..{num_classes - 1}")
    return torch.tensor(chosen, dtype=torch.long)[torch.arange(indices.start, indices.stop) % len(chosen)]


def batch_conditioning(model: torch.nn.Module, start: int, x: Tensor) -> tuple[Tensor, ...]:
    """The extra arguments of ``model(x, t, …)`` with which an external tool's loop conditions the batch ``x`` (samples
    ``start``, ``start`` + 1, …): on a class-conditional ``model`` the class of sample i, i mod K, as our sampler draws
    them, so that the client's samples and ours are comparable; none on an unconditional model."""
    count = conditional_classes(model)
    return (class_labels(range(start, start + x.shape[0]), count).to(x.device),) if count else ()


def conditional_classes(model: torch.nn.Module) -> int:
    """How many classes ``model`` is conditioned on (0: unconditional), through a flow adapter too."""
    return int(getattr(model.config, "num_classes", 0) or 0)


def check_conditioning(model: torch.nn.Module, guidance: Guidance | None = None,
                       classes: tuple[int, ...] | None = None, source: str = "this model") -> None:
    """Guidance and requested classes need a class-conditional model (and classes it has): one line, before any work."""
    count = conditional_classes(model)
    if guidance is not None and guidance.scale != 1 and not count:
        raise UserError(f"this policy has guidance ({guidance.describe()}), which needs a class-conditional model; "
                        f"{source} is unconditional (train one with --conditional)")
    if classes is not None:
        if not count:
            raise UserError("--class needs a class-conditional model (train one with --conditional)")
        class_labels(range(1), count, classes)  # an unknown class is refused here


class ConditionalCall:
    """The network call of a class-conditional model for one batch: the labels of its samples, the guidance, and the
    per-sample NFE it spends (the sampler's counter adds what this returns)."""

    def __init__(self, model: torch.nn.Module, labels: Tensor, guidance: Guidance, null_class: int) -> None:
        self.model, self.labels, self.guidance, self.null_class = model, labels, guidance, null_class

    def __call__(self, x: Tensor, t: Tensor, idx: Tensor | None, guided: bool | Tensor) -> tuple[Tensor, int]:
        """(ε̃, evaluations per sample) at states ``x`` (samples ``idx`` of the batch, all when None) and network times
        ``t``. ``guided``: decided for the whole call (a Python bool: one or two evaluations), or per sample (a bool
        tensor, when the samples of one call sit at different noise levels: both predictions run for all and each
        sample keeps its own, costing two)."""
        y = self.labels if idx is None else self.labels.index_select(0, idx)
        if guided is False:
            return self.model(x, t, y), 1
        null = torch.full_like(y, self.null_class)
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        conditional, unconditional = both.chunk(2)
        mixed = self.guidance.combine(conditional, unconditional)
        if guided is True:
            return mixed, 2
        return torch.where(guided.view(-1, *([1] * (x.dim() - 1))), mixed, conditional), 2
