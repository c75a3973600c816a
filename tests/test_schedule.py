import math

import pytest
import torch

from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.errors import UserError


def test_linear_betas_span_ddpm_range():
    s = NoiseSchedule("linear", 1000)
    assert s.betas[0].item() == pytest.approx(1e-4)
    assert s.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0))


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_derived_views_are_monotone_and_consistent(kind):
    s = NoiseSchedule(kind, 1000)
    assert torch.all(s.alphas_cumprod[1:] < s.alphas_cumprod[:-1])
    assert torch.all(s.log_snr[1:] < s.log_snr[:-1])
    assert torch.allclose(s.sigmas**2, (1 - s.alphas_cumprod) / s.alphas_cumprod)
    assert torch.allclose(torch.sigmoid(s.log_snr), s.alphas_cumprod)


def test_cosine_matches_nichol_dhariwal_closed_form():
    s = NoiseSchedule("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert s.alphas_cumprod[499].item() == pytest.approx(f(500) / f(0), rel=1e-6)


def test_hash_is_stable_and_tells_schedules_apart():
    assert NoiseSchedule().hash == NoiseSchedule("linear", 1000, 1e-4, 0.02).hash
    assert NoiseSchedule().hash == "b5309e6e4cb41c18"  # pinned: policy files and checkpoints store it
    assert NoiseSchedule("cosine").hash != NoiseSchedule().hash
    assert NoiseSchedule(T=500).hash != NoiseSchedule().hash


def test_round_trip_through_dict():
    for s in (NoiseSchedule(), NoiseSchedule("cosine", 200)):
        assert NoiseSchedule.from_dict(s.to_dict()) == s


def test_skip_alphas_cumprod_is_product_of_last_k_alphas():
    s = NoiseSchedule("linear", 50)
    assert torch.allclose(s.skip_alphas_cumprod(1), s.alphas)
    k3 = s.skip_alphas_cumprod(3)
    assert k3[10].item() == pytest.approx((s.alphas[8] * s.alphas[9] * s.alphas[10]).item())
    assert k3[1].item() == pytest.approx((s.alphas[0] * s.alphas[1]).item())  # truncated at s = 0


@pytest.mark.parametrize("bad", [dict(kind="sigmoid"), dict(T=1), dict(beta_start=0.1, beta_end=0.01)])
def test_invalid_schedules_raise_user_error(bad):
    with pytest.raises(UserError):
        NoiseSchedule(**bad)
