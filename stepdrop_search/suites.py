"""Named sets of evaluation rows: ``stepdrop`` (the structure of the StepDrop paper's tables) and ``peers``
(every schedule a user would otherwise pick, side by side with ours, at several NFE).

A suite returns its rows plus one line per row it could not build here (a peer that does not exist at
that NFE, diffusers not installed): a report must show every peer or say why it is missing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from stepdrop_search.checkpoint import LoadedModel
from stepdrop_search.diffusion.runtimes import DEFAULT_RUNTIME, Runtime
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.errors import UserError
from stepdrop_search.evaluation import Candidate
from stepdrop_search.policies import PolicyDocument, policy_class
from stepdrop_search.policies.kinds import Explicit, Shift, StepDrop, Uniform
from stepdrop_search.search.sources.analytic import FLOW_SHIFTS

SUITES = ("stepdrop", "peers")
#: The peers' analytic and StepDrop-family schedules, built with each kind's defaults and DDIM.
PEER_KINDS = ("quadratic", "cosine", "karras", "logsnr", "stepdrop", "importance", "adaptive", "skipped-step")
#: diffusers' own schedulers the peers suite steps the model with (their loop, our x_T).
DIFFUSERS_SCHEDULERS = ("dpm-solver-multistep", "ddpm", "euler")


@dataclass
class Suite:
    rows: list[Candidate] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # "row: why it cannot run here"


def _run_row(name: str, policy, solver: str = "ddim", family: str | None = None, runtime: Runtime = DEFAULT_RUNTIME) -> Candidate:
    return Candidate(name, PolicyDocument(policy, SolverSpec(solver), runtime=runtime), family or name)


def stepdrop_suite(schedule: NoiseSchedule, runtime: Runtime = DEFAULT_RUNTIME) -> Suite:
    """The structure of StepDrop's Tables 1–3 on our model, with honest (measured) NFE, under ``runtime``."""
    _row = functools.partial(_run_row, runtime=runtime)
    return Suite([
        _row("ddpm-1000", Uniform(nfe=1000, schedule=schedule), "ddpm", "ddpm"),
        _row("ddim-50", Uniform(nfe=50, schedule=schedule), family="ddim"),
        _row("ddim-25", Uniform(nfe=25, schedule=schedule), family="ddim"),
        _row("importance-50", policy_class("importance")(nfe=50, schedule=schedule), family="importance"),
        _row("importance-25", policy_class("importance")(nfe=25, schedule=schedule), family="importance"),
        _row("target-50 uniform (linspace)", Uniform(nfe=50, spacing="linspace", schedule=schedule), family="uniform-linspace"),
        _row("target-50 stochastic", StepDrop(nfe=50, profile="constant", schedule=schedule), family="stochastic"),
        _row("linear p=0.5", StepDrop(base_steps=1000, p0=0.5, profile="linear", protect=20, schedule=schedule),
             family="stepdrop-linear"),
        _row("cosine2 p=0.3", StepDrop(base_steps=1000, p0=0.3, profile="cosine2", protect=20, schedule=schedule),
             family="stepdrop-cosine2"),
    ])


