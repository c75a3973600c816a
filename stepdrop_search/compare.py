"""What ``stepdrop-search evaluate`` does, as a function a notebook can call with the same results.

:func:`run_comparison` takes a :class:`CompareConfig` (the command's flags as values), checks every input before
any sampling — metrics, seeds, compile mode, teacher, solvers, model, policy files, feature network, Inception
weights — then builds the rows (baselines, policy files with schedule transfer, a suite), compiles the network
when the run is big enough, evaluates every row on the same seeds and returns the results with the metadata a
report needs. :func:`write_comparison` writes that report (JSON, CSV, Markdown, PNG), each file atomically.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stepdrop_search.checkpoint import LoadedModel
from stepdrop_search.devices import machine_description, resolve_device
from stepdrop_search.diffusion.guidance import Guidance
from stepdrop_search.diffusion.runtimes import Runtime, runtime_named
from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.errors import UserError
from stepdrop_search.evaluation import (
    JUDGED,
    Candidate,
    Result,
    baseline,
    check_class_metrics,
    evaluate,
    parse_metrics,
    seconds_per_sample_forward,
    seed_values,
)
from stepdrop_search.loading import load_model
from stepdrop_search.objectives.features import load_features_for_model, load_judge_for_model
from stepdrop_search.objectives.metrics import FIDELITY_METRICS
from stepdrop_search.objectives.residual import Teacher
from stepdrop_search.policies import PolicyDocument, load_policy
from stepdrop_search.policies.io import foreign_model_warning
from stepdrop_search.policies.resolve import check_guidance_fits
from stepdrop_search.runtime import CompiledNetwork, check_compile_mode, compile_network, should_compile

DEFAULT_METRICS = ("fid", "kid", "throughput", "gflops")


@dataclass(frozen=True)
class CompareConfig:
    """One comparison: which rows (``baselines`` × ``nfes``, ``policies`` files, each also run with every solver in
    ``solvers``, a named ``suite``), on which model, measured how (``samples`` × ``seeds``, ``metrics``) and under
    which ``runtime`` (every row: a paired comparison shares its conventions; a policy file is re-run under it)."""

    baselines: tuple[str, ...] = ()
    nfes: tuple[int, ...] = (10, 25, 50)
    policies: tuple[str, ...] = ()
    solvers: tuple[str, ...] = ()
    suite: str | None = None
    dp_samples: int = 32
    samples: int = 2000
    seeds: int = 3
    metrics: tuple[str, ...] = DEFAULT_METRICS
    teacher: str = "ddim-1000"
    residual_samples: int = 256
    batch_size: int = 256
    model: str | None = None
    features: str | None = None
    judge: str | None = None
    inception_weights: str | None = None
    data: str | None = None
    device: str = "auto"
    compile: str = "auto"
    command: str = ""
    runtime: str = "stepdrop"
    guidance: tuple[str, ...] = ()  # each baseline and policy row once per guidance (W or W:LO:HI), a conditional model's


#: A comparison planned to take at least this many sample-forwards (about 30 s on two CPU cores) says first how long
#: it will take, from a timed probe.
ESTIMATE_FROM_FORWARDS = 50_000


def duration(seconds: float) -> str:
    """"40 s", "12 min", "2.3 h": a time the way a plan line says it."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


@dataclass
class Comparison:
    """The results of :func:`run_comparison` with what a report needs to say how they were made."""

    results: list[Result]
    meta: dict
    missing: list[str] = field(default_factory=list)  # "row: why it cannot run here"
    loaded: LoadedModel | None = None


def expand_policy_paths(paths: tuple[str, ...]) -> list[Path]:
    """Policy files as given, a folder standing for every ``*.json`` in it (what ``optimize --save-pool`` writes)."""
    out = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if not found:
                raise UserError(f"{path} is a folder without policy files (*.json)")
            out += found
        else:
            out.append(path)
    return out


def policy_rows(paths: tuple[str, ...], solvers: tuple[str, ...], loaded: LoadedModel, runtime: Runtime,
                warn: Callable[[str], None] = lambda m: None) -> list[Candidate]:
    """One row per policy file, or with ``solvers`` one per file × solver (the schedule transferred to each), all run
    under ``runtime``; ``warn`` hears of a file made on another model or measured under another runtime (its recorded
    objective values do not apply here)."""
    rows = []
    for path in expand_policy_paths(paths):
        doc = load_policy(path, loaded.schedule)
        if warning := foreign_model_warning(doc, loaded.weights_hash, str(path)):
            warn(warning)
        if doc.runtime != runtime:
            warn(f"{path} was measured under runtime {doc.runtime.name}; it is run here under {runtime.name}")
            doc = doc.under(runtime)
        family = re.sub(r"-nfe\d+$", "", path.stem)
        for solver_name in solvers or (doc.solver.name,):
            own = solver_name == doc.solver.name
            rows.append(Candidate(path.stem if own else f"{path.stem}→{solver_name}",
                                  doc if own else PolicyDocument(doc.policy, SolverSpec(solver_name), runtime=runtime),
                                  family if own else f"{family}→{solver_name}"))
    return rows


def guided_rows(rows: list[Candidate], guidances: tuple[Guidance, ...]) -> list[Candidate]:
    """Each policy file's row once per guidance, on its own steps (named ``ROW-cfgW`` or ``ROW-cfgW@LO-HI``, one plot
    line per row and guidance), or the rows as they are without any. (Baselines are rebuilt per guidance to spend
    their NFE: :func:`~stepdrop_search.evaluation.baseline`.)"""
    if not guidances:
        return rows
    return [dataclasses.replace(row, name=f"{row.name}-{g.label()}", family=f"{row.family}-{g.label()}",
                                document=dataclasses.replace(row.document, guidance=g))
            for row in rows if row.document is not None for g in guidances]


