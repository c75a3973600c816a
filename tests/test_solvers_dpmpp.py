"""DPM-Solver++(3M) and DPM-Solver++(2M) SDE: equal to their references, per-sample history, η defaults, CLI NFE."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from stepdrop_search import interop
from stepdrop_search.cli import app
from stepdrop_search.diffusion.sampler import SampleStreams
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.generation import generate, initial_noise
from stepdrop_search.loading import load_model
from stepdrop_search.policies import PolicyDocument, save_policy
from stepdrop_search.policies.kinds import Adaptive, Explicit, StepDrop, Uniform
from stepdrop_search.policies.resolve import resolve_policy

runner = CliRunner()
UNEVEN = (999, 930, 810, 640, 455, 300, 170, 75, 20)
EVEN = tuple(range(999, 0, -111))


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_model(tiny_checkpoint)


class NearGaussianEps(torch.nn.Module):
    """ε(x, t) = σ_t x + ε_net(x, t)/10: the exact ε of N(0, I) data plus a small network term.

    A barely trained or random network alone drives unclamped samples to hundreds, where float32 rounding is
    already ~1e-4; this one keeps them O(1), so 1e-4 is a tight bound, and its network term keeps x̂0 moving
    along the path, so the solver orders still give different samples."""

    def __init__(self, net: torch.nn.Module, sigmas: torch.Tensor) -> None:
        super().__init__()
        self.net, self.config = net, net.config
        self.register_buffer("sigmas", sigmas.float())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.sigmas[t.long()].view(-1, 1, 1, 1) * x + self.net(x, t) / 10


class OneByOne(torch.nn.Module):
    """The network evaluated one sample at a time: batched convolutions round differently at each batch size
    (~5e-6 here, which a third-order extrapolation amplifies), so only this way can batch-invariance be exact."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.config = net, net.config

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(x[i:i + 1], t[i:i + 1]) for i in range(x.shape[0])])


@pytest.fixture(scope="module")
def smooth(tiny):
    return dataclasses.replace(tiny, model=NearGaussianEps(tiny.model, (1 - tiny.schedule.alphas_cumprod).sqrt()))


def image_shape(loaded) -> tuple[int, int, int]:
    cfg = loaded.model.config
    return cfg.in_channels, cfg.image_size, cfg.image_size


def diffusers_multistep(loaded, order: int, steps: tuple[int, ...], monkeypatch) -> torch.Tensor:
    """diffusers' DPMSolverMultistepScheduler of ``order`` (dpmsolver++, full order up to the last step, which goes
    to σ = 0 in first order) sampled through our diffusers adapter, from the x_T our sampler uses for seed 5."""
    pytest.importorskip("diffusers")
    make = interop.make_scheduler

    def make_of_order(name, model):
        base = make(name, model)
        return type(base).from_config(base.config, solver_order=order, algorithm_type="dpmsolver++",
                                      lower_order_final=False, final_sigmas_type="zero")

    monkeypatch.setattr(interop, "make_scheduler", make_of_order)
    return interop.diffusers_sample(loaded, "dpm-solver-multistep", n=4, seed=5, clamp=False, timesteps=list(steps)).x0


@pytest.mark.parametrize("steps", [UNEVEN, EVEN], ids=["uneven", "even"])
@pytest.mark.parametrize("order, solver", [(2, "dpmpp-2m"), (3, "dpmpp-3m")])
def test_dpmpp_multistep_equals_diffusers_dpm_solver_multistep_of_its_order(smooth, steps, order, solver, monkeypatch):
    theirs = diffusers_multistep(smooth, order, steps, monkeypatch)
    policy = Explicit(steps=steps, schedule=smooth.schedule)
    ours = generate(smooth.model, smooth.schedule, policy, SolverSpec(solver), n=4, seed=5).x0
    assert (ours - theirs).abs().max() <= 1e-4
    other = generate(smooth.model, smooth.schedule, policy, SolverSpec("dpmpp-3m" if order == 2 else "dpmpp-2m"), n=4, seed=5).x0
    assert (other - theirs).abs().max() > 1e-3  # the reference tells the orders apart


