"""Evaluate policies against each other with common random numbers and error bars.

For every seed, every candidate gets the same x_T (and noise streams), so differences between rows
are differences between policies. Each row reports mean ± std over seeds of: FID and KID on the judge network and
on the coach (the one searches optimise), IS and precision/recall on the coach (torch-fidelity in our feature
spaces), the trajectory residual to a cached teacher,
the measured NFE, GFLOPs per image (flop counter × measured NFE), throughput (warm, stated batch, no
file I/O) and peak memory (CUDA max allocated on GPU; process RSS high-water on CPU).
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from stepdrop_search.checkpoint import LoadedModel
from stepdrop_search.diffusion.guidance import Guidance, class_labels, conditional_classes
from stepdrop_search.diffusion.runtimes import DEFAULT_RUNTIME, Runtime
from stepdrop_search.diffusion.sampler import SampleResult
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.diffusion.solvers import SOLVERS, SolverSpec
from stepdrop_search.errors import UserError, unknown_name
from stepdrop_search.generation import document_nfe, generate, generate_document, largest_within
from stepdrop_search.model import forward_gflops
from stepdrop_search.objectives.features import FeatureFile
from stepdrop_search.objectives.metrics import CLASS_METRICS, FIDELITY_METRICS, fidelity_metrics, inception_fid
from stepdrop_search.objectives.residual import Teacher, residual, teacher_outputs
from stepdrop_search.policies import POLICIES, PolicyDocument, policy_class
from stepdrop_search.policies.kinds import Uniform
from stepdrop_search.progress import advance, phase
from stepdrop_search.seeds import evaluation_seeds

METRICS = ("fid", "kid", "is", "prc", "accuracy", "class-fid", "residual", "throughput", "gflops", "memory",
           "inception-fid")
#: The metrics the judge network measures too, when there is one (``judge_fid``, ``judge_kid``).
JUDGED = {"fid", "kid", "accuracy", "class-fid"}


@dataclass(frozen=True)
class Candidate:
    """One row of an evaluation. Rows are sampled by our sampler from ``document``, or, with ``diffusers`` set,
    by that diffusers scheduler's own loop: on the timesteps of ``document``'s static policy, or with
    ``document=None`` on the scheduler's default spacing for ``nfe`` steps."""

    name: str
    document: PolicyDocument | None
    family: str = ""  # rows of one family form one line in the quality-vs-NFE plot
    diffusers: str | None = None
    nfe: int | None = None

    def __post_init__(self) -> None:
        if self.document is None and (self.diffusers is None or self.nfe is None):
            raise ValueError("a row without a policy must name a diffusers scheduler and its NFE")

    @property
    def solver_label(self) -> str:
        return f"diffusers {self.diffusers}" if self.diffusers else self.document.solver.name

    @property
    def kind_label(self) -> str:
        return self.document.policy.kind if self.document is not None else "scheduler default"

    @property
    def nominal_nfe(self) -> int:
        """The NFE the row was built for (the expected NFE of a stochastic policy), counted with its solver."""
        if self.document is None:
            return self.nfe
        return round(document_nfe(self.document, expected=False))

    def to_dict(self) -> dict:
        if not self.diffusers:
            return {"policy": self.document.to_dict()}
        # A diffusers row is a scheduler loop, not one of our policy files: say which steps it was given.
        steps = self.document.policy.timesteps().tolist() if self.document is not None else None
        return {"policy": None, "diffusers": self.diffusers, "nfe": self.nominal_nfe, "timesteps": steps}

    def sample(self, loaded: LoadedModel, *, n: int, seed: int, batch_size: int) -> SampleResult:
        if self.diffusers:
            from stepdrop_search.interop import diffusers_sample, diffusers_timesteps

            steps = diffusers_timesteps(self.document) if self.document is not None else None
            return diffusers_sample(loaded, self.diffusers, n=n, seed=seed, nfe=None if steps else self.nfe,
                                    timesteps=steps, batch_size=batch_size)
        return generate_document(loaded, self.document, n=n, seed=seed, batch_size=batch_size)


