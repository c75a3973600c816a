"""DP teacher grids beyond DDIM's integer steps: Karras (ρ = 7 in σ, GITS's teacher) and uniform in log-SNR,
real-valued, with any node count, reaching below t = 9."""

import pytest
import torch

from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.errors import UserError
from stepdrop_search.loading import load_model
from stepdrop_search.search.dp import gits_schedule, oss_schedule, teacher_grid, teacher_trajectory


@pytest.mark.parametrize("spacing", ["karras", "logsnr"])
@pytest.mark.parametrize("size", [2, 21, 61, 150])
def test_real_valued_grids_run_from_the_noise_end_to_t_zero_and_follow_their_spacing(spacing, size):
    schedule = NoiseSchedule()
    grid = teacher_grid(schedule, size, spacing)
    assert grid.dtype == torch.float64 and len(grid) == size
    assert grid[0] == schedule.T - 1 and grid[-1] == 0 and bool((grid[1:] < grid[:-1]).all())
    lam = schedule.alphas_cumprod_at(grid).log() - torch.log1p(-schedule.alphas_cumprod_at(grid))  # log-SNR
    sigma = torch.exp(-lam / 2)
    if spacing == "logsnr":
        assert torch.allclose(lam.diff(), lam.diff()[0].expand(size - 1), rtol=1e-6)
    else:
        root = sigma ** (1 / 7)
        assert torch.allclose(root.diff(), root.diff()[0].expand(size - 1), rtol=1e-6)
    if size >= 21:
        assert int((grid < 9).sum()) >= 2  # the uniform integer grid of 100 nodes has none below t = 9


def test_uniform_grid_is_todays_integer_trailing_grid():
    grid = teacher_grid(NoiseSchedule(), 100, "uniform")
    assert grid.dtype == torch.long and grid.tolist() == [999 - 10 * k for k in range(100)]


def test_unknown_spacing_and_bad_sizes_are_refused():
    with pytest.raises(UserError, match="spacing"):
        teacher_grid(NoiseSchedule(), 10, "cosine")
    with pytest.raises(UserError, match="2..1000"):
        teacher_grid(NoiseSchedule(), 1001, "uniform")


@pytest.mark.parametrize("spacing", ["karras", "logsnr"])
def test_dps_on_a_karras_teacher_return_real_timesteps_from_the_grid(tiny_checkpoint, spacing):
    loaded = load_model(tiny_checkpoint)
    traj = teacher_trajectory(loaded, grid_size=25, n=4, spacing=spacing)
    assert traj.grid.dtype == torch.float64 and torch.isfinite(traj.states).all()
    gits, oss = gits_schedule(traj, 5), oss_schedule(loaded, traj, 5)
    for steps in (gits.steps, oss.steps):
        assert steps.dtype == torch.float64 and len(steps) == 5 and bool((steps[1:] < steps[:-1]).all())
    assert set(gits.steps.tolist()) <= set(traj.grid.tolist())
    # OSS-ave: per level the mean of the two middle per-sample nodes (4 samples), which may fall between nodes
    ordered = oss.per_sample.sort(dim=0).values
    assert torch.allclose(oss.steps, (ordered[1] + ordered[2]) / 2)


def test_optimize_on_a_karras_teacher_exports_a_real_valued_schedule_that_reloads(tiny_checkpoint, tiny_features,
                                                                                   tmp_path):
    from stepdrop_search.policies import load_policy, save_policy
    from stepdrop_search.search.optimize import optimize
    from stepdrop_search.search.settings import OptimizeSettings

    cfg = OptimizeSettings.from_flags(nfe=4, method="dp-gits", solver="ddim", model=str(tiny_checkpoint), features=str(tiny_features),
                         device="cpu", samples=8, promote_samples=8, held_out_samples=8, teacher="ddim-20", dp_grid=21,
                         dp_samples=4, dp_spacing="karras", out=str(tmp_path / "best.json"))
    result = optimize(cfg)
    [dp] = [c for c in result.candidates if c.name == "ddim/dp-gits"]
    path = save_policy(tmp_path / "dp.json", dp.document)
    steps = load_policy(path, load_model(tiny_checkpoint).schedule).policy.timesteps()
    assert steps.dtype == torch.float64 and len(steps) == 4 and steps.equal(dp.document.policy.timesteps())
    assert load_policy(result.exported[0]).policy.timesteps().equal(result.best.document.policy.timesteps())  # it reloads