def k_diffusion_dpmpp_2m_sde(denoise, x, sigmas, noises, eta: float) -> torch.Tensor:
    """k-diffusion's ``sample_dpmpp_2m_sde`` (solver_type "midpoint", s_noise 1) in its own variables: x̃ = x/α,
    σ̃ = σ/α, D = denoiser output; ``noises[i]`` stands for ``noise_sampler(sigmas[i], sigmas[i + 1])``."""
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, i)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noises[i] * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt()
        old_denoised = denoised
        h_last = h
    return x


@pytest.mark.parametrize("steps", [UNEVEN, EVEN], ids=["uneven", "even"])
@pytest.mark.parametrize("eta", [None, 0.5], ids=["default-eta", "eta-0.5"])
def test_dpmpp_2m_sde_equals_k_diffusion_fed_the_same_noise(smooth, steps, eta):
    n, seed = 4, 7
    spec = SolverSpec("dpmpp-2m-sde", eta)
    ours = generate(smooth.model, smooth.schedule, Explicit(steps=steps, schedule=smooth.schedule), spec, n=n, seed=seed).x0
    # the solver noise the run drew: grid step i of the "noise" streams of samples 0..n−1 of the seed
    blocks = SampleStreams(seed, range(n)).noise(image_shape(smooth), len(steps), torch.device("cpu"), torch.float32)
    noises = [blocks.at(i).double() for i in range(len(steps))]
    abar = smooth.schedule.alphas_cumprod.double()[list(steps)]
    sigmas = torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1, dtype=torch.float64)])

    def denoise(x_tilde, i):  # k-diffusion's DiscreteEpsDDPMDenoiser at σ̃_i: c_in = 1/√(σ̃² + 1), c_out = −σ̃
        eps = smooth.model((x_tilde / (sigmas[i] ** 2 + 1).sqrt()).float(), torch.full((n,), steps[i])).double()
        return x_tilde - sigmas[i] * eps

    with torch.no_grad():
        x_tilde = initial_noise(n, image_shape(smooth), seed).double() / abar[0].sqrt()
        theirs = k_diffusion_dpmpp_2m_sde(denoise, x_tilde, sigmas, noises, spec.eta)
    assert spec.eta == (1.0 if eta is None else eta)
    assert (ours.double() - theirs).abs().max() <= 1e-4


@pytest.mark.parametrize("policy", [Uniform(nfe=8), StepDrop(nfe=6, base_steps=12)], ids=["uniform", "stepdrop"])
def test_dpmpp_2m_sde_with_eta_zero_is_exactly_dpmpp_2m(tiny, policy):
    runs = [generate(tiny.model, tiny.schedule, policy, spec, n=5, seed=3).x0
            for spec in (SolverSpec("dpmpp-2m-sde", 0.0), SolverSpec("dpmpp-2m"))]
    assert torch.equal(runs[0], runs[1])
    noisy = generate(tiny.model, tiny.schedule, policy, SolverSpec("dpmpp-2m-sde"), n=5, seed=3).x0
    assert not torch.allclose(noisy, runs[1], atol=1e-2)


def test_dpmpp_2m_sde_without_an_eta_is_the_sde_everywhere_a_solver_is_named(tiny, tiny_checkpoint, tmp_path):
    """k-diffusion's default η = 1; η = 0 (the deterministic 2M) only when asked for. Other solvers keep theirs."""
    assert SolverSpec("dpmpp-2m-sde").eta == 1.0
    assert SolverSpec("ddim").eta == SolverSpec("dpmpp-2m").eta == SolverSpec("dpmpp-3m").eta == 0.0
    shown = [runner.invoke(app, ["policy", "show", "uniform", "--nfe", "4", "--solver", "dpmpp-2m-sde", "--model",
                                 str(tiny_checkpoint), *extra]) for extra in ([], ["--eta", "0"])]
    assert [json.loads(r.output)["solver"]["eta"] for r in shown] == [1.0, 0.0], [r.output for r in shown]
    policy = Uniform(nfe=4, schedule=tiny.schedule)
    path = save_policy(tmp_path / "p.json", PolicyDocument(policy, SolverSpec("dpmpp-2m-sde", 0.0)))
    assert resolve_policy(str(path), None, None, "dpmpp-2m-sde", None, tiny).solver == SolverSpec("dpmpp-2m-sde", 0.0)
    assert resolve_policy(str(path), None, None, None, 0.3, tiny).solver == SolverSpec("dpmpp-2m-sde", 0.3)
    doc = json.loads(path.read_text())
    del doc["solver"]["eta"]
    (tmp_path / "no-eta.json").write_text(json.dumps(doc))
    assert resolve_policy(str(tmp_path / "no-eta.json"), None, None, None, None, tiny).solver.eta == 1.0


