"""Rectified-flow models: the flow schedule is the path (1 − s) x0 + s ε, a velocity network samples through every
solver by the VP adapter, flow training runs and resumes, and diffusers' flow scheduler draws the same samples."""

import pytest
import torch
from torch import nn

from stepdrop_search.diffusion.flow import FlowAdapter, inverse_time_shift, time_shift
from stepdrop_search.diffusion.sampler import Plan, sample
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.errors import UserError
from stepdrop_search.generation import initial_noise
from stepdrop_search.policies.kinds import Uniform

FLOW = NoiseSchedule(kind="flow")
MU, S = 0.1, 0.5  # data x0 ~ N(MU, S²) per pixel


class GaussianVelocity(nn.Module):
    """The exact velocity ε − x0 of Gaussian data on the flow path y = (1 − s) x0 + s ε, fed τ = s·T (diffusers'
    convention): E[x0 | y] = μ + (1 − s) S² (y − (1 − s) μ)/((1 − s)² S² + s²), ε̂ = (y − (1 − s) E[x0 | y])/s."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # the sampler reads the device and dtype off a parameter
        self.config = type("Shape", (), {"in_channels": 1, "image_size": 4})()

    def forward(self, y: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        s = (tau.double() / FLOW.T).view(-1, 1, 1, 1)
        mean = MU + (1 - s) * S ** 2 / ((1 - s) ** 2 * S ** 2 + s ** 2) * (y - (1 - s) * MU)
        return ((y - (1 - s) * mean) / s - mean).float()


def exact_x0(y_start: torch.Tensor, s0: float) -> torch.Tensor:
    """The flow ODE keeps (y − (1 − s) μ)/√((1 − s)² S² + s²) constant: its end at s = 0 in closed form."""
    return (MU + S * (y_start - (1 - s0) * MU) / ((1 - s0) ** 2 * S ** 2 + s0 ** 2) ** 0.5).float()


def test_the_flow_schedule_is_the_rectified_flow_path_as_a_vp_process():
    t = torch.tensor([0.0, 3.5, 500.0, 998.25, 999.0], dtype=torch.float64)
    s = FLOW.flow_time(t)
    a = FLOW.alphas_cumprod_at(t)
    c = FLOW.model_scale(t)
    assert torch.allclose(c * a.sqrt(), 1 - s) and torch.allclose(c * (1 - a).sqrt(), s)  # y = c x: (1 − s) x0 + s ε
    assert torch.allclose(FLOW.log_snr_at(t), 2 * torch.log((1 - s) / s))
    assert torch.allclose(FLOW.timestep_at_log_snr(FLOW.log_snr_at(t)), t, atol=1e-9)
    assert torch.equal(FLOW.alphas_cumprod_at(torch.arange(1000)), FLOW.alphas_cumprod)
    assert float(FLOW.flow_time(torch.tensor(999))) == 1000 / 1001  # below 1, where λ is finite
    assert NoiseSchedule.from_dict(FLOW.to_dict()) == FLOW and FLOW.hash != NoiseSchedule().hash
    assert torch.allclose(torch.cumprod(1 - FLOW.betas, 0), FLOW.alphas_cumprod)
    assert torch.allclose(inverse_time_shift(time_shift(s, 3.0), 3.0), s)


@pytest.mark.parametrize(("solver", "tolerance"), [("ddim", 2e-2), ("dpmpp-2m", 1e-3), ("dpmpp-3m", 1e-3), ("unipc", 1e-3),
                                                  ("ipndm", 1e-3), ("heun", 1e-3)])
def test_a_velocity_network_samples_the_flow_odes_solution_through_every_solver(solver, tolerance):
    """200 uniform steps: the error left is each solver's own (DDIM's first order; the last step's x̂0 at s = 0.005)."""
    model = FlowAdapter(GaussianVelocity(), FLOW)
    x_T = initial_noise(64, (1, 4, 4), 0)
    steps = Uniform(nfe=200, schedule=FLOW).timesteps()
    result = sample(model, FLOW, x_T, Plan(steps, (solver,) * len(steps)), solver=SolverSpec(solver)).x0
    s0 = float(FLOW.flow_time(steps[0]))
    target = exact_x0(x_T.double() * float(FLOW.model_scale(steps[0])), s0)  # the VP start x = ε is y = c ε
    assert (result - target).abs().max() < tolerance


