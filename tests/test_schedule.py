import math

import pytest
import torch

from stepdrop_search.diffusion.schedule import SCHEDULE_KINDS, NoiseSchedule
from stepdrop_search.errors import UserError
from stepdrop_search.interop import schedule_from_scheduler_config, scheduler_config_from_schedule
from stepdrop_search.loading import load_default_model


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


def test_linear_and_cosine_hashes_are_what_existing_files_record():
    # Values computed before scaled_linear's betas were added to to_dict: linear and cosine must not move.
    assert load_default_model().schedule.hash == "b5309e6e4cb41c18"
    assert NoiseSchedule("linear", 500, 0.001, 0.03).hash == "79714588638b2a55"
    assert NoiseSchedule("cosine").hash == "454411c8ee9704fb"
    assert NoiseSchedule("cosine", 200, cosine_s=0.01).hash == "6b122edc83ab0825"


def test_every_parameter_that_shapes_beta_is_in_the_hash():
    base = NoiseSchedule("scaled_linear", 1000, 0.00085, 0.012)
    assert NoiseSchedule("scaled_linear", 1000, 0.0001, 0.012).hash != base.hash
    assert NoiseSchedule("scaled_linear", 1000, 0.00085, 0.02).hash != base.hash
    assert NoiseSchedule("cosine", cosine_s=0.01).hash != NoiseSchedule("cosine").hash
    assert NoiseSchedule("linear", beta_end=0.03).hash != NoiseSchedule("linear").hash


def test_parameters_a_kind_does_not_read_are_left_out_of_the_hash():
    assert NoiseSchedule("linear", cosine_s=0.5).hash == NoiseSchedule("linear").hash
    assert NoiseSchedule("scaled_linear", cosine_s=0.5).hash == NoiseSchedule("scaled_linear").hash
    assert NoiseSchedule("cosine", beta_start=0.001, beta_end=0.5).hash == NoiseSchedule("cosine").hash


# One non-default schedule per kind (a new kind without an entry fails the tests below).
NON_DEFAULT = {"linear": NoiseSchedule("linear", 500, 0.001, 0.03), "cosine": NoiseSchedule("cosine", 200, cosine_s=0.01),
               "scaled_linear": NoiseSchedule("scaled_linear", 1000, 0.00085, 0.012), "flow": NoiseSchedule("flow", 500)}


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_round_trip_through_dict_keeps_every_parameter(kind):
    schedule = NON_DEFAULT[kind]
    back = NoiseSchedule.from_dict(schedule.to_dict())
    assert back == schedule and back.hash == schedule.hash and torch.equal(back.betas, schedule.betas)


def test_a_scaled_linear_dict_without_its_betas_is_refused():
    # What to_dict wrote for scaled_linear before its betas were stored: the defaults would give other β.
    with pytest.raises(UserError, match="lacks beta_start, beta_end"):
        NoiseSchedule.from_dict({"kind": "scaled_linear", "T": 1000, "cosine_s": 0.008})


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_diffusers_scheduler_config_round_trip_gives_back_the_same_schedule(kind):
    schedule = NON_DEFAULT[kind] if kind != "cosine" else NoiseSchedule("cosine", 200)  # diffusers fixes s = 0.008
    back = schedule_from_scheduler_config(scheduler_config_from_schedule(schedule), "test")
    assert back.hash == schedule.hash and torch.equal(back.betas, schedule.betas)


def test_a_cosine_offset_diffusers_cannot_express_is_refused_on_export():
    with pytest.raises(UserError, match="fixes the cosine offset s = 0.008"):
        scheduler_config_from_schedule(NoiseSchedule("cosine", cosine_s=0.01))


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


# ---- continuous time: ᾱ, λ and σ at real t ----

CONTINUOUS_SCHEDULES = [NoiseSchedule(), NoiseSchedule("cosine"), NoiseSchedule("scaled_linear", 1000, 0.00085, 0.012),
                        NoiseSchedule("linear", 7)]


@pytest.mark.parametrize("s", CONTINUOUS_SCHEDULES, ids=lambda s: f"{s.kind}-{s.T}")
def test_alphas_cumprod_at_integers_is_the_table_and_monotone_in_between(s):
    whole = torch.arange(s.T)
    assert torch.equal(s.alphas_cumprod_at(whole), s.alphas_cumprod)  # integer t: the table itself, bit for bit
    assert torch.equal(s.sigma_at(whole), s.sigmas)
    assert torch.allclose(s.alphas_cumprod_at(whole.double()), s.alphas_cumprod, rtol=1e-12, atol=0)
    fine = torch.linspace(0, s.T - 1, 20 * s.T + 1, dtype=torch.float64)
    abar, sigma = s.alphas_cumprod_at(fine), s.sigma_at(fine)
    assert (abar[1:] < abar[:-1]).all() and (sigma[1:] > sigma[:-1]).all()
    assert torch.allclose(sigma**2, (1 - abar) / abar, rtol=1e-9)
    # between two steps, λ is the straight line between theirs (log-SNR interpolation)
    mid = s.log_snr_at(torch.arange(s.T - 1, dtype=torch.float64) + 0.25)
    assert torch.allclose(mid, 0.75 * s.log_snr[:-1] + 0.25 * s.log_snr[1:], rtol=1e-12)


@pytest.mark.parametrize("s", CONTINUOUS_SCHEDULES, ids=lambda s: f"{s.kind}-{s.T}")
def test_timestep_at_sigma_inverts_sigma_at(s):
    t = torch.linspace(0, s.T - 1, 97, dtype=torch.float64)
    assert torch.allclose(s.timestep_at_sigma(s.sigma_at(t)), t, rtol=0, atol=1e-9)
    assert torch.allclose(s.timestep_at_log_snr(s.log_snr_at(t)), t, rtol=0, atol=1e-9)