def baseline(name: str, nfe: int, schedule: NoiseSchedule, runtime: Runtime = DEFAULT_RUNTIME,
             guidance: Guidance | None = None) -> Candidate:
    """A baseline by name under ``runtime``: a solver on uniform (trailing) steps, or any policy kind with its defaults
    and DDIM; refused in one line when the runtime has no such solver. With ``guidance`` (a class-conditional model) a
    solver's row is the largest uniform grid whose run, guided steps counted twice, spends at most ``nfe``, and its name
    ends ``-cfgW`` (``-cfgW@LO-HI`` for an interval)."""
    if name not in SOLVERS and name not in POLICIES:
        raise unknown_name("baseline", name, [*SOLVERS, *sorted(POLICIES)])
    suffix = f"-{guidance.label()}" if guidance is not None else ""
    if name in SOLVERS:
        runtime.check_solver(name)
        doc = largest_within(name, nfe, lambda spec, steps: PolicyDocument(Uniform(nfe=steps, schedule=schedule), spec,
                                                                           runtime=runtime, guidance=guidance), runtime)
        if doc is None:
            with_guidance = f" with {guidance.describe()}" if guidance is not None else ""
            raise UserError(f"solver {name}{with_guidance} cannot run within {nfe} evaluations")
    else:
        doc = PolicyDocument(policy_class(name).from_params({}, nfe=nfe, schedule=schedule), SolverSpec("ddim"),
                             runtime=runtime, guidance=guidance)
    return Candidate(f"{name}-{nfe}{suffix}", doc, f"{name}{suffix}")


@dataclass
class SeedResult:
    seed: int
    values: dict[str, float]
    failed: str | None = None


@dataclass
class Result:
    candidate: Candidate
    samples: int
    per_seed: list[SeedResult] = field(default_factory=list)

    @property
    def failed(self) -> str | None:
        return next((r.failed for r in self.per_seed if r.failed), None)

    @property
    def spread(self) -> bool:
        """Whether the row has a spread to report: two or more seeds that ran (one seed's std would be a fake 0)."""
        return sum(1 for r in self.per_seed if not r.failed) > 1

    def summary(self) -> dict[str, tuple[float, float]]:
        """metric → (mean, std over seeds); std is the sample std (0 for one seed)."""
        ok = [r.values for r in self.per_seed if not r.failed]
        keys = sorted({k for v in ok for k in v})
        out = {}
        for key in keys:
            xs = [v[key] for v in ok if key in v]
            mean = sum(xs) / len(xs)
            std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
            out[key] = (mean, std)
        return out

    def to_dict(self) -> dict:
        return {"name": self.candidate.name, "family": self.candidate.family, **self.candidate.to_dict(),
                "samples": self.samples, "failed": self.failed,
                "summary": {k: {"mean": m, "std": s} for k, (m, s) in self.summary().items()},
                "per_seed": [{"seed": r.seed, "failed": r.failed, **r.values} for r in self.per_seed]}


def seconds_per_sample_forward(loaded: LoadedModel, networks: Iterable[FeatureFile], runtime: Runtime = DEFAULT_RUNTIME,
                               device: torch.device | str = "cpu") -> float:
    """What one sample-forward (one network evaluation of one sample, with its share of feature extraction on
    ``networks``) costs here: 64 samples at 4 NFE, timed after a warm-up run. Plans and budgets are made from it."""
    from stepdrop_search.objectives.metrics import proxy_features

    policy, seconds = Uniform(nfe=4, schedule=loaded.schedule), math.inf
    for _ in range(2):
        started = time.perf_counter()
        run = generate(loaded.model, loaded.schedule, policy, SolverSpec("ddim"), n=64, runtime=runtime)
        for network in {id(n): n for n in networks}.values():
            proxy_features(run.x0, network, device=device)
        seconds = (time.perf_counter() - started) / float(run.nfe.sum())
    return seconds


def parse_metrics(text: str | Iterable[str]) -> tuple[str, ...]:
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise unknown_name("metric", unknown[0], METRICS)
    return tuple(names)


def seed_values(samples: int, seeds: int | Iterable[int]) -> list[int]:
    """The seeds an evaluation runs (0..S−1 for an int: evaluation seeds, never a search's), after checking it can
    compute a metric at all."""
    seed_list = evaluation_seeds(seeds) if isinstance(seeds, int) else list(seeds)
    if samples < 2 or not seed_list:
        raise UserError("evaluation needs at least 2 samples (--samples) and 1 seed (--seeds)")
    return seed_list


