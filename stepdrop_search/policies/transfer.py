"""Schedules that travel: σ lists for k-diffusion, ComfyUI and A1111/Forge, published lists imported onto a model's
noise schedule, and a schedule moved to another NFE.

Every list here is a k-diffusion σ list (σ = √((1 − ᾱ)/ᾱ), descending, a trailing 0 for the jump to x̂0), written
in positional notation (ComfyUI's ``ManualSigmas`` reads no exponents) with the shortest digits that give back the
same float, so an export imported again gives the same steps. Importing maps σ → t by the schedule's own
interpolation in log σ (k-diffusion's ``sigma_to_t``), so a published list lands on real-valued steps of *this*
model's schedule. Resampling is AYS's log-linear interpolation (``../shared/FORMULAS.md`` §8) of the evaluation
levels — A1111's convention (interpolate the n evaluated σ, then append 0), not ComfyUI's (n+1 values with the last
forced to 0), which would move the last evaluation.
"""

from __future__ import annotations

import math
import re

import numpy as np

from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.errors import UserError
from stepdrop_search.policies.base import Policy, validate_timesteps
from stepdrop_search.policies.kinds import Explicit, Sigmas

#: what ``policy export --format`` writes
FORMATS = ("json", "diffusers", "sigmas", "comfyui", "a1111")


def number_text(value: float) -> str:
    """A float in positional notation with the shortest digits that read back as the same float."""
    return np.format_float_positional(float(value), trim="-")


def sigma_list(policy: Policy) -> list[float]:
    """The policy's σ at each evaluation, then a trailing 0."""
    return policy.to_sigmas().tolist()


def comfyui_text(policy: Policy) -> str:
    """A SIGMAS string for ComfyUI's custom-sigma nodes: ``ManualSigmas`` (a number regex, the 0 written out) and
    KJNodes ``CustomSigmas`` (split on ", ")."""
    return ", ".join(number_text(v) for v in sigma_list(policy))


def a1111_text(policy: Policy) -> str:
    """The "[…]" list the A1111/Forge custom-scheduler extensions read (n + 1 values ending in 0)."""
    return "[" + comfyui_text(policy) + "]"


def parse_numbers(text: str, flag: str) -> list[float]:
    """Numbers from any of the list forms above (brackets optional; commas and/or spaces between), refused in one line
    when anything else is there."""
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    values = []
    for item in (item for item in re.split(r"[,\s]+", body) if item):
        try:
            values.append(float(item))
        except ValueError:
            raise UserError(f"{flag}: {item!r} is not a number; give a list like \"14.61, 7.49, 1.2, 0\"") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise UserError(f"{flag}: give a non-empty list of finite numbers")
    return values


def from_sigmas(values: list[float], schedule: NoiseSchedule) -> Explicit:
    """An explicit policy at the σ levels ``values`` (descending, an optional trailing 0) of ``schedule``: each σ → t in
    log σ; the σ range is checked against the schedule (one line naming the range when outside)."""
    levels = Sigmas(sigmas=tuple(values), schedule=schedule)
    return Explicit(steps=tuple(levels.timesteps().tolist()), schedule=schedule)


def from_timesteps(values: list[float], schedule: NoiseSchedule, source_T: int | None = None) -> Explicit:
    """An explicit policy at timesteps ``values`` (descending), rescaled from a ``source_T``-step training schedule
    onto this one's T (t·(T−1)/(source_T−1)) when given."""
    if source_T is not None:
        if source_T < 2:
            raise UserError("--source-t must be ≥ 2")
        values = [v * (schedule.T - 1) / (source_T - 1) for v in values]
    steps = validate_timesteps(values, schedule.T, "timesteps")
    return Explicit(steps=tuple(steps.tolist()), schedule=schedule)


def resample(policy: Policy, nfe: int) -> Explicit:
    """The schedule moved to ``nfe`` evaluations by log-linear interpolation in σ (AYS): the evaluated log σ, put on
    [0, 1] evenly, read at ``nfe`` even points. The first and last evaluations stay where they were."""
    if nfe < 1:
        raise UserError("--nfe must be ≥ 1")
    sigma = policy.to_sigmas()[:-1].double()
    if len(sigma) < 2 and nfe > 1:
        raise UserError("a one-step schedule has no shape to interpolate; give one of at least two steps")
    log_sigma = sigma.log().flip(0).numpy()  # ascending
    values = np.exp(np.interp(np.linspace(0, 1, nfe), np.linspace(0, 1, len(sigma)), log_sigma))[::-1]
    return from_sigmas(list(values), policy.schedule)