def test_flow_training_refuses_what_a_flow_has_not():
    from stepdrop_search.train import TrainConfig

    assert TrainConfig(objective="flow").schedule == "flow" and TrainConfig().schedule == "linear"
    with pytest.raises(UserError, match="no β schedule"):
        TrainConfig(objective="flow", schedule="cosine")
    with pytest.raises(UserError, match="--objective flow"):
        TrainConfig(schedule="flow")
    with pytest.raises(UserError, match="skip-loss"):
        TrainConfig(objective="flow", skip_loss_every=10)


def test_a_flow_model_trains_resumes_and_loads_as_a_flow(tmp_path):
    from stepdrop_search.loading import load_model
    from stepdrop_search.train import TrainConfig, train

    cfg = TrainConfig(preset="tiny", dataset="synthetic", image_size=8, steps=6, batch_size=8, objective="flow",
                      checkpoint_every=3, out_dir=str(tmp_path / "run"), device="cpu")
    train(cfg, stop_after=3)
    resumed = train(cfg, resume=True)
    whole = train(TrainConfig(**{**cfg.__dict__, "out_dir": str(tmp_path / "whole")}))
    a, b = torch.load(resumed, weights_only=True), torch.load(whole, weights_only=True)
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])  # resumed = uninterrupted, step for step
    loaded = load_model(resumed)
    assert loaded.schedule == FLOW and isinstance(loaded.model, FlowAdapter)
    x = initial_noise(4, (1, 8, 8), 0)
    steps = Uniform(nfe=5, schedule=FLOW).timesteps()
    assert torch.isfinite(sample(loaded.model, FLOW, x, Plan(steps, ("dpmpp-2m",) * 5), solver=SolverSpec("dpmpp-2m")).x0).all()
    with pytest.raises(UserError, match="objective"):  # a flow run is not continued as an ε one
        train(TrainConfig(**{**cfg.__dict__, "objective": "epsilon", "schedule": None, "steps": 9}), resume=True)


def test_ddim_on_a_flow_is_diffusers_flow_match_euler_on_the_same_sigmas():
    diffusers = pytest.importorskip("diffusers")
    net = GaussianVelocity()
    model = FlowAdapter(net, FLOW)
    steps = Uniform(nfe=8, schedule=FLOW).timesteps()
    x_T = initial_noise(16, (1, 4, 4), 3)
    ours = sample(model, FLOW, x_T, Plan(steps, ("ddim",) * 8), solver=SolverSpec("ddim")).x0
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=FLOW.T, shift=1.0)
    scheduler.set_timesteps(sigmas=FLOW.flow_time(steps).tolist())
    y = x_T * float(FLOW.model_scale(steps[0]))  # our start state in the flow's space
    for t in scheduler.timesteps:
        y = scheduler.step(net(y, t.expand(len(y))), t, y).prev_sample
    assert (y - ours).abs().max() < 1e-4


def test_a_diffusers_folder_with_a_flow_matching_scheduler_loads_as_a_flow(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from stepdrop_search.loading import load_model

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 8), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(tmp_path / "unet")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    scheduler.save_pretrained(tmp_path / "scheduler")
    (tmp_path / "model_index.json").write_text('{"_class_name": "DiffusionPipeline"}')
    loaded = load_model(tmp_path)
    assert loaded.schedule == FLOW and isinstance(loaded.model, FlowAdapter)  # the shift is a policy, not the path
    steps = Uniform(nfe=4, schedule=FLOW).timesteps()
    x_T = initial_noise(2, (1, 8, 8), 0)
    with torch.no_grad():
        ours = sample(loaded.model, FLOW, x_T, Plan(steps, ("ddim",) * 4), solver=SolverSpec("ddim")).x0
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        scheduler.set_timesteps(sigmas=FLOW.flow_time(steps).tolist())
        y = x_T * float(FLOW.model_scale(steps[0]))
        for t in scheduler.timesteps:
            y = scheduler.step(unet(y, t).sample, t, y).prev_sample
    assert (y - ours).abs().max() < 1e-4
    with pytest.raises(UserError, match="rectified flow"):
        from stepdrop_search.interop import make_scheduler
        make_scheduler("euler", loaded)