def peers_suite(loaded: LoadedModel, nfes: Iterable[int], *, dp_samples: int = 32, dp_grid: int = 100,
                diffusers_available: bool | None = None, runtime: Runtime = DEFAULT_RUNTIME,
                log: Callable[[str], None] = lambda m: None) -> Suite:
    """Per NFE: DDIM on uniform steps (leading, trailing, linspace), the peers' analytic and StepDrop-family
    schedules (on a rectified flow also the time shifts of its tools), DP-GITS and DP-OSS (found here, on
    ``dp_samples`` teacher trajectories), DPM-Solver++(2M) on uniform steps and on the DP-OSS schedule (schedule
    transfer), and the model stepped by diffusers' DPMSolverMultistep, DDPM and Euler loops on their default spacing
    and on the DP-OSS timesteps (ε models only: these loops step β schedules).

    Our rows run under ``runtime``; diffusers' loops run under their own scheduler configs.

    Optuna-searched schedules are not searched here (a search per NFE is its own job): pass the files
    ``optimize`` exported to ``evaluate --policy``.
    """
    _row = functools.partial(_run_row, runtime=runtime)
    from stepdrop_search.search.dp import gits_schedule, oss_schedule, teacher_trajectory

    if diffusers_available is None:
        from stepdrop_search.interop import diffusers_installed

        diffusers_available = diffusers_installed()
    suite, schedule = Suite(), loaded.schedule
    traj = None
    for nfe in nfes:
        for spacing in ("trailing", "leading", "linspace"):
            suite.rows.append(_row(f"ddim-{spacing}@{nfe}", Uniform(nfe=nfe, spacing=spacing, schedule=schedule),
                                   family=f"ddim-{spacing}"))
        for kind in PEER_KINDS:
            try:
                suite.rows.append(_row(f"{kind}@{nfe}", policy_class(kind).from_params({}, nfe=nfe, schedule=schedule),
                                       family=kind))
            except UserError as exc:
                suite.missing.append(f"{kind}@{nfe}: {exc}")
        if schedule.is_flow:  # what a flow's tools offer: the time shift, with their trailing spacing
            suite.rows += [_row(f"shift{shift:g}@{nfe}", Shift(nfe=nfe, shift=shift, schedule=schedule), family=f"shift{shift:g}")
                           for shift in FLOW_SHIFTS]
        if traj is None:
            log(f"peers: DDIM teacher trajectories on a {dp_grid}-step grid for {dp_samples} samples (DP rows)")
            traj = teacher_trajectory(loaded, grid_size=dp_grid, n=dp_samples, seed=0, spacing="uniform", solver="ddim",
                                      runtime=runtime)
        gits = gits_schedule(traj, nfe)
        log(f"peers: DP-GITS@{nfe}: {gits.steps.tolist()}")
        oss = oss_schedule(loaded, traj, nfe)
        log(f"peers: DP-OSS@{nfe} ({oss.nfe_spent} NFE): {oss.steps.tolist()}")
        oss_policy = Explicit(steps=tuple(oss.steps.tolist()), schedule=schedule)
        suite.rows += [
            _row(f"dp-gits@{nfe}", Explicit(steps=tuple(gits.steps.tolist()), schedule=schedule), family="dp-gits"),
            _row(f"dp-oss@{nfe}", oss_policy, family="dp-oss"),
            _row(f"dpmpp-2m-trailing@{nfe}", Uniform(nfe=nfe, schedule=schedule), "dpmpp-2m", "dpmpp-2m-trailing"),
            _row(f"dp-oss→dpmpp-2m@{nfe}", oss_policy, "dpmpp-2m", "dp-oss→dpmpp-2m"),
        ]
        for scheduler in DIFFUSERS_SCHEDULERS:
            names = (f"diffusers {scheduler}@{nfe}", f"diffusers {scheduler} on dp-oss@{nfe}")
            if not diffusers_available or schedule.is_flow:
                reason = "these loops run ε models on β schedules, and this is a rectified flow" if schedule.is_flow else \
                    "diffusers is not installed (pip install 'stepdrop-search[diffusers]')"
                suite.missing += [f"{name}: {reason}" for name in names]
                continue
            suite.rows += [
                Candidate(names[0], None, f"diffusers-{scheduler}", diffusers=scheduler, nfe=nfe),
                Candidate(names[1], PolicyDocument(oss_policy, SolverSpec("ddim")), f"diffusers-{scheduler} on dp-oss",
                          diffusers=scheduler),
            ]
    return suite


def build_suite(name: str, loaded: LoadedModel, nfes: Iterable[int], *, dp_samples: int = 32,
                runtime: Runtime = DEFAULT_RUNTIME, log: Callable[[str], None] = lambda m: None) -> Suite:
    if name == "stepdrop":
        return stepdrop_suite(loaded.schedule, runtime)
    if name == "peers":
        return peers_suite(loaded, nfes, dp_samples=dp_samples, runtime=runtime, log=log)
    raise UserError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
