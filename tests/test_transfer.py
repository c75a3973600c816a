"""Schedules that travel: every export format round-trips, published lists import and sample, resampling moves a
schedule to another NFE, and diffusers' Euler steps our σ export (every client, sample for sample:
``test_export_clients.py``)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from stepdrop_search.cli import app
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.errors import UserError
from stepdrop_search.generation import generate
from stepdrop_search.loading import load_model
from stepdrop_search.policies import load_policy
from stepdrop_search.policies.kinds import Explicit, Karras, Uniform
from stepdrop_search.policies.transfer import from_sigmas, parse_numbers, resample

runner = CliRunner()
SCHEDULE = NoiseSchedule()
#: AYS for SD1.5 (Sabour et al., 10 steps on T = 1000), timesteps and σ as published
AYS_SD15_TIMESTEPS = "[999, 850, 736, 645, 545, 455, 343, 233, 124, 24]"
AYS_SD15_SIGMAS = "[14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]"
#: as ComfyUI's AYS node runs it: the last value (the end, σ_min) replaced by 0, so 10 evaluations
AYS_SD15_COMFYUI = AYS_SD15_SIGMAS.replace("0.029]", "0]")


@pytest.mark.parametrize("policy", [Uniform(nfe=10), Karras(nfe=12, continuous=True),
                                    Explicit(steps=(999, 687.8, 485.4, 308.8, 124.3))])
@pytest.mark.parametrize("fmt", ["sigmas", "comfyui", "a1111"])
def test_every_sigma_format_round_trips_to_the_same_steps(policy, fmt, tmp_path):
    out = tmp_path / "schedule.txt"
    exported = runner.invoke(app, ["policy", "export", "explicit", "--param", f"steps={json.dumps(policy.timesteps().tolist())}",
                                   "--format", fmt, "--runtime", {"sigmas": "k-diffusion"}.get(fmt, fmt), "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    text = json.dumps(json.loads(out.read_text())["sigmas"]) if fmt == "sigmas" else out.read_text().strip()
    assert "e-" not in text and "e+" not in text  # positional: ComfyUI's ManualSigmas reads no exponents
    if fmt == "a1111":
        assert text.startswith("[") and text.endswith(", 0]")
    if fmt == "comfyui":
        assert not text.startswith("[") and text.endswith(", 0")
    back = from_sigmas(parse_numbers(text, "--sigmas"), SCHEDULE).timesteps()
    assert torch.allclose(back.double(), policy.timesteps().double(), atol=1e-6)


def test_published_ays_lists_import_for_our_model_and_sample(tiny_checkpoint, tmp_path):
    loaded = load_model(tiny_checkpoint)  # T = 1000, linear β: AYS's SD1.5 lists fit inside its σ range
    by_t, by_sigma = tmp_path / "ays-t.json", tmp_path / "ays-s.json"
    for flag, text, out in (("--timesteps", AYS_SD15_TIMESTEPS, by_t), ("--sigmas", AYS_SD15_COMFYUI, by_sigma)):
        result = runner.invoke(app, ["policy", "import", flag, text, "--out", str(out), "--solver", "dpmpp-2m",
                                     "--model", str(tiny_checkpoint)])
        assert result.exit_code == 0, result.output
    doc = load_policy(by_t, loaded.schedule)
    assert doc.policy.timesteps().tolist() == [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]
    assert doc.solver.name == "dpmpp-2m" and doc.provenance["imported"]["timesteps"] == AYS_SD15_TIMESTEPS
    steps = load_policy(by_sigma, loaded.schedule).policy.timesteps()
    assert len(steps) == 10 and steps.is_floating_point()  # σ → real t on this schedule
    assert torch.allclose(loaded.schedule.sigma_at(steps), torch.tensor(parse_numbers(AYS_SD15_COMFYUI, "")[:-1],
                                                                        dtype=torch.float64), rtol=1e-9)
    # the list as published ends at σ_min, not 0: every positive σ is an evaluation here, so it is 11 steps
    assert len(from_sigmas(parse_numbers(AYS_SD15_SIGMAS, ""), loaded.schedule).timesteps()) == 11
    sampled = runner.invoke(app, ["sample", "--policy", str(by_sigma), "--n", "4", "--model", str(tiny_checkpoint),
                                  "--out", str(tmp_path / "grid.png")])
    assert sampled.exit_code == 0 and "measured NFE 10.00" in sampled.output, sampled.output


def test_timesteps_published_for_another_T_are_rescaled_onto_the_models(tmp_path):
    result = runner.invoke(app, ["policy", "import", "--timesteps", "999, 500, 0", "--source-t", "1000", "--out",
                                 str(tmp_path / "p.json")])
    # the shipped model has T = 1000: no change; a 10-step source maps 9 → 999
    assert result.exit_code == 0 and "[999.0, 500.0, 0.0]" in result.output, result.output
    rescaled = runner.invoke(app, ["policy", "import", "--timesteps", "9 4 0", "--source-t", "10", "--out",
                                   str(tmp_path / "q.json")])
    assert rescaled.exit_code == 0 and "[999.0, 444.0, 0.0]" in rescaled.output, rescaled.output


@pytest.mark.parametrize("args,message", [
    (["--sigmas", "14.6, seven, 0"], "'seven' is not a number"),
    (["--sigmas", "[1, 2, 0]"], "strictly decreasing"),
    (["--sigmas", "1e6, 1, 0"], "outside this noise schedule's range"),
    (["--timesteps", "999, 1200"], "outside"),
    ([], "exactly one of --sigmas or --timesteps"),
    (["--sigmas", "3, 1, 0", "--source-t", "10"], "--source-t rescales --timesteps"),
])
def test_a_bad_published_list_is_one_line_and_writes_nothing(args, message, tmp_path):
    out = tmp_path / "p.json"
    result = runner.invoke(app, ["policy", "import", *args, "--out", str(out)])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and not out.exists()


def test_resampling_keeps_the_ends_and_interpolates_log_sigma_evenly():
    policy = Explicit(steps=(999, 687.8, 485.4, 308.8, 124.3), schedule=SCHEDULE)
    moved = resample(policy, 9)
    sigma, moved_sigma = policy.to_sigmas()[:-1].log(), moved.to_sigmas()[:-1].log()
    assert len(moved.timesteps()) == 9
    assert torch.allclose(moved_sigma[[0, -1]], sigma[[0, -1]], atol=1e-9)
    assert torch.allclose(moved_sigma[::2], sigma, atol=1e-9)  # 5 → 9 puts every old level on the new grid
    assert torch.allclose(resample(moved, 5).timesteps(), policy.timesteps().double(), atol=1e-6)
    with pytest.raises(UserError):
        resample(Explicit(steps=(999,), schedule=SCHEDULE), 4)


def test_cli_resample_keeps_the_solver_and_spends_the_new_nfe(tiny_checkpoint, tmp_path):
    src, dst = tmp_path / "heun5.json", tmp_path / "heun10.json"
    made = runner.invoke(app, ["policy", "export", "uniform", "--nfe", "5", "--solver", "heun", "--out", str(src),
                               "--model", str(tiny_checkpoint), "--runtime", "legacy"])
    assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["policy", "resample", str(src), "--nfe", "10", "--out", str(dst), "--model", str(tiny_checkpoint)])
    assert result.exit_code == 0, result.output
    doc = load_policy(dst, load_model(tiny_checkpoint).schedule)
    assert doc.solver.name == "heun" and doc.solver.solver.nfe(doc.policy.nfe) == 10 and doc.provenance["resampled_from"]["nfe"] == 3


def test_diffusers_euler_with_our_sigma_list_matches_our_ddim(tmp_path):
    pytest.importorskip("diffusers")
    from stepdrop_search.interop import diffusers_sample
    from tests.test_interop import save_tiny_pipeline

    loaded = load_model(f"diffusers:{save_tiny_pipeline(tmp_path, {'num_train_timesteps': 1000})}")
    policy = Explicit(steps=(999, 687.8, 485.4, 308.8, 124.3, 20.5), schedule=loaded.schedule)
    theirs = diffusers_sample(loaded, "euler", n=3, seed=2, sigmas=policy.to_sigmas().tolist(), clamp=False)
    ours = generate(loaded.model, loaded.schedule, policy, SolverSpec("ddim"), n=3, seed=2)
    assert theirs.nfe.tolist() == [6] * 3
    assert torch.allclose(ours.x0, theirs.x0, rtol=1e-4, atol=1e-4)
