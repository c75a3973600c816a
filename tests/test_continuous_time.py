"""Continuous time: real timesteps in policies and files (schema 2), σ lists in and out, and integer policies
sampling exactly as before."""

import json

import pytest
import torch
from typer.testing import CliRunner

from stepdrop_search.cli import app
from stepdrop_search.diffusion.sampler import Plan, sample
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.errors import UserError
from stepdrop_search.generation import generate, initial_noise
from stepdrop_search.loading import load_model
from stepdrop_search.policies import PolicyDocument, load_policy, save_policy
from stepdrop_search.policies.kinds import Explicit, Importance, Karras, LogSNR, Sigmas, SkippedStep, Uniform

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_model(tiny_checkpoint)


def is_whole(steps: torch.Tensor) -> bool:
    return bool((steps == steps.round()).all())


# ---- a continuous-time policy: JSON round trip and sampling ----

@pytest.mark.parametrize("solver", ["ddim", "dpmpp-2m", "ddpm"])
def test_a_continuous_karras_policy_round_trips_through_json_and_samples_with_its_nfe(solver, tiny, tmp_path):
    policy = Karras(nfe=10, continuous=True, schedule=tiny.schedule)
    steps = policy.timesteps()
    assert steps.dtype == torch.float64 and not is_whole(steps)
    path = save_policy(tmp_path / "karras.json", PolicyDocument(policy, SolverSpec(solver)))
    written = json.loads(path.read_text())
    assert written["schema"] == 3 and written["params"] == {"continuous": True, "rho": 7.0}
    assert any(t != int(t) for t in written["timesteps"])
    back = load_policy(path, tiny.schedule).policy
    assert back == policy and back.timesteps().dtype == torch.float64 and torch.equal(back.timesteps(), steps)
    ours = generate(tiny.model, tiny.schedule, back, SolverSpec(solver), n=3, seed=0)
    assert ours.nfe.tolist() == [10] * 3 and torch.isfinite(ours.x0).all()
    assert torch.equal(ours.grid, steps)  # the sampler ran on the real timesteps, not rounded ones
    rounded = generate(tiny.model, tiny.schedule, Karras(nfe=10, schedule=tiny.schedule), SolverSpec(solver), n=3, seed=0)
    assert not torch.equal(ours.x0, rounded.x0)


def test_continuous_karras_places_steps_between_the_last_integer_timesteps_and_samples_there(tiny):
    """At NFE 100 integer Karras must end 3, 2, 1, 0; in continuous time it ends near 1.86, 1.06, 0.53, 0."""
    continuous = Karras(nfe=100, continuous=True, schedule=tiny.schedule).timesteps()
    assert Karras(nfe=100, schedule=tiny.schedule).timesteps()[-4:].tolist() == [3, 2, 1, 0]
    assert 0 < continuous[-2] < 1 and continuous[-1] == 0 and continuous[0] == tiny.schedule.T - 1
    result = generate(tiny.model, tiny.schedule, Karras(nfe=100, continuous=True, schedule=tiny.schedule), SolverSpec("ddim"),
                      n=2, seed=1)
    assert result.nfe.tolist() == [100, 100] and torch.isfinite(result.x0).all()


def test_continuous_logsnr_steps_are_exactly_evenly_spaced_in_log_snr():
    schedule = NoiseSchedule()
    lam = schedule.log_snr_at(LogSNR(nfe=12, continuous=True).timesteps())
    gaps = lam[1:] - lam[:-1]
    assert torch.allclose(gaps, gaps.mean().expand_as(gaps), rtol=1e-9)
    integer_gaps = schedule.log_snr_at(LogSNR(nfe=12).timesteps()).diff()
    assert (integer_gaps - integer_gaps.mean()).abs().max() > 1e-3  # what snapping to integers costs