def test_the_shift_kind_spaces_a_flows_steps_as_its_tools_do_and_only_a_flows():
    from stepdrop_search.policies.kinds import Shift
    from stepdrop_search.search.sources.analytic import schedules_for

    linspace = Shift(nfe=6, shift=1.0, spacing="linspace", schedule=FLOW)
    assert linspace.timesteps().tolist() == [999, 800, 600, 400, 200, 0]  # uniform t to the bottom
    s = FLOW.flow_time(Shift(nfe=6, shift=3.0, spacing="linspace", schedule=FLOW).timesteps())
    expected = time_shift(torch.linspace(1, 1 / 1001, 6, dtype=torch.float64), 3.0)
    assert torch.allclose(s[1:], expected[1:]) and s[0] == 1000 / 1001  # SD3's shift; the top at the grid's top
    s = FLOW.flow_time(Shift(nfe=4, shift=3.0, schedule=FLOW).timesteps())  # trailing: Flux's linspace(1, 1/N, N)
    assert torch.allclose(s[1:], time_shift(torch.tensor([0.75, 0.5, 0.25], dtype=torch.float64), 3.0))
    with pytest.raises(UserError, match="rectified flow"):
        Shift(nfe=5, schedule=NoiseSchedule())
    with pytest.raises(UserError, match="positive"):
        Shift(nfe=5, shift=0.0, schedule=FLOW)
    assert {"shift1", "shift3", "shift3-linspace"} <= set(schedules_for(FLOW)) and "shift1" not in schedules_for(NoiseSchedule())
    with pytest.raises(UserError, match="spacing"):
        Shift(nfe=5, spacing="leading", schedule=FLOW)


def flow_document(solver="ddim", shift=3.0, nfe=6):
    from stepdrop_search.policies import PolicyDocument
    from stepdrop_search.policies.kinds import Shift

    return PolicyDocument(Shift(nfe=nfe, shift=shift, schedule=FLOW), SolverSpec(solver))


def our_flow_samples(document, x_T, runtime="stepdrop"):
    from stepdrop_search.diffusion.runtimes import RUNTIMES
    from stepdrop_search.generation import generate

    return generate(FlowAdapter(GaussianVelocity(), FLOW), FLOW, document.policy, document.solver, n=len(x_T), x_T=x_T,
                    runtime=RUNTIMES[runtime]).x0


@pytest.mark.parametrize("own", [None, {"shift": 3.0}, {"use_dynamic_shifting": True},
                                 {"use_dynamic_shifting": True, "time_shift_type": "linear"}])
def test_the_diffusers_export_of_a_flow_policy_reproduces_its_samples_in_flow_match_euler(own):
    """The export's code as printed (its SIGMAS, scheduler config, set_timesteps and latents scale); a user who keeps
    their own scheduler — SD3's fixed shift 3, Flux's dynamic shifting by mu, exponential or linear — runs the
    export's pre-shift code first and gets the same samples."""
    diffusers = pytest.importorskip("diffusers")
    import math

    from stepdrop_search.interop import diffusers_export
    from stepdrop_search.policies.transfer import check_export

    document = flow_document()
    assert check_export(document, "diffusers", "test").name == "diffusers-flow"
    payload = diffusers_export(document)
    namespace = {"diffusers": diffusers, "torch": torch, "shape": (16, 1, 4, 4),
                 "generator": torch.Generator().manual_seed(0)}
    exec(payload["code"], namespace)
    scheduler, mu = namespace["scheduler"], 1.5
    if own is not None:
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **own)
        namespace |= {"scheduler": scheduler, "math": math, "mu": mu}
        exec(payload["if_you_keep_your_scheduler"], namespace)
        scheduler.set_timesteps(sigmas=namespace["SIGMAS"], mu=mu)
    x_T = initial_noise(16, (1, 4, 4), 5)
    net = GaussianVelocity()
    assert torch.equal(namespace["latents"], torch.randn((16, 1, 4, 4), generator=torch.Generator().manual_seed(0))
                       * payload["latents_scale"])  # the printed start is the noise times this scale
    y = x_T * payload["latents_scale"]
    for t in scheduler.timesteps:
        y = scheduler.step(net(y, t.expand(len(y))), t, y).prev_sample
    assert (y - our_flow_samples(document, x_T)).abs().max() < 1e-4


