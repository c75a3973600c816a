"""Exports run through the real clients, sample for sample: k-diffusion 0.1.1.post1's samplers (and, through them,
ComfyUI's and A1111's conventions) and diffusers' schedulers, from the same x_T, against our sampler under the
export's runtime. Tolerances are absolute, on the shipped (trained) model: float64 ≤ 1e-6; float32 ≤ 1e-3 ·
max(1, max|x|). NFE must be equal."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stepdrop_search.cli import app
from stepdrop_search.diffusion.runtimes import RUNTIMES
from stepdrop_search.diffusion.solvers import SolverSpec, spec_for_nfe
from stepdrop_search.generation import generate
from stepdrop_search.kdiffusion import kdiffusion_sample
from stepdrop_search.loading import load_model
from stepdrop_search.policies import PolicyDocument
from stepdrop_search.policies.kinds import Explicit, Karras, Uniform
from stepdrop_search.policies.transfer import a1111_text, check_export, comfyui_text

runner = CliRunner()
N = 4


def shipped(dtype: torch.dtype = torch.float32):
    loaded = load_model(None)
    loaded.model.to(dtype)
    return loaded


def ours(loaded, doc: PolicyDocument, seed: int = 3):
    return generate(loaded.model, loaded.schedule, doc.policy, doc.solver, n=N, seed=seed, runtime=doc.runtime)


def assert_same_samples(a, b, dtype) -> None:
    assert a.nfe.tolist() == b.nfe.tolist()
    limit = 1e-6 if dtype == torch.float64 else 1e-3 * max(1.0, float(a.x0.abs().max()))
    assert float((a.x0.double() - b.x0.double()).abs().max()) <= limit


def document(loaded, solver: str, nfe: int, runtime: str, *, eta: float | None = None, continuous: bool = False):
    rt = RUNTIMES[runtime]
    spec, steps = spec_for_nfe(solver, nfe, eta, rt)
    policy = Karras(nfe=steps, continuous=True, schedule=loaded.schedule) if continuous else \
        Uniform(nfe=steps, schedule=loaded.schedule)
    return PolicyDocument(policy, spec, runtime=rt)


K_DIFFUSION_CASES = [("ddim", None), ("ddim", 0.5), ("ddpm", None), ("heun", None), ("dpmpp-2m", None),
                     ("dpmpp-2m-sde", None), ("dpmpp-2m-sde", 0.4)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("continuous", [False, True], ids=["integer-steps", "continuous-steps"])
@pytest.mark.parametrize(("solver", "eta"), K_DIFFUSION_CASES, ids=[f"{s}-eta{e}" for s, e in K_DIFFUSION_CASES])
def test_k_diffusion_reproduces_every_sigma_export_it_accepts(solver, eta, continuous, dtype):
    loaded = shipped(dtype)
    doc = document(loaded, solver, 7, "k-diffusion", eta=eta, continuous=continuous)
    assert check_export(doc, "sigmas", "test").name == "k-diffusion"
    assert_same_samples(ours(loaded, doc), kdiffusion_sample(loaded, doc, n=N, seed=3), dtype)


def test_the_default_runtime_is_k_diffusion_for_every_sampler_k_diffusion_has():
    """The default runtime's numbers are k-diffusion's: the same conventions, so a default export is accepted."""
    loaded = shipped()
    for solver in ("ddim", "heun", "dpmpp-2m", "dpmpp-2m-sde"):
        doc = document(loaded, solver, 10, "stepdrop")
        check_export(doc, "sigmas", "test")
        assert_same_samples(ours(loaded, doc), kdiffusion_sample(loaded, doc, n=N, seed=3), torch.float32)


@pytest.mark.parametrize("client", ["k-diffusion", "diffusers"])
def test_clients_sample_a_class_conditional_models_classes_as_ours_does(client):
    """An unguided export of a class-conditional model: the client's network call gets sample i's class (i mod K), the
    class our sampler draws, so the export reproduces our samples (the null class would change every image) — across
    batches too (3 samples a batch: the second starts at sample 3)."""
    loaded = load_model("conditional")
    doc = document(loaded, "dpmpp-2m", 10, "stepdrop" if client == "k-diffusion" else "diffusers")
    if client == "k-diffusion":
        check_export(doc, "sigmas", "test")
        theirs = kdiffusion_sample(loaded, doc, n=N, seed=3, batch_size=3)
    else:
        pytest.importorskip("diffusers")
        from stepdrop_search.interop import diffusers_recipe, diffusers_recipe_sample

        check_export(doc, "diffusers", "test")
        theirs = diffusers_recipe_sample(loaded, diffusers_recipe(doc), n=N, seed=3, batch_size=3)
    assert_same_samples(ours(loaded, doc), theirs, torch.float32)


def comfyui_manual_sigmas(text: str) -> torch.Tensor:
    """What ComfyUI's core ManualSigmas node makes of its text (comfy_extras/nodes_custom_sampler.py): the numbers its
    regex finds, as a float32 tensor."""
    return torch.FloatTensor([float(v) for v in re.findall(r"[-+]?(?:\d*\.*\d+)", text)])


@pytest.mark.parametrize("solver", ["ddim", "heun", "dpmpp-2m"])
@pytest.mark.parametrize("steps", ["integer", "continuous", "below-sigma-max"])
def test_comfyui_conventions_reproduce_the_comfyui_export(solver, steps):
    """ComfyUI through k-diffusion: the SIGMAS text parsed as its ManualSigmas does, the network fed the nearest step,
    the start noise·√(1 + σ₀²) at σ_max and noise·σ₀ below it."""
    loaded = shipped()
    rt = RUNTIMES["comfyui"]
    spec, n_steps = spec_for_nfe(solver, 9, None, rt)
    policy = {"integer": Uniform(nfe=n_steps, schedule=loaded.schedule),
              "continuous": Karras(nfe=n_steps, continuous=True, schedule=loaded.schedule),
              "below-sigma-max": Explicit(steps=tuple(np.linspace(700, 20, n_steps).round(2).tolist()),
                                          schedule=loaded.schedule)}[steps]
    doc = PolicyDocument(policy, spec, runtime=rt)
    check_export(doc, "comfyui", "test")
    sigmas = comfyui_manual_sigmas(comfyui_text(policy))
    assert sigmas[-1] == 0 and len(sigmas) == len(policy.timesteps()) + 1
    assert_same_samples(ours(loaded, doc), kdiffusion_sample(loaded, doc, n=N, seed=3, sigmas=sigmas), torch.float32)


@pytest.mark.parametrize("solver", ["ddim", "heun", "dpmpp-2m"])
def test_a1111_conventions_reproduce_the_a1111_export(solver):
    """A1111/Forge through k-diffusion: the "[…]" list, real t, start noise·σ₀ (which below σ_max differs from ours)."""
    loaded = shipped()
    rt = RUNTIMES["a1111"]
    spec, n_steps = spec_for_nfe(solver, 9, None, rt)
    policy = Explicit(steps=tuple(np.linspace(600, 10.5, n_steps).tolist()), schedule=loaded.schedule)
    doc = PolicyDocument(policy, spec, runtime=rt)
    check_export(doc, "a1111", "test")
    sigmas = torch.tensor([float(v) for v in a1111_text(policy).strip("[]").split(",")], dtype=torch.float32)
    assert_same_samples(ours(loaded, doc), kdiffusion_sample(loaded, doc, n=N, seed=3, sigmas=sigmas), torch.float32)
    # and the start matters: the same list measured from our exact start is refused for A1111
    with pytest.raises(Exception, match="starts from noise"):
        check_export(PolicyDocument(policy, spec, runtime=RUNTIMES["stepdrop"]), "a1111", "test")


DIFFUSERS_CASES = [("ddim", False), ("ddim", True), ("heun", False), ("dpmpp-2m", False), ("dpmpp-3m", False),
                   ("dpmpp-2m-sde", False)]


@pytest.mark.parametrize(("solver", "continuous"), DIFFUSERS_CASES, ids=[f"{s}-{'continuous' if c else 'integer'}"
                                                                         for s, c in DIFFUSERS_CASES])
def test_diffusers_reproduces_every_scheduler_export_it_accepts(solver, continuous):
    pytest.importorskip("diffusers")
    from stepdrop_search.interop import diffusers_recipe, diffusers_recipe_sample

    loaded = shipped()
    doc = document(loaded, solver, 9, "diffusers", continuous=continuous)
    check_export(doc, "diffusers", "test")
    recipe = diffusers_recipe(doc)
    theirs = diffusers_recipe_sample(loaded, recipe, n=N, seed=3)
    assert_same_samples(ours(loaded, doc), theirs, torch.float32)


def test_sample_heun_nfe_10_exported_as_sigmas_is_k_diffusions_sample_heun(tmp_path):
    """README's promise: the default `sample --solver heun --nfe 10` and its σ export are the same sampler in k-diffusion:
    same samples and NFE (9: five intervals, the last uncorrected; a budget is a ceiling)."""
    result = runner.invoke(app, ["sample", "--policy", "uniform", "--nfe", "10", "--solver", "heun", "--n", str(N), "--seed",
                                 "5", "--out", str(tmp_path / "g.png"), "--save-samples", str(tmp_path / "s.npz")])
    assert result.exit_code == 0, result.output
    exported = runner.invoke(app, ["policy", "export", "uniform", "--nfe", "10", "--solver", "heun", "--format", "sigmas"])
    assert exported.exit_code == 0, exported.output
    assert "sample_heun" in exported.output and "(1 + sigmas[0] ** 2) ** 0.5" in exported.output
    sigmas = torch.tensor([float(v) for v in exported.output.splitlines()[0].split("=", 1)[1].strip(" []").split(",")])
    loaded = shipped()
    doc = PolicyDocument(Uniform(nfe=5, schedule=loaded.schedule), SolverSpec("heun"))
    theirs = kdiffusion_sample(loaded, doc, n=N, seed=5, sigmas=sigmas)
    saved = np.load(tmp_path / "s.npz")
    assert saved["nfe"].tolist() == theirs.nfe.tolist() == [9] * N
    assert np.abs(saved["samples"] - theirs.x0.clamp(-1, 1).numpy()).max() <= 1e-3 * max(1.0, float(theirs.x0.abs().max()))
