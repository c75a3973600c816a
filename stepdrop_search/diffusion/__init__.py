"""Noise schedules and samplers (ε-prediction over discrete t in 0..T-1)."""

from stepdrop_search.diffusion.schedule import NoiseSchedule

__all__ = ["NoiseSchedule"]