def test_explicit_takes_real_timesteps_and_whole_numbers_stay_integer_steps():
    real = Explicit(steps=(999, 412.5, 37.25, 0.5))
    assert real.timesteps().dtype == torch.float64 and real.timesteps().tolist() == [999, 412.5, 37.25, 0.5]
    whole = Explicit(steps=(999.0, 500.0, 0.0))
    assert whole.timesteps().dtype == torch.long and whole.timesteps().tolist() == [999, 500, 0]
    for steps, message in (((999, 998.5, 998.7), "strictly decreasing"), ((999, 0.5, 0.5), "duplicate"),
                           ((999.5, 3), "outside"), ((999, -0.5), "outside"), ((999, float("nan")), "finite")):
        with pytest.raises(UserError, match=message):
            Explicit(steps=steps)


# ---- σ lists: k-diffusion's convention, in and out ----

def test_sigma_export_then_import_gives_back_the_same_schedule():
    schedule = NoiseSchedule("scaled_linear", 1000, 0.00085, 0.012)
    for policy in (Karras(nfe=10, continuous=True, schedule=schedule), LogSNR(nfe=20, continuous=True, schedule=schedule),
                   Uniform(nfe=10, schedule=schedule), Importance(nfe=25, schedule=schedule),
                   Explicit(steps=(999, 412.5, 37.25, 0.5), schedule=schedule)):
        sigmas = policy.to_sigmas()
        assert sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all()  # descending, k-diffusion's trailing 0
        assert torch.allclose(sigmas[:-1], schedule.sigma_at(policy.timesteps()), rtol=1e-12)
        back = Sigmas(sigmas=tuple(sigmas.tolist()), schedule=schedule)
        assert back.nfe == policy.nfe and back.timesteps().dtype == policy.timesteps().dtype
        if policy.timesteps().is_floating_point():
            assert torch.allclose(back.timesteps(), policy.timesteps(), rtol=0, atol=1e-9), policy
        else:  # an integer schedule comes back as the same integer steps: the discrete path, bit for bit
            assert torch.equal(back.timesteps(), policy.timesteps()), policy
        assert torch.allclose(back.to_sigmas(), sigmas, rtol=1e-9)


def test_integer_sigmas_of_the_schedule_are_its_sigma_table():
    schedule = NoiseSchedule("cosine")
    steps = SkippedStep(nfe=20, schedule=schedule).timesteps()
    assert torch.equal(SkippedStep(nfe=20, schedule=schedule).to_sigmas()[:-1], schedule.sigmas[steps])


def test_sigma_export_on_the_cli_prints_a_list_that_imports_back(tiny_checkpoint, tmp_path):
    out = tmp_path / "sigmas.json"
    exported = runner.invoke(app, ["policy", "export", "karras", "--nfe", "10", "--param", "continuous=true",
                                   "--format", "sigmas", "--out", str(out), "--model", str(tiny_checkpoint)])
    assert exported.exit_code == 0, exported.output
    printed = exported.output.splitlines()[0]
    assert printed.startswith("sigmas = [") and "e" not in printed.partition("=")[2]  # positional: ComfyUI reads no exponents
    listed = json.loads(printed.partition("=")[2])
    written = json.loads(out.read_text())
    schedule = load_model(tiny_checkpoint).schedule
    expected = Karras(nfe=10, continuous=True, schedule=schedule)
    assert listed == written["sigmas"] == expected.to_sigmas().tolist() and listed[-1] == 0
    assert written["timesteps"] == expected.timesteps().tolist() and written["noise_schedule_hash"] == schedule.hash

    policy_file = tmp_path / "from-sigmas.json"
    imported = runner.invoke(app, ["policy", "export", "sigmas", "--param", f"sigmas={json.dumps(listed)}",
                                   "--out", str(policy_file), "--model", str(tiny_checkpoint)])
    assert imported.exit_code == 0, imported.output
    back = load_policy(policy_file, schedule).policy
    assert back.nfe == 10 and torch.allclose(back.timesteps(), expected.timesteps(), rtol=0, atol=1e-9)
    sampled = runner.invoke(app, ["sample", "--policy", str(policy_file), "--model", str(tiny_checkpoint), "--n", "2",
                                  "--out", str(tmp_path / "g.png")])
    assert sampled.exit_code == 0 and "measured NFE 10.00" in sampled.output, sampled.output


