"""Trajectory residual: how far a policy's x0 lands from a teacher's x0 started at the *same* x_T.

The teacher (default: DDIM over all 1000 steps, η = 0 — deterministic) is expensive, so its outputs are
cached on disk, keyed by the model's weights hash, the noise schedule, the teacher and the noise set;
a search pays for them once. Cache files are plain tensors loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from stepdrop_search.checkpoint import LoadedModel
from stepdrop_search.diffusion.runtimes import DEFAULT_RUNTIME, Runtime
from stepdrop_search.diffusion.sampler import NOISE_SCHEME
from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.errors import UserError
from stepdrop_search.files import atomic_write
from stepdrop_search.generation import generate, initial_noise
from stepdrop_search.policies.kinds import Uniform


@dataclass(frozen=True)
class Teacher:
    """A named teacher, ``<solver>-<steps>``: ``ddim-1000`` (default), ``ddim-250``, ``dpmpp-2m-100``…"""

    solver: str = "ddim"
    steps: int = 1000

    @classmethod
    def parse(cls, name: str) -> Teacher:
        solver, _, steps = name.rpartition("-")
        if not solver or not steps.isdigit():
            raise UserError(f"teacher {name!r} is not <solver>-<steps>, e.g. ddim-1000")
        SolverSpec(solver)  # validates the solver name
        return cls(solver, int(steps))

    @property
    def name(self) -> str:
        return f"{self.solver}-{self.steps}"


def cache_dir() -> Path:
    return Path(os.environ.get("STEPDROP_CACHE", Path.home() / ".cache" / "stepdrop-search")).expanduser()


def teacher_outputs(loaded: LoadedModel, teacher: Teacher, *, n: int, seed: int, batch_size: int = 256,
                    runtime: Runtime = DEFAULT_RUNTIME, log: Callable[[str], None] = lambda m: None) -> torch.Tensor:
    """x0 of the teacher under ``runtime`` for samples 0..n−1 of ``seed`` (the same x_T every policy gets), cached."""
    cfg = loaded.config
    runtime.check_solver(teacher.solver)
    spec = SolverSpec(teacher.solver)
    # A stochastic teacher's output depends on how solver noise is drawn: key it by that scheme, so an entry written
    # before the per-sample streams is never reused (deterministic teachers keep their keys and caches).
    noise = f"|{NOISE_SCHEME}" if spec.solver.stochastic(spec.eta) else ""
    key = hashlib.sha256(f"{loaded.weights_hash}|{loaded.schedule.hash}|{teacher.name}|{seed}|{n}|"
                         f"{cfg.in_channels}x{cfg.image_size}{noise}|{runtime.name}".encode()).hexdigest()[:20]
    path = cache_dir() / f"teacher-{key}.pt"
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(cached, torch.Tensor) and cached.shape[0] == n:
                return cached
        except Exception:  # a damaged cache entry is recomputed, never trusted
            pass
    log(f"teacher {teacher.name}: computing x0 of {n} samples ({n * teacher.steps} forwards, once; cached in {path.parent})")
    policy = Uniform(nfe=teacher.steps, schedule=loaded.schedule)
    x_T = initial_noise(n, (cfg.in_channels, cfg.image_size, cfg.image_size), seed)
    x0 = generate(loaded.model, loaded.schedule, policy, spec, n=n, seed=seed,
                  batch_size=batch_size, x_T=x_T, runtime=runtime, log=log).x0
    atomic_write(path, lambda tmp: torch.save(x0, tmp))
    return x0


def residual(x0: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared distance in pixel space ([−1, 1] scale)."""
    return (x0 - reference).pow(2).flatten(1).mean(1)