def test_the_comfyui_export_of_a_flow_policy_runs_as_comfyuis_const_euler():
    """ComfyUI on a flow: x = σ₀·noise (CONST.noise_scaling, empty latent), denoised = x − σ·v(x, σ·1000), and
    k-diffusion's sample_euler on the SIGMAS text."""
    from stepdrop_search.kdiffusion import kdiffusion_modules
    from stepdrop_search.policies.transfer import check_export, comfyui_text, parse_numbers

    try:
        sampling, _ = kdiffusion_modules()
    except UserError:
        pytest.skip("k-diffusion is not installed")
    document = flow_document(shift=2.0)
    assert check_export(document, "comfyui", "test").name == "comfyui-flow"
    sigmas = torch.tensor(parse_numbers(comfyui_text(document.policy), "test"), dtype=torch.float64)
    assert sigmas[-1] == 0 and float(sigmas[0]) == 1000 / 1001
    net = GaussianVelocity()

    def denoiser(x, sigma):
        return x - sigma.view(-1, 1, 1, 1) * net(x, sigma * 1000)

    x_T = initial_noise(16, (1, 4, 4), 6)
    theirs = sampling.sample_euler(denoiser, x_T * sigmas[0], sigmas, disable=True)
    assert (theirs - our_flow_samples(document, x_T)).abs().max() < 1e-4
    # a start below the top: ComfyUI's σ₀·noise is our "sigma" start, which comfyui-flow measures under
    lower = replace_steps(document, 3.0)
    sigmas = torch.tensor(parse_numbers(comfyui_text(lower.policy), "test"), dtype=torch.float64)
    theirs = sampling.sample_euler(denoiser, x_T * sigmas[0], sigmas, disable=True)
    assert (theirs - our_flow_samples(lower, x_T, runtime="comfyui-flow")).abs().max() < 1e-4
    with pytest.raises(UserError, match="noise"):
        check_export(lower, "comfyui", "test")  # measured from our start, which ComfyUI's differs from down there


def replace_steps(document, start_t):
    from stepdrop_search.policies import PolicyDocument
    from stepdrop_search.policies.kinds import Explicit

    return PolicyDocument(Explicit(steps=(700.5, 400.0, 150.25, start_t), schedule=FLOW), document.solver)


def test_flow_exports_refuse_what_no_flow_tool_runs_and_runtimes_keep_to_their_family():
    from stepdrop_search.diffusion.runtimes import RUNTIMES
    from stepdrop_search.policies.transfer import check_export, runs_in

    for fmt in ("sigmas", "a1111", "python"):
        with pytest.raises(UserError, match="rectified-flow"):
            check_export(flow_document(), fmt, "test")
    with pytest.raises(UserError, match="heun"):
        check_export(flow_document("heun"), "comfyui", "test")
    assert "comfyui-flow" in runs_in(flow_document()) and "diffusers-flow" in runs_in(flow_document())
    x_T = initial_noise(2, (1, 4, 4), 0)
    with pytest.raises(UserError, match="runtime comfyui is for ε models"):
        our_flow_samples(flow_document(), x_T, runtime="comfyui")
    with pytest.raises(UserError, match="runtime diffusers-flow is for rectified-flow models"):
        RUNTIMES["diffusers-flow"].check_family(False)


def test_a_flow_tools_sigma_list_imports_onto_the_flows_steps_and_exports_back():
    from stepdrop_search.policies.transfer import comfyui_text, from_sigmas, parse_numbers

    diffusers_default = [1.0, 0.75, 0.5, 0.25, 0.001]  # a flow tool's σ: s, from pure noise at 1
    policy = from_sigmas(diffusers_default, FLOW)
    assert policy.timesteps().tolist()[0] == 999 and torch.allclose(
        FLOW.flow_time(policy.timesteps())[1:], torch.tensor(diffusers_default[1:], dtype=torch.float64))
    again = from_sigmas(parse_numbers(comfyui_text(policy), "test"), FLOW)
    assert torch.equal(again.timesteps(), policy.timesteps())
    with pytest.raises(UserError, match="outside"):
        from_sigmas([14.6, 1.0, 0.1], FLOW)  # an ε model's σ̃ list


