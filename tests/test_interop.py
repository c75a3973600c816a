"""diffusers interop, offline: a tiny randomly initialised UNet2DModel saved to a temp dir."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from stepdrop_search.cli import app
from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.errors import UserError
from stepdrop_search.generation import generate
from stepdrop_search.interop import (
    diffusers_sample,
    diffusers_timesteps,
    schedule_from_scheduler_config,
    scheduler_config_from_schedule,
)
from stepdrop_search.loading import load_model
from stepdrop_search.policies import PolicyDocument
from stepdrop_search.policies.kinds import Explicit, Uniform

diffusers = pytest.importorskip("diffusers")
runner = CliRunner()


def save_tiny_pipeline(directory, scheduler_config: dict | None = None, layout: str = "pipeline"):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    scheduler = diffusers.DDPMScheduler(**(scheduler_config or {"num_train_timesteps": 1000, "beta_schedule": "linear"}))
    if layout == "pipeline":
        unet.save_pretrained(directory / "unet")
        scheduler.save_pretrained(directory / "scheduler")
    else:
        unet.save_pretrained(directory)
        scheduler.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-diffusers"))


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_noise_schedule_read_from_scheduler_config_matches_diffusers(beta_schedule):
    config = {"num_train_timesteps": 1000, "beta_schedule": beta_schedule, "beta_start": 0.00085, "beta_end": 0.012}
    ours = schedule_from_scheduler_config(config, "test").alphas_cumprod
    theirs = diffusers.DDPMScheduler(**config).alphas_cumprod.double()
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_our_schedule_round_trips_through_a_diffusers_scheduler_config(tiny_checkpoint):
    schedule = load_model(tiny_checkpoint).schedule
    assert schedule_from_scheduler_config(scheduler_config_from_schedule(schedule), "test").hash == schedule.hash


@pytest.mark.parametrize("config, message", [
    ({"prediction_type": "v_prediction"}, "prediction_type"),
    ({"beta_schedule": "sigmoid"}, "beta_schedule"),
    ({"trained_betas": [0.1, 0.2]}, "trained_betas"),
])
def test_unsupported_scheduler_configs_are_refused_with_the_reason(config, message):
    with pytest.raises(UserError, match=message):
        schedule_from_scheduler_config(config, "scheduler_config.json")


@pytest.mark.parametrize("layout", ["pipeline", "flat"])
def test_saved_unet2dmodel_loads_as_a_model_in_either_layout(tmp_path, layout):
    loaded = load_model(f"diffusers:{save_tiny_pipeline(tmp_path, layout=layout)}")
    assert loaded.config.in_channels == 1 and loaded.config.image_size == 16
    assert loaded.schedule.T == 1000 and len(loaded.weights_hash) == 16
    eps = loaded.model(torch.zeros(2, 1, 16, 16), torch.tensor([999, 0]))
    assert eps.shape == (2, 1, 16, 16)


def test_our_ddim_equals_diffusers_ddim_scheduler_on_the_same_model(tmp_path):
    """The adapter and the sampler agree with diffusers' own loop: deterministic DDIM, leading spacing."""
    config = {"num_train_timesteps": 1000, "beta_schedule": "linear", "clip_sample": False}
    loaded = load_model(f"diffusers:{save_tiny_pipeline(tmp_path, config)}")
    theirs = diffusers_sample(loaded, "ddim", n=4, nfe=10, seed=3, clamp=False)
    policy = Uniform(nfe=10, spacing="leading", schedule=loaded.schedule)
    assert policy.timesteps().tolist() == theirs.grid.tolist()
    ours = generate(loaded.model, loaded.schedule, policy, SolverSpec("ddim"), n=4, seed=3, clamp=False)
    assert torch.allclose(ours.x0, theirs.x0, rtol=1e-4, atol=1e-4)
    assert theirs.nfe.tolist() == [10] * 4 == ours.nfe.tolist()