def test_a_search_with_dpmpp_2m_sde_keeps_its_default_eta_or_searches_it():
    import optuna

    from stepdrop_search.search.space import suggest_document

    schedule = NoiseSchedule()
    trial = optuna.trial.FixedTrial({"spacing": "trailing", "eta": 0.25})
    fixed, searched = (suggest_document(trial, "uniform", 6, schedule, solver=SolverSpec("dpmpp-2m-sde"), search_eta=search)
                       for search in (False, True))
    assert (fixed.solver.eta, searched.solver.eta) == (1.0, 0.25)


@pytest.mark.parametrize("solver", ["dpmpp-3m", "dpmpp-2m-sde"])
@pytest.mark.parametrize("policy", [StepDrop(nfe=6, base_steps=12), Adaptive(base_steps=12, p0=0.1)], ids=["stepdrop", "adaptive"])
def test_a_sample_comes_out_the_same_at_any_batch_size(tiny, policy, solver):
    model = OneByOne(tiny.model)
    runs = [generate(model, tiny.schedule, policy, SolverSpec(solver), n=5, seed=11, batch_size=b) for b in (1, 3, 5)]
    for run in runs[1:]:
        assert torch.equal(run.evaluated, runs[0].evaluated)
        assert torch.allclose(run.x0, runs[0].x0, atol=1e-6, rtol=0)
    assert len(set(runs[0].nfe.tolist())) > 1  # samples take different paths, so histories differ per sample


def test_a_stepdrop_sample_takes_the_dpmpp_3m_path_of_its_own_evaluated_steps(smooth):
    """Per-sample history: a sample that skips grid steps warms up and extrapolates from its own evaluations only.
    (Within 1e-4, not exactly: the dense run multiplies float32 states by 0-dim coefficients in float32, the
    per-sample run by (n, 1, 1, 1) float64 ones, and the early x̂0 are large; a history mix-up moves samples by ≫ 1e-3.)"""
    model, policy = OneByOne(smooth.model), StepDrop(nfe=7, base_steps=14, schedule=smooth.schedule)
    run = generate(model, smooth.schedule, policy, SolverSpec("dpmpp-3m"), n=4, seed=2)
    assert len({tuple(row) for row in run.evaluated.tolist()}) > 1
    x_T = initial_noise(4, image_shape(smooth), 2)
    for b in range(4):
        own = Explicit(steps=tuple(int(t) for t in run.grid[run.evaluated[b]]), schedule=smooth.schedule)
        alone = generate(model, smooth.schedule, own, SolverSpec("dpmpp-3m"), n=1, x_T=x_T[b:b + 1])
        assert torch.allclose(alone.x0[0], run.x0[b], atol=1e-4, rtol=0)


@pytest.mark.parametrize("solver", ["dpmpp-3m", "dpmpp-2m-sde"])
def test_cli_sample_prints_the_measured_nfe(tiny_checkpoint, tmp_path, solver):
    result = runner.invoke(app, ["sample", "--model", str(tiny_checkpoint), "--policy", "uniform", "--nfe", "10",
                                 "--solver", solver, "--n", "16", "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 0, result.output
    assert f"solver {solver}, runtime stepdrop, measured NFE 10.00 (min 10, max 10;" in result.output
