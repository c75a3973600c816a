"""Shared fixtures: a tiny model trained for a few seconds on synthetic shapes."""

from __future__ import annotations

import os

import pytest
import torch

from stepdrop_search.train import TrainConfig, train

# Test models are tiny: one intra-op thread is as fast, and it cannot stall on a busy machine
# (two spinning OpenMP threads per process oversubscribe 2 cores badly). Subprocesses inherit it.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


def tiny_config(out_dir, **overrides) -> TrainConfig:
    settings = dict(preset="tiny", dataset="synthetic", steps=40, batch_size=32, checkpoint_every=20,
                    out_dir=str(out_dir), device="cpu")
    return TrainConfig(**(settings | overrides))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path of a training checkpoint of the tiny preset (40 steps on 16×16 synthetic shapes)."""
    return train(tiny_config(tmp_path_factory.mktemp("tiny-run")))


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory):
    """A feature file for 16×16 synthetic shapes (3 classes), trained for a few seconds."""
    from stepdrop_search.objectives.features import train_feature_net

    path = tmp_path_factory.mktemp("features") / "features.pt"
    train_feature_net("synthetic", None, path, steps=60, batch_size=64)
    return path
