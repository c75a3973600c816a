"""The search objective: one callable ``objective(document) -> Scores`` on a fixed, small noise set.

It mixes proxy-FID with the trajectory residual (weight ``residual_weight``), both computed from the
same samples of the same x_T every call, so two policies are compared under common random numbers.
A policy that produces non-finite samples gets a failed score (``value = inf`` and a reason), which a
search can record and move past; it never raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from stepdrop_search.checkpoint import LoadedModel
from stepdrop_search.diffusion.guidance import class_labels, conditional_classes
from stepdrop_search.diffusion.runtimes import DEFAULT_RUNTIME, Runtime
from stepdrop_search.generation import generate_document
from stepdrop_search.objectives.features import FeatureFile
from stepdrop_search.objectives.metrics import fidelity_metrics
from stepdrop_search.objectives.residual import Teacher, residual, teacher_outputs
from stepdrop_search.policies import PolicyDocument


@dataclass(frozen=True)
class Scores:
    value: float  # what a search minimises: fid + residual_weight · residual (or inf when failed)
    fid: float | None = None
    residual: float | None = None
    nfe: float | None = None
    failed: str | None = None
    accuracy: float | None = None  # a class-conditional model's: the classifier's top-1 on the classes asked for

    def to_dict(self) -> dict:
        return {"value": self.value, "fid": self.fid, "residual": self.residual, "nfe": self.nfe, "failed": self.failed,
                "accuracy": self.accuracy}

    @classmethod
    def from_dict(cls, values: dict) -> Scores:
        """Scores as :meth:`to_dict` wrote them (an Optuna trial keeps them as a user attribute)."""
        return cls(**{k: values.get(k) for k in ("value", "fid", "residual", "nfe", "failed", "accuracy")})


@dataclass
class Objective:
    loaded: LoadedModel
    features: FeatureFile | None
    samples: int = 256
    seed: int = 0
    residual_weight: float = 100.0
    teacher: Teacher = field(default_factory=Teacher)
    batch_size: int = 256
    runtime: Runtime = DEFAULT_RUNTIME  # the residual's teacher runs under it; each document runs under its own
    log: Callable[[str], None] = field(default=lambda m: None, repr=False)

    def __post_init__(self) -> None:
        self._teacher_x0 = teacher_outputs(self.loaded, self.teacher, n=self.samples, seed=self.seed,
                                           batch_size=self.batch_size, runtime=self.runtime, log=self.log) \
            if self.residual_weight else None

    def __call__(self, document: PolicyDocument, samples: int | None = None, with_fid: bool = True) -> Scores:
        """Score a policy on the first ``samples`` (default all) of the fixed noise set; ``with_fid=False``
        is the cheap rung of a search (residual only)."""
        n = min(samples or self.samples, self.samples)
        run = generate_document(self.loaded, document, n=n, seed=self.seed, batch_size=self.batch_size)
        nfe = float(run.nfe.float().mean())
        if not torch.isfinite(run.x0).all():
            return Scores(math.inf, nfe=nfe, failed="non-finite samples")
        fid = accuracy = None
        if self.features is not None and with_fid:
            classes = conditional_classes(self.loaded.model)
            labels = class_labels(range(n), classes) if classes else None  # what generate sampled
            measured = fidelity_metrics(run.x0, self.features, {"fid", "accuracy"} if classes else {"fid"},
                                        device=next(self.loaded.model.parameters()).device, seed=self.seed, labels=labels)
            fid, accuracy = measured["fid"], measured.get("accuracy")
        res = float(residual(run.x0, self._teacher_x0[:n]).mean()) if self._teacher_x0 is not None else None
        value = (fid or 0.0) + self.residual_weight * (res or 0.0)
        if not math.isfinite(value):
            return Scores(math.inf, fid, res, nfe, "non-finite score", accuracy)
        return Scores(value, fid, res, nfe, accuracy=accuracy)