def check_class_metrics(metrics: Iterable[str], loaded: LoadedModel) -> None:
    """Accuracy and per-class FID measure a class-conditional model's samples: refused in one line for another."""
    asked = sorted(set(metrics) & set(CLASS_METRICS))
    if asked and not conditional_classes(loaded.model):
        raise UserError(f"{', '.join(asked)} measure class-conditional samples; {loaded.source} is unconditional")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def evaluate(loaded: LoadedModel, candidates: list[Candidate], *, samples: int, seeds: int | Iterable[int],
             metrics: Iterable[str], features: FeatureFile | None, judge: FeatureFile | None = None,
             teacher: Teacher = Teacher(),
             batch_size: int = 256, residual_samples: int = 256,
             inception: tuple[str, torch.Tensor] | None = None, runtime: Runtime = DEFAULT_RUNTIME,
             progress: Callable[[str], None] = lambda message: None) -> list[Result]:
    """Evaluate every candidate on the same seeds; a candidate that produces non-finite samples is
    reported as failed (with the reason), never a crash. ``inception`` = (weights path, real images)
    enables the real Inception FID metric ``inception-fid``. With a ``judge``, FID and KID are also measured on it
    (``judge_fid``, ``judge_kid``). Each row runs under its document's runtime; ``runtime`` is the comparison's, which
    the residual's teacher runs under."""
    metrics = set(parse_metrics(metrics))
    seed_list = seed_values(samples, seeds)
    if metrics & set(FIDELITY_METRICS) and features is None:
        raise UserError("proxy-FID/KID/IS/PR need a feature file (--features)")
    if "inception-fid" in metrics and inception is None:
        inception_fid(torch.zeros(0), torch.zeros(0), None, device=torch.device("cpu"))  # raises the one-line error
    device = next(loaded.model.parameters()).device
    gflops_per_forward = forward_gflops(loaded.model) if "gflops" in metrics else 0.0
    n_residual = min(residual_samples, samples)
    # Warm-up (allocator, kernels) so the first candidate's throughput is not penalised.
    generate(loaded.model, loaded.schedule, Uniform(nfe=2, schedule=loaded.schedule), SolverSpec(), n=min(samples, batch_size),
             runtime=runtime)

    check_class_metrics(metrics, loaded)
    classes = conditional_classes(loaded.model)
    labels = class_labels(range(samples), classes) if classes else None  # what generate samples: class i mod K
    results = []
    phase(progress, f"evaluate: {len(candidates)} rows × {len(seed_list)} seeds × {samples} samples",
          len(candidates) * len(seed_list))
    for cand in candidates:
        if cand.document is not None and cand.document.policy.schedule.hash != loaded.schedule.hash:
            raise UserError(f"{cand.name} was made for another noise schedule than the model's")
        result = Result(cand, samples)
        for seed in seed_list:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                torch.cuda.synchronize(device)
            tick = time.perf_counter()
            run = cand.sample(loaded, n=samples, seed=seed, batch_size=batch_size)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall = time.perf_counter() - tick
            nfe = run.nfe.float()
            values = {"nfe": float(nfe.mean()), "nfe_min": float(nfe.min()), "nfe_max": float(nfe.max())}
            if not torch.isfinite(run.x0).all():
                bad = int((~torch.isfinite(run.x0.flatten(1))).any(1).sum())
                result.per_seed.append(SeedResult(seed, values, f"{bad} of {samples} samples are not finite"))
                advance(progress, f"{cand.name}: seed {seed} failed")
                continue
            if "throughput" in metrics:
                values["images_per_s"] = samples / wall
            if "gflops" in metrics:
                values["gflops"] = gflops_per_forward * values["nfe"]
            if "memory" in metrics:
                values["peak_memory_mb"] = _peak_memory_mb(device)
            wanted = metrics & set(FIDELITY_METRICS)
            if wanted:
                values.update(fidelity_metrics(run.x0, features, wanted, device=device, seed=seed, labels=labels))
            if judge is not None and wanted & JUDGED:
                judged = fidelity_metrics(run.x0, judge, wanted & JUDGED, device=device, seed=seed, labels=labels)
                values.update({f"judge_{key}": value for key, value in judged.items()})
            if "inception-fid" in metrics:
                values["inception_fid"] = inception_fid(run.x0, inception[1], inception[0], device=device)
            if "residual" in metrics:
                ref = teacher_outputs(loaded, teacher, n=n_residual, seed=seed, batch_size=batch_size, runtime=runtime)
                values["residual"] = float(residual(run.x0[:n_residual], ref).mean())
            result.per_seed.append(SeedResult(seed, values))
            advance(progress, f"{cand.name}: seed {seed} done")
        results.append(result)
    return results
