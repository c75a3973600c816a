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
    ({"prediction_type": "flow_prediction"}, "prediction_type 'flow_prediction' is not supported"),
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
    ours = generate(loaded.model, loaded.schedule, policy, SolverSpec("ddim"), n=4, seed=3)
    assert torch.allclose(ours.x0, theirs.x0, rtol=1e-4, atol=1e-4)
    assert theirs.nfe.tolist() == [10] * 4 == ours.nfe.tolist()


def test_our_dpmpp_2m_equals_diffusers_dpm_solver_multistep_on_custom_timesteps(tmp_path):
    """DPM-Solver++(2M) agrees with diffusers' DPMSolverMultistepScheduler (its defaults: 2nd order, first-order
    last step below 15 steps, final σ = 0) on a non-uniform schedule, when neither clips x̂0 per step."""
    loaded = load_model(f"diffusers:{save_tiny_pipeline(tmp_path, {'num_train_timesteps': 1000})}")
    policy = Explicit(steps=(999, 760, 540, 330, 120), schedule=loaded.schedule)
    theirs = diffusers_sample(loaded, "dpm-solver-multistep", n=4, seed=5, clamp=False,
                              timesteps=list(policy.timesteps().tolist()))
    ours = generate(loaded.model, loaded.schedule, policy, SolverSpec("dpmpp-2m"), n=4, seed=5)
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


def test_policy_export_for_diffusers_prints_the_scheduler_its_config_and_set_timesteps(tmp_path):
    out = tmp_path / "steps.json"
    result = runner.invoke(app, ["policy", "export", "uniform", "--nfe", "4", "--solver", "dpmpp-2m", "--format", "diffusers",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "diffusers.DPMSolverMultistepScheduler.from_config(" in result.output
    assert "scheduler.set_timesteps(timesteps=[999, 749, 499, 249])" in result.output
    written = json.loads(out.read_text())
    assert written["scheduler"] == "DPMSolverMultistepScheduler" and written["set_timesteps"] == {"timesteps": [999, 749, 499, 249]}
    assert written["scheduler_config"]["lower_order_final"] is False and written["runtime"]["name"] == "stepdrop"
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


def save_trained_unet(directory, prediction: str, *, beta_schedule: str = "squaredcos_cap_v2", steps: int = 30):
    """A tiny UNet2DModel trained for a few steps on synthetic shapes with diffusers' own target for ``prediction``
    (the scheduler's ``add_noise`` and ``get_velocity``), saved with its scheduler config."""
    from stepdrop_search.data import synthetic_shapes

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, prediction_type=prediction)
    data = synthetic_shapes(256, 16).images
    optimiser = torch.optim.Adam(unet.parameters(), lr=2e-3)
    for _ in range(steps):
        x0 = data[torch.randint(0, len(data), (32,))]
        noise, t = torch.randn_like(x0), torch.randint(0, 1000, (32,))
        target = {"epsilon": noise, "v_prediction": scheduler.get_velocity(x0, noise, t), "sample": x0}[prediction]
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    unet.save_pretrained(directory / "unet")
    scheduler.save_pretrained(directory / "scheduler")
    return directory


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_the_adapter_turns_v_and_x0_predictions_into_the_epsilon_diffusers_would_use(tmp_path, prediction):
    loaded = load_model(f"diffusers:{save_trained_unet(tmp_path, prediction, steps=2)}")
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([900, 400, 10])
    raw = loaded.model.unet(x, t).sample
    scheduler = diffusers.DDPMScheduler.from_pretrained(tmp_path / "scheduler")
    a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1).double()
    x0 = (a.sqrt() * x - (1 - a).sqrt() * raw) if prediction == "v_prediction" else raw  # diffusers' step reads it so
    # diffusers keeps ᾱ in float32: at t = 10 (σ = 0.027) ε is ~100, so agreement is relative
    assert torch.allclose(loaded.model(x, t).double(), (x - a.sqrt() * x0) / (1 - a).sqrt(), rtol=1e-4, atol=1e-4)


def test_a_v_prediction_model_samples_evaluates_and_optimizes(tmp_path, tiny_features, monkeypatch):
    """A v-prediction UNet2DModel on a cosine (squaredcos_cap_v2) schedule through the whole tool."""
    monkeypatch.setenv("STEPDROP_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    model = f"diffusers:{save_trained_unet(tmp_path / 'vpred', 'v_prediction')}"
    loaded = load_model(model)
    assert loaded.schedule.kind == "cosine" and loaded.model.prediction == "v_prediction"
    ours = generate(loaded.model, loaded.schedule, Uniform(nfe=10, schedule=loaded.schedule), SolverSpec("ddim"),
                    n=4, seed=1)
    theirs = diffusers_sample(loaded, "ddpm", n=4, seed=1, timesteps=Uniform(nfe=10, schedule=loaded.schedule).timesteps().tolist(),
                              clamp=False)
    assert torch.isfinite(ours.x0).all() and torch.isfinite(theirs.x0).all()
    sampled = runner.invoke(app, ["sample", "--model", model, "--policy", "karras", "--nfe", "6", "--solver", "unipc",
                                  "--n", "4", "--out", str(tmp_path / "grid.png")])
    assert sampled.exit_code == 0 and "measured NFE 6.00" in sampled.output, sampled.output
    evaluated = runner.invoke(app, ["evaluate", "--model", model, "--features", str(tiny_features), "--baselines",
                                    "ddim,dpmpp-2m", "--nfe", "4", "--samples", "16", "--seeds", "2", "--metrics", "fid",
                                    "--out", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    optimized = runner.invoke(app, ["optimize", "--model", model, "--features", str(tiny_features), "--nfe", "4",
                                    "--method", "gradient,dp-gits", "--solver", "dpmpp-2m", "--samples", "16",
                                    "--promote-samples", "16", "--held-out-samples", "16", "--gradient-samples", "8",
                                    "--gradient-epochs", "1", "--dp-grid", "12", "--dp-samples", "4",
                                    "--out", str(tmp_path / "best.json")])
    assert optimized.exit_code == 0, optimized.output
    assert load_policy_for(tmp_path / "best.json", loaded).solver.name == "dpmpp-2m"


def load_policy_for(path, loaded):
    from stepdrop_search.policies import load_policy

    return load_policy(path, loaded.schedule)


def test_a_diffusers_folder_passed_without_the_prefix_is_loaded_as_one(pipeline_dir, tmp_path):
    result = runner.invoke(app, ["sample", "--model", str(pipeline_dir), "--nfe", "3", "--n", "2",
                                 "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 0, result.output
    assert load_model(pipeline_dir).source == f"diffusers:{pipeline_dir}"


@pytest.mark.parametrize("files, message", [
    ({"unet/config.json": {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 768}},
     "a UNet2DConditionModel is not supported (text-conditional, as in Stable Diffusion)"),
    ({"model_index.json": {"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"],
                           "text_encoder": ["transformers", "CLIPTextModel"]}},
     "a latent, text-conditional pipeline (StableDiffusionPipeline) is not supported"),
    ({"model_index.json": {"_class_name": "LDMPipeline", "vae": ["diffusers", "VQModel"]}},
     "a latent pipeline (it has a VAE) (LDMPipeline) is not supported"),
    ({"notes.txt": "not a model"}, "is a folder but not a diffusers model"),
])
def test_a_folder_of_a_model_this_sampler_cannot_run_is_refused_in_one_line(files, message, tmp_path):
    folder = tmp_path / "model"
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content) if isinstance(content, dict) else content)
    result = runner.invoke(app, ["sample", "--model", str(folder), "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "g.png").exists()
