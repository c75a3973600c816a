import pytest
import torch

from stepdrop_search.errors import UserError
from stepdrop_search.model import UNet, UNetConfig, count_parameters, forward_gflops, preset_config


@pytest.mark.parametrize("channels,size", [(1, 16), (3, 32), (1, 28)])
def test_output_matches_input_shape_for_any_channels_and_size(channels, size):
    model = UNet(preset_config("tiny", channels, size))
    x = torch.randn(2, channels, size, size)
    assert model(x, torch.tensor([0, 999])).shape == x.shape


def test_preset_sizes_match_their_names():
    params = {name: count_parameters(UNet(preset_config(name))) for name in ("tiny", "xs", "s", "paper")}
    assert 30_000 < params["tiny"] < 50_000
    assert 200_000 < params["xs"] < 330_000
    assert 0.8e6 < params["s"] < 1.3e6
    assert 1.7e6 < params["paper"] < 2.6e6


def test_time_conditioning_changes_the_output():
    torch.manual_seed(0)
    model = UNet(preset_config("tiny", 1, 16))
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)  # the output conv starts at zero
    x = torch.randn(1, 1, 16, 16)
    assert not torch.allclose(model(x, torch.tensor([10])), model(x, torch.tensor([900])))


def test_gflops_grow_with_model_size():
    assert 0 < forward_gflops(UNet(preset_config("tiny"))) < forward_gflops(UNet(preset_config("xs")))


def test_image_size_that_levels_do_not_divide_is_rejected():
    with pytest.raises(UserError, match="not divisible"):
        preset_config("xs", 1, 30)


def test_unknown_preset_is_rejected():
    with pytest.raises(UserError, match="unknown model preset"):
        preset_config("huge")


def test_config_round_trips_through_dict():
    cfg = preset_config("xs", 3, 32)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