@pytest.mark.parametrize("sigmas,message", [
    ("[]", "give a descending list of noise levels"),
    ("[0]", "give a descending list of noise levels"),
    ("[5, 10, 0]", "strictly decreasing"),
    ("[5, 0, 0]", "positive finite"),
    ("[5, -1]", "positive finite"),
    ("[500, 5, 0]", "outside this noise schedule's range"),
    ("[5, 0.001, 0]", "outside this noise schedule's range"),
    ('"5, 1"', "must be a list of numbers"),
])
def test_bad_sigma_lists_give_one_line_and_exit_2(sigmas, message, tiny_checkpoint, tmp_path):
    out = tmp_path / "p.json"
    result = runner.invoke(app, ["policy", "export", "sigmas", "--param", f"sigmas={sigmas}", "--model", str(tiny_checkpoint),
                                 "--out", str(out)])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and not out.exists()


def test_a_printed_sigma_list_rounded_just_past_the_ends_is_taken_as_the_ends():
    schedule = NoiseSchedule()
    hi, lo = float(schedule.sigmas[-1]), float(schedule.sigmas[0])
    steps = Sigmas(sigmas=(round(hi, 2) + 0.005, 10.0, round(lo, 4) - 0.000001, 0), schedule=schedule).timesteps()
    assert steps[0] == schedule.T - 1 and steps[-1] == 0 and steps.dtype == torch.float64


def test_stochastic_policies_cannot_be_exported_as_sigmas(tiny_checkpoint):
    result = runner.invoke(app, ["policy", "export", "stepdrop", "--nfe", "10", "--format", "sigmas",
                                 "--model", str(tiny_checkpoint)])
    assert result.exit_code == 2 and "draws its steps per sample" in result.output


def test_diffusers_export_of_real_timesteps_gives_the_sigma_call_and_says_why_integer_schedulers_cannot(tiny_checkpoint):
    real = runner.invoke(app, ["policy", "export", "karras", "--nfe", "10", "--param", "continuous=true",
                               "--format", "diffusers", "--model", str(tiny_checkpoint)])
    text = " ".join(real.output.split())
    assert real.exit_code == 0, real.output
    assert "EulerDiscreteScheduler.from_config(" in text and "scheduler.set_timesteps(sigmas=[" in text
    multistep = runner.invoke(app, ["policy", "export", "karras", "--nfe", "10", "--param", "continuous=true", "--solver",
                                    "dpmpp-2m", "--format", "diffusers", "--model", str(tiny_checkpoint)])
    assert multistep.exit_code == 2
    assert "takes integer timesteps only" in multistep.output and "continuous=false" in multistep.output
    integer = runner.invoke(app, ["policy", "export", "karras", "--nfe", "10", "--solver", "dpmpp-2m", "--format", "diffusers",
                                  "--model", str(tiny_checkpoint)])
    assert integer.exit_code == 0 and f"timesteps={Karras(nfe=10).timesteps().tolist()}" in integer.output


def test_diffusers_euler_reads_our_sigma_export_as_the_same_real_timesteps():
    """An independent check of the σ convention and the log-σ interpolation: diffusers' EulerDiscreteScheduler
    turns our exported σ list back into timesteps with its own ``_sigma_to_t`` (in float32)."""
    diffusers = pytest.importorskip("diffusers")
    from stepdrop_search.interop import scheduler_config_from_schedule

    schedule = NoiseSchedule("scaled_linear", 1000, 0.00085, 0.012)
    policy = Karras(nfe=12, continuous=True, schedule=schedule)
    scheduler = diffusers.EulerDiscreteScheduler.from_config(scheduler_config_from_schedule(schedule))
    scheduler.set_timesteps(sigmas=policy.to_sigmas().tolist())
    assert torch.allclose(scheduler.timesteps.double(), policy.timesteps(), rtol=0, atol=2e-3)
    assert torch.allclose(scheduler.sigmas.double(), policy.to_sigmas(), rtol=1e-5)