def run_comparison(cfg: CompareConfig, log: Callable[[str], None] = lambda m: None,
                   warn: Callable[[str], None] | None = None) -> Comparison:
    """Check every input, build the rows, evaluate them on the same seeds; see the module docstring. ``log`` hears
    progress, ``warn`` (default: ``log``) what the user should know about an input."""
    from stepdrop_search.suites import build_suite

    wanted = parse_metrics(cfg.metrics)
    seed_list = seed_values(cfg.samples, cfg.seeds)
    check_compile_mode(cfg.compile)
    teacher = Teacher.parse(cfg.teacher)
    runtime = runtime_named(cfg.runtime)
    solvers = tuple(SolverSpec(name).name for name in cfg.solvers)
    for name in solvers:
        runtime.check_solver(name)
    device = resolve_device(cfg.device)
    loaded = load_model(cfg.model, device=device)
    check_class_metrics(wanted, loaded)
    guidances = tuple(Guidance.parse(spec) for spec in cfg.guidance)
    rows = [baseline(name, nfe, loaded.schedule, runtime, guidance)
            for name in cfg.baselines or (() if cfg.suite or cfg.policies else ("ddim",)) for nfe in cfg.nfes
            for guidance in guidances or (None,)]
    rows += guided_rows(policy_rows(cfg.policies, solvers, loaded, runtime, warn or log), guidances)
    for row in rows:
        if row.document is not None:
            check_guidance_fits(row.document, loaded)
    features = load_features_for_model(cfg.features, loaded.config, loaded.dataset, device=device) \
        if set(wanted) & set(FIDELITY_METRICS) else None
    judge = load_judge_for_model(cfg.judge, loaded.config, loaded.dataset, device=device) \
        if set(wanted) & JUDGED else None
    if judge is None and set(wanted) & JUDGED:
        (warn or log)("no judge network for this model's images: FID and KID are the coach's alone, the network "
                      "searches optimise (train one: `stepdrop-search features train --family residual --images "
                      "half-b`, then --judge FILE)")
    inception = _inception_inputs(cfg, loaded, device) if "inception-fid" in wanted else None

    missing = []
    if cfg.suite is not None:  # after every input is checked: the peers suite's DP rows cost minutes
        built = build_suite(cfg.suite, loaded, cfg.nfes, dp_samples=cfg.dp_samples, runtime=runtime, log=log)
        rows, missing = built.rows + rows, built.missing
        for line in missing:
            log(f"not run here: {line}")
    network = loaded
    if should_compile(cfg.compile, cfg.samples * len(seed_list) * sum(row.nominal_nfe for row in rows)):
        network = dataclasses.replace(loaded, model=compile_network(loaded.model, min(cfg.batch_size, cfg.samples), log))
    planned = cfg.samples * len(seed_list) * sum(row.nominal_nfe for row in rows)
    if planned >= ESTIMATE_FROM_FORWARDS:
        per_forward = seconds_per_sample_forward(network, [n for n in (judge, features) if n is not None], runtime, device)
        log(f"plan: {len(rows)} rows × {len(seed_list)} seeds × {cfg.samples} samples = {planned:,} sample-forwards; "
            f"about {duration(per_forward * planned)} here (timed on a 512-forward probe)")
    results = evaluate(network, rows, samples=cfg.samples, seeds=seed_list, metrics=wanted, features=features,
                       judge=judge, teacher=teacher, batch_size=cfg.batch_size, residual_samples=cfg.residual_samples,
                       inception=inception, runtime=runtime, progress=log)
    meta = {"command": cfg.command, "model": loaded.source, "model_hash": loaded.weights_hash,
            "features": features.source if features else None, "judge": judge.source if judge else None,
            "samples": cfg.samples, "seeds": len(seed_list),
            "teacher": teacher.name, "residual_samples": min(cfg.residual_samples, cfg.samples), "device": str(device),
            "batch_size": cfg.batch_size, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine_description(device),
            "compiled": isinstance(network.model, CompiledNetwork),  # False when the compile fell back to eager
            "suite": cfg.suite, "not_run": missing, "runtime": runtime.to_dict(),
            "title": f"Evaluation: suite {cfg.suite}" if cfg.suite else "Evaluation"}
    return Comparison(results, meta, missing, loaded)


def _inception_inputs(cfg: CompareConfig, loaded: LoadedModel, device):
    """(weights path, real test images) for ``inception-fid``; the metric's one-line error when weights are missing."""
    import torch

    from stepdrop_search.data import load_dataset
    from stepdrop_search.objectives.metrics import inception_fid

    weights = Path(cfg.inception_weights) if cfg.inception_weights else None
    if weights is None or not weights.is_file():
        inception_fid(torch.zeros(0), torch.zeros(0), weights, device=device)  # raises the one-line error
    real = load_dataset(loaded.dataset.get("name", ""), cfg.data, split="test", image_size=loaded.config.image_size)
    return str(weights), real.images


def write_comparison(comparison: Comparison, out: str | Path) -> list[Path]:
    """``out``.json (everything, per seed), .csv (a summary row per policy), .md (the report) and .png
    (quality against measured NFE, when a quality metric was measured)."""
    from stepdrop_search.report import headline_metric, plot_quality_vs_nfe, write_markdown, write_results

    out = Path(out)
    written = write_results(comparison.results, out, comparison.meta)
    written.append(write_markdown(comparison.results, out.with_suffix(".md"), comparison.meta, comparison.missing))
    plot = plot_quality_vs_nfe(comparison.results, out.with_suffix(".png"), headline_metric(comparison.results))
    return written + ([plot] if plot else [])