def test_optimize_on_a_flow_model_searches_shifts_with_every_kind_and_exports_for_flow_tools(tiny_features, tmp_path):
    from typer.testing import CliRunner

    from stepdrop_search.cli import app
    from stepdrop_search.loading import load_model
    from stepdrop_search.policies import load_policy
    from stepdrop_search.search.optimize import optimize
    from stepdrop_search.search.settings import OptimizeSettings
    from stepdrop_search.train import TrainConfig, train

    checkpoint = train(TrainConfig(preset="tiny", dataset="synthetic", steps=40, batch_size=32, objective="flow",
                                   checkpoint_every=40, out_dir=str(tmp_path / "flow"), device="cpu"))
    out = tmp_path / "best.json"
    cfg = OptimizeSettings.from_flags(nfe=4, method="all", model=str(checkpoint), features=str(tiny_features), trials=4,
                                      storage=f"sqlite:///{tmp_path}/s.db", dp_grid=20, dp_samples=4, dp_oss_samples=2,
                                      out=str(out), samples=16, trial_samples=16, promote=2, promote_samples=16,
                                      held_out_samples=16, teacher="ddim-50", gradient_samples=16, gradient_epochs=1,
                                      gradient_batch=8, gradient_solver_epochs=1)
    result = optimize(cfg)
    names = {c.name for c in result.candidates}
    assert {"ddim/shift1", "ddim/shift3", "dpmpp-2m/shift6", "ddim/dp-oss", "ddim/karras"} <= names
    doc = load_policy(out, load_model(checkpoint).schedule)
    assert doc.policy.schedule == FLOW and doc.solver.solver.nfe(doc.policy.nfe) <= 4
    shift3 = CliRunner().invoke(app, ["policy", "export", "shift", "--nfe", "4", "--param", "shift=3", "--model",
                                      str(checkpoint), "--format", "comfyui"])
    assert shift3.exit_code == 0 and shift3.output.startswith("0.999000999000999, ")
    refused = CliRunner().invoke(app, ["policy", "export", "shift", "--nfe", "4", "--model", str(checkpoint), "--format",
                                       "sigmas"])
    assert refused.exit_code == 2 and "no tool for rectified-flow models" in refused.output


def test_the_client_helpers_run_flow_exports_as_comfyui_and_diffusers_do():
    """What bench/export_fidelity.py runs on a real flow model: k-diffusion's sample_euler on ComfyUI's CONST denoiser,
    and diffusers' loop on the recipe, each against our sampler from the same x_T."""
    pytest.importorskip("diffusers")
    from stepdrop_search.checkpoint import LoadedModel
    from stepdrop_search.diffusion.runtimes import RUNTIMES
    from stepdrop_search.interop import diffusers_recipe, diffusers_recipe_sample
    from stepdrop_search.kdiffusion import kdiffusion_sample

    loaded = LoadedModel(FlowAdapter(GaussianVelocity(), FLOW), FLOW, {}, "gaussian", "test")
    x_T = initial_noise(8, (1, 4, 4), 2)
    try:
        for document in (flow_document(), replace_steps(flow_document(), 3.0).under(RUNTIMES["comfyui-flow"])):
            theirs = kdiffusion_sample(loaded, document, n=8, seed=2)
            assert (theirs.x0 - our_flow_samples(document, x_T, document.runtime.name)).abs().max() < 1e-4
            assert theirs.nfe.tolist() == [len(document.policy.timesteps())] * 8
    except UserError as exc:
        if "k-diffusion" not in str(exc):
            raise
    document = flow_document(shift=6.0)
    theirs = diffusers_recipe_sample(loaded, diffusers_recipe(document), n=8, seed=2)
    assert (theirs.x0 - our_flow_samples(document, x_T)).abs().max() < 1e-4


