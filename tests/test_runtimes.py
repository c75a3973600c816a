"""Runtimes: named sampling conventions recorded with every policy, chosen with --runtime, and exports that refuse a
tool whose conventions would sample something else than was measured."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from stepdrop_search.cli import RUNTIME_NAMES, app
from stepdrop_search.diffusion.runtimes import RUNTIMES, runtime_named
from stepdrop_search.diffusion.solvers import SolverSpec, fixed_solvers, spec_for_nfe
from stepdrop_search.errors import UserError
from stepdrop_search.generation import generate
from stepdrop_search.loading import load_model
from stepdrop_search.policies import PolicyDocument, load_policy, save_policy
from stepdrop_search.policies.kinds import Explicit, Uniform
from stepdrop_search.policies.transfer import check_export

runner = CliRunner()


def test_help_names_every_runtime_and_a_bad_name_lists_them():
    assert RUNTIME_NAMES.split(", ") == list(RUNTIMES)
    with pytest.raises(UserError, match=r"unknown runtime 'comfy'; did you mean comfyui or comfyui-flow\? choose one of stepdrop, "):
        runtime_named("comfy")


@pytest.mark.parametrize("command", [["sample"], ["evaluate", "--samples", "2"], ["optimize"],
                                     ["policy", "export", "uniform", "--nfe", "5", "--format", "sigmas"]])
def test_every_command_takes_runtime_and_refuses_a_bad_name_in_one_line(command, tmp_path):
    result = runner.invoke(app, [*command, "--runtime", "comfy"])
    assert result.exit_code == 2
    assert "unknown runtime 'comfy'; did you mean comfyui or comfyui-flow? choose one of" in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_the_clamp_is_a_convention_of_its_runtime_only(tiny_checkpoint):
    loaded = load_model(tiny_checkpoint)
    policy = Uniform(nfe=4, schedule=loaded.schedule)
    free = generate(loaded.model, loaded.schedule, policy, SolverSpec("dpmpp-2m"), n=8, seed=1)
    clamped = generate(loaded.model, loaded.schedule, policy, SolverSpec("dpmpp-2m"), n=8, seed=1,
                       runtime=RUNTIMES["stepdrop-clamp"])
    assert free.x0.abs().max() > 1.5  # an untrained net's x̂0 leaves the data range…
    assert not torch.allclose(free.x0, clamped.x0)
    assert clamped.x0.abs().max() <= 1 + 1e-6  # …and the clamp keeps every x̂0 (the last one is the sample) inside it


def test_comfyui_feeds_the_nearest_step_and_starts_below_sigma_max_from_noise_times_sigma(tiny_checkpoint):
    loaded = load_model(tiny_checkpoint)
    seen = []

    class Spy(torch.nn.Module):
        config = loaded.model.config

        def forward(self, x, t):
            seen.append((t[0].item(), x.std().item()))
            return loaded.model(x, t)

    spy = Spy()
    spy.register_parameter("p", next(loaded.model.parameters()))
    policy = Explicit(steps=(600.4, 300.6, 10.2), schedule=loaded.schedule)
    generate(spy, loaded.schedule, policy, SolverSpec("ddim"), n=64, seed=0, runtime=RUNTIMES["comfyui"])
    assert [t for t, _ in seen] == [600.0, 301.0, 10.0]
    sigma = float((1 - loaded.schedule.alphas_cumprod_at(torch.tensor([600.4]))).sqrt())
    assert seen[0][1] == pytest.approx(sigma, rel=0.1)  # x = ε·√(1 − ᾱ), not ε
    seen.clear()
    generate(spy, loaded.schedule, policy, SolverSpec("ddim"), n=64, seed=0)
    assert [t for t, _ in seen] == [600.4, 300.6, 10.2] and seen[0][1] == pytest.approx(1.0, rel=0.1)


def test_a_policy_file_records_its_runtime_and_old_files_load_as_legacy(tiny_checkpoint, tmp_path):
    loaded = load_model(tiny_checkpoint)
    doc = PolicyDocument(Uniform(nfe=5, schedule=loaded.schedule), SolverSpec("dpmpp-2m"), runtime=RUNTIMES["comfyui"])
    path = save_policy(tmp_path / "p.json", doc)
    raw = json.loads(path.read_text())
    assert raw["schema"] == 3 and raw["runtime"]["name"] == "comfyui" and raw["runtime"]["network_time"] == "nearest"
    assert load_policy(path).runtime == RUNTIMES["comfyui"]
    old = {k: v for k, v in raw.items() if k != "runtime"} | {"schema": 2}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert load_policy(tmp_path / "old.json").runtime == RUNTIMES["legacy"]
    (tmp_path / "bad.json").write_text(json.dumps(raw | {"runtime": {"name": "comfy"}}))
    with pytest.raises(UserError, match="runtime must name one of stepdrop"):
        load_policy(tmp_path / "bad.json")


def test_a_runtime_without_the_solver_is_refused_before_sampling(tiny_checkpoint, tmp_path):
    result = runner.invoke(app, ["sample", "--model", str(tiny_checkpoint), "--solver", "unipc", "--runtime", "comfyui",
                                 "--nfe", "5", "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 2 and "runtime comfyui has no unipc solver" in result.output
    assert not (tmp_path / "g.png").exists()
    optimize = runner.invoke(app, ["optimize", "--model", str(tiny_checkpoint), "--solver", "ipndm", "--runtime", "k-diffusion"])
    assert optimize.exit_code == 2 and "runtime k-diffusion has no ipndm solver" in optimize.output


def test_optimize_searches_only_the_runtimes_solvers():
    from stepdrop_search.search.settings import OptimizeSettings

    assert set(OptimizeSettings.from_flags(runtime="comfyui").pool_solvers()) == {"ddim", "dpmpp-2m", "heun"}
    assert OptimizeSettings.from_flags().pool_solvers() == fixed_solvers() and "learned-3m" not in fixed_solvers()
    assert OptimizeSettings.from_flags(runtime="comfyui").study_name.endswith("-comfyui")
    assert OptimizeSettings.from_flags(runtime="comfyui").study_config("h")["runtime"] == "comfyui"


def export(*args):
    return runner.invoke(app, ["policy", "export", *args])


def test_an_export_measured_with_the_clamp_is_refused_with_the_difference_and_the_fix(tiny_checkpoint, tmp_path):
    model = ["--model", str(tiny_checkpoint)]
    save = export("uniform", "--nfe", "10", "--solver", "heun", "--runtime", "legacy", "--out", str(tmp_path / "h.json"), *model)
    assert save.exit_code == 0, save.output
    refused = export(str(tmp_path / "h.json"), "--format", "sigmas", *model)
    assert refused.exit_code == 2
    line = refused.output.strip()
    assert "\n" not in line.replace("error: ", "", 1).strip() or len(line.splitlines()) == 1
    assert "legacy clips x̂0 to [-1, 1] and k-diffusion does not" in refused.output
    assert "uncorrected" in refused.output and "sample_euler(model, x, sigmas[:2])" in refused.output
    assert "--runtime k-diffusion" in refused.output
    accepted = export(str(tmp_path / "h.json"), "--format", "sigmas", "--runtime", "k-diffusion", *model)
    assert accepted.exit_code == 0, accepted.output
    assert "sample_heun" in accepted.output and "11 network evaluations" in accepted.output  # 6 steps, every one corrected


@pytest.mark.parametrize(("args", "message"), [
    (["uniform", "--nfe", "8", "--solver", "unipc", "--format", "sigmas"], "k-diffusion has no unipc"),
    (["uniform", "--nfe", "8", "--solver", "dpmpp-3m", "--format", "comfyui"], "comfyui has no dpmpp-3m"),
    (["uniform", "--nfe", "8", "--solver", "ddpm", "--format", "diffusers"], "diffusers has no ddpm"),
    (["karras", "--nfe", "8", "--param", "continuous=true", "--format", "comfyui"], "feeds the network the nearest integer t"),
    (["explicit", "--param", "steps=[700, 400, 100]", "--format", "comfyui"], "comfyui starts from noise·σ₀"),
    (["karras", "--nfe", "8", "--param", "continuous=true", "--solver", "heun", "--format", "diffusers"], "integer timesteps only"),
    (["uniform", "--nfe", "8", "--runtime", "stepdrop-clamp", "--format", "diffusers"], "stepdrop-clamp clips x̂0"),
])
def test_exports_refuse_what_the_tool_would_sample_differently(tiny_checkpoint, tmp_path, args, message):
    result = export(*args, "--model", str(tiny_checkpoint), "--out", str(tmp_path / "x.txt"))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.txt").exists()


def test_every_text_export_names_the_sampler_and_the_nfe(tiny_checkpoint):
    model = ["--model", str(tiny_checkpoint)]
    comfy = export("uniform", "--nfe", "9", "--solver", "heun", "--format", "comfyui", *model)
    assert comfy.exit_code == 0 and "sampler_name: heun" in comfy.output and "9 network evaluations" in comfy.output
    a1111 = export("uniform", "--nfe", "9", "--solver", "dpmpp-2m", "--format", "a1111", *model)
    assert a1111.exit_code == 0 and "sampler: DPM++ 2M" in a1111.output
    diffusers = export("uniform", "--nfe", "9", "--solver", "dpmpp-3m", "--format", "diffusers", *model)
    assert diffusers.exit_code == 0, diffusers.output
    assert "DPMSolverMultistepScheduler.from_config" in diffusers.output and "'solver_order': 3" in diffusers.output


def test_a_file_run_under_another_runtime_drops_the_numbers_it_recorded(tiny_checkpoint):
    loaded = load_model(tiny_checkpoint)
    doc = PolicyDocument(Uniform(nfe=5, schedule=loaded.schedule), SolverSpec("ddim"), {"objective": {"fid": 1.0}},
                         RUNTIMES["legacy"])
    moved = doc.under(RUNTIMES["comfyui"])
    assert "objective" not in moved.provenance
    assert moved.provenance["measured_under"] == {"runtime": "legacy", "objective": {"fid": 1.0}}
    with pytest.raises(UserError, match="comfyui runs ddim at η = 0 only, this is η = 0.5"):
        check_export(PolicyDocument(doc.policy, SolverSpec("ddim", 0.5), runtime=RUNTIMES["comfyui"]), "comfyui", "x")


def test_evaluate_runs_every_row_under_its_runtime_and_says_so(tiny_checkpoint, tiny_features, tmp_path):
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_checkpoint), "--features", str(tiny_features),
                                 "--baselines", "heun,dpmpp-2m", "--nfe", "4", "--samples", "8", "--seeds", "1",
                                 "--metrics", "fid", "--runtime", "comfyui", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ev.json").read_text())
    assert report["meta"]["runtime"]["name"] == "comfyui"
    assert {r["policy"]["runtime"]["name"] for r in report["results"]} == {"comfyui"}
    heun = next(r for r in report["results"] if r["name"] == "heun-4")
    assert heun["summary"]["nfe"]["mean"] == 3  # two intervals, the last uncorrected: the budget is a ceiling


def test_spec_for_nfe_is_a_ceiling_in_the_runtimes_pattern():
    assert spec_for_nfe("heun", 10)[1] == 5 and spec_for_nfe("heun", 10, runtime="legacy")[1] == 6
    assert spec_for_nfe("heun", 2)[1] == 1  # one Euler step to x̂0: 1 evaluation


def test_runs_in_names_the_tools_that_reproduce_an_export_or_why_none_does():
    from stepdrop_search.policies.kinds import Karras
    from stepdrop_search.policies.transfer import runs_in

    everywhere = runs_in(PolicyDocument(Uniform(nfe=13), SolverSpec("heun")))
    assert all(f"--format {fmt}" in everywhere for fmt in ("sigmas", "comfyui", "a1111", "diffusers"))
    continuous = runs_in(PolicyDocument(Karras(nfe=8, continuous=True), SolverSpec("dpmpp-2m")))
    assert "--format sigmas" in continuous and "comfyui" not in continuous  # ComfyUI rounds t
    assert "project's sampler only" in runs_in(PolicyDocument(Uniform(nfe=8), SolverSpec("ipndm")))
    assert "clips x̂0" in runs_in(PolicyDocument(Uniform(nfe=8), SolverSpec("ddim"), runtime=RUNTIMES["legacy"]))


def test_a_fixed_eta_runtime_refuses_an_eta_search_and_a_stray_heun_budget_is_refused():
    from stepdrop_search.search.settings import OptimizeSettings

    with pytest.raises(UserError, match="runtime comfyui runs ddim at η = 0 only; drop --search-eta"):
        OptimizeSettings.from_flags(solver="ddim", search_eta=True, runtime="comfyui")
    from stepdrop_search.diffusion.sampler import sample

    spec, steps = spec_for_nfe("heun", 10, runtime="legacy")
    with pytest.raises(UserError, match="is the legacy runtime's pattern"):
        sample(torch.nn.Identity(), Uniform(nfe=steps).schedule, torch.zeros(1, 1, 4, 4), Uniform(nfe=steps).plan(1, solver="heun"),
               solver=spec)


def test_diffusers_is_not_promised_real_timesteps_its_schedulers_cannot_take():
    from stepdrop_search.policies.kinds import Karras
    from stepdrop_search.policies.transfer import export_problems, runs_in

    doc = PolicyDocument(Karras(nfe=6, continuous=True), SolverSpec("heun"), runtime=RUNTIMES["diffusers"])
    assert any("integer timesteps only" in p for p in export_problems(doc, RUNTIMES["diffusers"]))
    assert "--format diffusers" not in runs_in(doc)
    euler = PolicyDocument(Karras(nfe=6, continuous=True), SolverSpec("ddim"), runtime=RUNTIMES["diffusers"])
    assert not export_problems(euler, RUNTIMES["diffusers"])  # Euler takes the σ list


def test_studies_export_keeps_the_runtime_a_trial_was_scored_under(tmp_path):
    import optuna

    from stepdrop_search.search.studies import trial_document

    doc = PolicyDocument(Uniform(nfe=5), SolverSpec("dpmpp-2m"), runtime=RUNTIMES["comfyui"])
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    trial.set_user_attr("policy", doc.to_dict())
    study.tell(trial, 1.0)
    assert trial_document("s", "best", storage).runtime == RUNTIMES["comfyui"]