def test_our_dpmpp_2m_equals_diffusers_dpm_solver_multistep_on_custom_timesteps(tmp_path):
    """DPM-Solver++(2M) agrees with diffusers' DPMSolverMultistepScheduler (its defaults: 2nd order, first-order
    last step below 15 steps, final σ = 0) on a non-uniform schedule, when neither clips x̂0 per step."""
    loaded = load_model(f"diffusers:{save_tiny_pipeline(tmp_path, {'num_train_timesteps': 1000})}")
    policy = Explicit(steps=(999, 760, 540, 330, 120), schedule=loaded.schedule)
    theirs = diffusers_sample(loaded, "dpm-solver-multistep", n=4, seed=5, clamp=False,
                              timesteps=list(policy.timesteps().tolist()))
    ours = generate(loaded.model, loaded.schedule, policy, SolverSpec("dpmpp-2m"), n=4, seed=5, clamp=False)
    assert torch.allclose(ours.x0, theirs.x0, rtol=1e-4, atol=1e-4)


def test_exported_timesteps_are_what_diffusers_schedulers_step_through(tiny_checkpoint):
    loaded = load_model(tiny_checkpoint)
    doc = PolicyDocument(Explicit(steps=(990, 700, 400, 150, 20), schedule=loaded.schedule))
    steps = diffusers_timesteps(doc)
    for name in ("ddpm", "dpm-solver-multistep"):
        run = diffusers_sample(loaded, name, n=2, timesteps=steps)
        assert run.grid.tolist() == steps and run.nfe.tolist() == [5, 5]
        assert torch.isfinite(run.x0).all()
    with pytest.raises(UserError, match="does not accept custom timesteps"):
        diffusers_sample(loaded, "ddim", n=2, timesteps=steps)


def test_cli_samples_a_diffusers_model(pipeline_dir, tmp_path):
    out = tmp_path / "grid.png"
    result = runner.invoke(app, ["sample", "--model", f"diffusers:{pipeline_dir}", "--nfe", "5", "--n", "4",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_cli_missing_diffusers_directory_exits_2(tmp_path):
    result = runner.invoke(app, ["sample", "--model", f"diffusers:{tmp_path / 'nope'}", "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_policy_export_for_diffusers_prints_set_timesteps_and_scheduler_support(tmp_path):
    out = tmp_path / "steps.json"
    result = runner.invoke(app, ["policy", "export", "uniform", "--nfe", "4", "--format", "diffusers", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "DDPMScheduler: scheduler.set_timesteps(timesteps=[999, 749, 499, 249])" in result.output
    assert "# DDIMScheduler: takes neither" in result.output
    written = json.loads(out.read_text())
    assert written["timesteps"] == [999, 749, 499, 249] and written["accepts"]["EulerDiscreteScheduler"] == ["timesteps", "sigmas"]
    assert written["sigmas"][-1] == 0 and len(written["sigmas"]) == 5


def test_stochastic_policy_cannot_be_exported_for_diffusers():
    result = runner.invoke(app, ["policy", "export", "stepdrop", "--nfe", "10", "--format", "diffusers"])
    assert result.exit_code == 2 and "fixed list" in result.output


def test_evaluate_refuses_a_feature_network_of_another_image_shape_before_sampling(pipeline_dir, tmp_path):
    out = tmp_path / "res"
    result = runner.invoke(app, ["evaluate", "--model", f"diffusers:{pipeline_dir}", "--baselines", "ddim", "--nfe", "2",
                                 "--samples", "4", "--seeds", "1", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "1×16×16" in result.output and "--features" in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


def test_a_feature_network_of_the_model_shape_scores_a_diffusers_model(pipeline_dir, tiny_features):
    from stepdrop_search.objectives.features import load_features_for_model

    loaded = load_model(f"diffusers:{pipeline_dir}")
    assert load_features_for_model(tiny_features, loaded.config, loaded.dataset).dataset["image_size"] == 16
    with pytest.raises(UserError, match="scores 1×28×28 images but the model makes 1×16×16"):
        from stepdrop_search.objectives.features import default_features_path

        load_features_for_model(default_features_path("fashion-mnist"), loaded.config, loaded.dataset)