# ---- schema 2 files, schema 1 files ----

SCHEMA_1_KARRAS = {  # as the schema-1 code wrote `policy export karras --nfe 10` (no "continuous" parameter)
    "schema": 1, "kind": "karras", "params": {"rho": 7.0}, "nfe": 10, "expected_nfe": 10.0,
    "solver": {"name": "dpmpp-2m", "eta": 0.0},
    "noise_schedule": {"kind": "linear", "T": 1000, "beta_start": 0.0001, "beta_end": 0.02},
    "noise_schedule_hash": "b5309e6e4cb41c18",
    "timesteps": [999, 937, 864, 775, 663, 511, 301, 102, 18, 0],
    "provenance": {"model_hash": None, "command": "stepdrop-search policy export karras --nfe 10",
                   "date": "2026-11-20T10:00:00+00:00"},
}


def test_a_schema_1_file_loads_and_samples_as_its_integer_policy(tiny, tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps(SCHEMA_1_KARRAS, indent=2))
    document = load_policy(path, tiny.schedule)
    assert document.policy == Karras(nfe=10, schedule=tiny.schedule) and document.solver == SolverSpec("dpmpp-2m")
    assert document.policy.timesteps().dtype == torch.long
    assert document.policy.timesteps().tolist() == SCHEMA_1_KARRAS["timesteps"]
    explicit = tmp_path / "old-explicit.json"
    explicit.write_text(json.dumps(SCHEMA_1_KARRAS | {"kind": "explicit", "params": {}}))
    assert load_policy(explicit).policy.timesteps().tolist() == SCHEMA_1_KARRAS["timesteps"]
    # Rewritten (always as schema 2), it reloads to identical long timesteps and identical samples.
    rewritten = save_policy(tmp_path / "new.json", document)
    assert json.loads(rewritten.read_text())["schema"] == 3
    again = load_policy(rewritten, tiny.schedule).policy
    assert again.timesteps().dtype == torch.long and torch.equal(again.timesteps(), document.policy.timesteps())
    runs = [generate(tiny.model, tiny.schedule, p, SolverSpec("dpmpp-2m"), n=3, seed=2) for p in (document.policy, again)]
    assert torch.equal(runs[0].x0, runs[1].x0)


def test_a_file_edited_to_other_real_timesteps_no_longer_matches_its_parameters(tmp_path):
    doc = PolicyDocument(Karras(nfe=10, continuous=True)).to_dict()
    doc["timesteps"][3] += 1e-6
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="do not match the karras policy's parameters"):
        load_policy(path)


# ---- integer policies sample exactly as they always did ----

@pytest.mark.parametrize("solver", ["ddim", "dpmpp-2m"])
def test_integer_steps_as_whole_floats_agree_with_the_long_path(solver, tiny):
    """The float path of the schedule at whole t (ᾱ = sigmoid of the table's λ, the network given a float t) agrees
    with the integer path; whole numbers in policies never take it (they become long steps)."""
    steps = Uniform(nfe=10, schedule=tiny.schedule).timesteps()
    x = initial_noise(3, (1, 16, 16), 4)
    integer = sample(tiny.model, tiny.schedule, x, Plan(steps, (solver,) * 10), solver=SolverSpec(solver))
    real = sample(tiny.model, tiny.schedule, x, Plan(steps.double(), (solver,) * 10), solver=SolverSpec(solver))
    assert (integer.x0 - real.x0).abs().max() <= 1e-6
    from_floats = generate(tiny.model, tiny.schedule, Explicit(steps=tuple(map(float, steps.tolist())), schedule=tiny.schedule),
                           SolverSpec(solver), n=3, seed=4)
    from_ints = generate(tiny.model, tiny.schedule, Explicit(steps=tuple(steps.tolist()), schedule=tiny.schedule),
                         SolverSpec(solver), n=3, seed=4)
    assert from_floats.grid.dtype == torch.long and torch.equal(from_floats.x0, from_ints.x0)
    assert torch.equal(from_ints.x0, integer.x0)
