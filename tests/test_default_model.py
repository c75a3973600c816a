"""The shipped model and feature network load offline, with no data set."""

import json

import torch

import stepdrop_search as sds
from stepdrop_search.checkpoint import default_model_path
from stepdrop_search.objectives.features import default_features_path, load_features


def test_default_model_loads_offline_and_predicts_finite_noise():
    m = sds.load_default_model()
    assert m.dataset == {"name": "fashion-mnist", "image_size": 28, "channels": 1}
    assert m.config.base_channels == 16 and m.schedule.hash == "b5309e6e4cb41c18"
    x = torch.randn(2, 1, 28, 28)
    assert torch.isfinite(m.model(x, torch.tensor([10, 900]))).all()


def test_default_model_card_matches_the_weights():
    card = json.loads(default_model_path().with_suffix(".json").read_text())
    assert card["weights_hash"] == sds.load_default_model().weights_hash
    assert card["steps"] >= 6000 and card["wall_time_s"] >= 3600 and card["command"].startswith("stepdrop-search train")


def test_shipped_feature_network_has_accuracy_and_reference_statistics():
    features = load_features(default_features_path("fashion-mnist"), dataset=sds.load_default_model().dataset)
    assert features.card["accuracy_test"] > 0.85
    assert features.reference["count"] == 10_000 and features.reference["features"].shape == (10_000, 64)


def test_a_shipped_model_loads_by_name_unless_a_file_of_that_name_is_here(tmp_path):
    import pytest

    from stepdrop_search.errors import UserError
    from stepdrop_search.loading import load_model

    assert load_model("default").weights_hash == load_model(None).weights_hash
    (tmp_path / "default").write_text("not a checkpoint")  # the working folder's file wins, and is refused as what it is
    with pytest.raises(UserError, match="not a readable stepdrop-search checkpoint"):
        load_model("default")


def test_the_shipped_conditional_and_flow_models_load_by_name_with_cards_that_match():
    from stepdrop_search.checkpoint import SHIPPED_MODELS, default_model_path
    from stepdrop_search.diffusion.guidance import conditional_classes
    from stepdrop_search.loading import load_model

    conditional, flow = load_model("conditional"), load_model("flow")
    assert conditional_classes(conditional.model) == 10 and not conditional.schedule.is_flow
    assert flow.schedule.is_flow and conditional_classes(flow.model) == 0
    for name in SHIPPED_MODELS:
        card = json.loads(default_model_path(name).with_suffix(".json").read_text())
        assert card["weights_hash"] == load_model(name).weights_hash and card["training_curves"], name
