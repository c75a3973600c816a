"""Searching for schedules: DP over a teacher trajectory (GITS, OSS) and Optuna studies."""
