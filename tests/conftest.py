"""Shared fixtures: a tiny model trained for a few seconds on synthetic shapes."""

from __future__ import annotations

import pytest

from stepdrop_search.train import TrainConfig, train


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