def test_a_flow_policy_resamples_and_a_flow_tools_timesteps_import_as_flow_times():
    from stepdrop_search.policies.transfer import from_timesteps, resample

    moved = resample(Shift_policy(3.0, 6), 10)
    assert len(moved.timesteps()) == 10 and moved.timesteps()[0] == 999
    assert torch.allclose(FLOW.flow_time(from_timesteps([1000, 750, 500, 250], FLOW).timesteps())[1:],
                          torch.tensor([0.75, 0.5, 0.25], dtype=torch.float64))


def Shift_policy(shift, nfe):
    from stepdrop_search.policies.kinds import Shift

    return Shift(nfe=nfe, shift=shift, schedule=FLOW)


def test_the_peers_suite_lists_a_flows_shifts_and_says_why_diffusers_vp_loops_are_missing(monkeypatch):
    from stepdrop_search import suites
    from stepdrop_search.checkpoint import LoadedModel

    monkeypatch.setattr(suites, "_run_row", lambda name, policy, solver="ddim", family=None, runtime=None: name)
    monkeypatch.setattr("stepdrop_search.search.dp.teacher_trajectory", lambda *a, **k: None)
    monkeypatch.setattr("stepdrop_search.search.dp.gits_schedule", lambda *a, **k: type("R", (), {"steps": torch.tensor([999, 500, 0])})())
    monkeypatch.setattr("stepdrop_search.search.dp.oss_schedule",
                        lambda *a, **k: type("R", (), {"steps": torch.tensor([999, 400, 0]), "nfe_spent": 3})())
    loaded = LoadedModel(FlowAdapter(GaussianVelocity(), FLOW), FLOW, {}, "gaussian", "test")
    suite = suites.peers_suite(loaded, [3], diffusers_available=True)
    assert {"shift1@3", "shift3@3", "shift6@3"} <= set(suite.rows)
    assert any("rectified flow" in line for line in suite.missing) and not any(
        isinstance(row, str) is False and row.name.startswith("diffusers") for row in suite.rows)


def test_a_flow_only_search_and_a_runtime_of_the_other_family_are_refused_before_any_work(tiny_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from stepdrop_search.cli import app

    runner = CliRunner()
    shift = runner.invoke(app, ["optimize", "--model", str(tiny_checkpoint), "--nfe", "4", "--method", "optuna", "--solver", "ddim", "--kind",
                                "shift", "--out", str(tmp_path / "o.json")])
    assert shift.exit_code == 2 and "--kind shift searches a rectified flow's time shift" in shift.output
    imported = runner.invoke(app, ["policy", "import", "--sigmas", "[14.6, 1.0, 0.1, 0]", "--runtime", "comfyui-flow",
                                   "--model", str(tiny_checkpoint), "--out", str(tmp_path / "p.json")])
    assert imported.exit_code == 2 and "runtime comfyui-flow is for rectified-flow models" in imported.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_shipped_flow_models_shift_export_runs_in_flow_match_euler_as_measured():
    """The shipped flow model (issue 31's done-when, on the real network, not a Gaussian stand-in): a shift-3 Euler
    policy's diffusers recipe, run by FlowMatchEulerDiscreteScheduler from our x_T, gives our samples to 1e-3 at the
    same NFE."""
    pytest.importorskip("diffusers")
    from stepdrop_search.diffusion.runtimes import RUNTIMES
    from stepdrop_search.generation import generate
    from stepdrop_search.interop import diffusers_recipe, diffusers_recipe_sample
    from stepdrop_search.loading import load_model
    from stepdrop_search.policies import PolicyDocument
    from stepdrop_search.policies.kinds import Shift

    loaded = load_model("flow")
    document = PolicyDocument(Shift(nfe=10, shift=3.0, schedule=loaded.schedule), SolverSpec("ddim"),
                              runtime=RUNTIMES["diffusers-flow"])
    with torch.no_grad():
        ours = generate(loaded.model, loaded.schedule, document.policy, document.solver, n=8, seed=2,
                        runtime=document.runtime)
        theirs = diffusers_recipe_sample(loaded, diffusers_recipe(document), n=8, seed=2)
    assert (theirs.x0 - ours.x0).abs().max() < 1e-3 and theirs.nfe.tolist() == ours.nfe.tolist() == [10] * 8
