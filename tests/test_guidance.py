"""Class-conditional models and classifier-free guidance as part of a policy (issue 32): the null class, training with
label dropout, guidance applied in a σ interval, NFE counted with the unconditional evaluation, the policy file."""

import json
import math

import pytest
import torch

from stepdrop_search.diffusion.guidance import Guidance, class_labels
from stepdrop_search.diffusion.sampler import sample
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.diffusion.solvers import SolverSpec, spec_for_nfe
from stepdrop_search.errors import UserError
from stepdrop_search.generation import generate, initial_noise
from stepdrop_search.loading import load_model
from stepdrop_search.model import UNet, preset_config
from stepdrop_search.policies import PolicyDocument, load_policy, save_policy
from stepdrop_search.policies.kinds import StepDrop, Uniform
from tests.conftest import tiny_config

SCHEDULE = NoiseSchedule(kind="linear", T=1000)


def conditional_net(classes: int = 3, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    net = UNet(preset_config("tiny", 1, 16, num_classes=classes)).eval()
    for p in net.parameters():  # a trained-looking net: the zero-initialised output layer would hide the classes
        p.data.normal_(0, 0.1)
    return net


@pytest.fixture(scope="module")
def conditional_checkpoint(tmp_path_factory):
    from stepdrop_search.train import train

    return train(tiny_config(tmp_path_factory.mktemp("cond-run"), conditional=True, steps=20))


def test_the_null_class_is_the_unconditional_prediction_and_classes_change_it():
    net, x, t = conditional_net(), torch.randn(4, 1, 16, 16), torch.tensor([10, 200, 500, 900])
    with torch.no_grad():
        assert torch.equal(net(x, t), net(x, t, torch.full((4,), net.null_class)))
        assert not torch.allclose(net(x, t, torch.zeros(4, dtype=torch.long)), net(x, t, torch.ones(4, dtype=torch.long)))


def test_an_unconditional_model_refuses_a_class():
    net = UNet(preset_config("tiny", 1, 16))
    with pytest.raises(UserError, match="unconditional"):
        net(torch.randn(1, 1, 16, 16), torch.tensor([5]), torch.tensor([0]))


def test_train_conditional_writes_a_model_with_the_data_sets_classes(conditional_checkpoint):
    loaded = load_model(conditional_checkpoint)
    assert loaded.config.num_classes == 3  # synthetic shapes: discs, squares, rings
    assert json.loads(json.dumps(torch.load(conditional_checkpoint, weights_only=True)["train_config"]))["conditional"]


def test_an_unconditional_model_fine_tuned_as_conditional_starts_from_its_predictions(tiny_checkpoint, tmp_path):
    from stepdrop_search.train import train

    run = train(tiny_config(tmp_path, conditional=True, init_from=str(tiny_checkpoint), steps=1, lr=1e-12))
    before, after = load_model(tiny_checkpoint).model, load_model(run).model
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([10, 400, 900])
    with torch.no_grad():
        for label in range(3):
            assert torch.allclose(after(x, t, torch.full((3,), label)), before(x, t), atol=1e-5)


def test_resuming_a_run_as_conditional_is_refused(tiny_checkpoint):
    from stepdrop_search.train import train

    with pytest.raises(UserError, match="conditional"):
        train(tiny_config(tiny_checkpoint.parent, conditional=True), resume=True)


def test_class_labels_are_balanced_paired_and_follow_requested_classes():
    assert class_labels(range(0, 7), 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert class_labels(range(5, 8), 3).tolist() == [2, 0, 1]  # sample i gets class i mod K, whatever the batch
    assert class_labels(range(0, 4), 10, (7,)).tolist() == [7, 7, 7, 7]
    with pytest.raises(UserError, match="not one of the model's classes 0..9"):
        class_labels(range(0, 4), 10, (10,))


def manual_guided_ddim(net, x, labels, steps, guidance):
    """DDIM with CFG written out step by step: the reference the sampler must equal."""
    abar = SCHEDULE.alphas_cumprod_at(steps).double()
    null = torch.full_like(labels, net.null_class)
    calls = 0
    for i, t in enumerate(steps):
        tt = t.expand(x.shape[0]).float()
        sigma = math.sqrt((1 - abar[i]) / abar[i])
        eps = net(x, tt, labels)
        calls += 1
        if guidance.scale != 1 and guidance.sigma_lo <= sigma <= guidance.sigma_hi:
            eps = net(x, tt, null) + guidance.scale * (eps - net(x, tt, null))
            calls += 1
        a_t = abar[i]
        x0 = (x - (1 - a_t).sqrt().float() * eps) / a_t.sqrt().float()
        if i + 1 == len(steps):
            return x0, calls
        a_s = abar[i + 1]
        x = a_s.sqrt().float() * x0 + (1 - a_s).sqrt().float() * eps


@pytest.mark.parametrize("guidance", [Guidance(), Guidance(2.5), Guidance(3.0, 0.5, 8.0)],
                         ids=["unguided", "constant", "interval"])
def test_guided_sampling_equals_cfg_written_out_and_counts_each_evaluation(guidance):
    net, policy = conditional_net(), Uniform(nfe=8, schedule=SCHEDULE)
    x, labels = torch.randn(5, 1, 16, 16), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        run = sample(net, SCHEDULE, x, policy.plan(5), labels=labels, guidance=guidance)
        expected, calls = manual_guided_ddim(net, x, labels, policy.timesteps(), guidance)
    torch.testing.assert_close(run.x0, expected, atol=1e-4, rtol=1e-4)
    assert run.nfe.tolist() == [calls] * 5
    sigmas = ((1 - SCHEDULE.alphas_cumprod_at(policy.timesteps())) / SCHEDULE.alphas_cumprod_at(policy.timesteps())).sqrt()
    inside = int(((sigmas >= guidance.sigma_lo) & (sigmas <= guidance.sigma_hi)).sum()) if guidance.scale != 1 else 0
    assert calls == 8 + inside and (guidance.constant or 0 < inside < 8)


def test_heuns_correction_is_guided_as_its_target_step_and_counted():
    net, x, labels = conditional_net(), torch.randn(3, 1, 16, 16), torch.tensor([0, 1, 2])
    spec, steps = spec_for_nfe("heun", 9)
    policy = Uniform(nfe=steps, schedule=SCHEDULE)
    with torch.no_grad():
        unguided = sample(net, SCHEDULE, x, policy.plan(3, None, "heun"), labels=labels, solver=spec)
        constant = sample(net, SCHEDULE, x, policy.plan(3, None, "heun"), labels=labels, solver=spec,
                          guidance=Guidance(2.0))
    assert unguided.nfe.tolist() == [9] * 3 and constant.nfe.tolist() == [18] * 3


def test_a_stochastic_policy_with_guidance_counts_per_sample_and_reproduces():
    model = conditional_net()
    policy = StepDrop(nfe=12, schedule=SCHEDULE)
    runs = [generate(model, SCHEDULE, policy, SolverSpec("ddim"), n=6, seed=3, batch_size=b, guidance=Guidance(2.0))
            for b in (6, 4)]
    torch.testing.assert_close(runs[0].x0, runs[1].x0, rtol=1e-4, atol=1e-3)  # batch size moves float rounding only
    assert torch.equal(runs[0].nfe, runs[1].nfe)
    evaluated = runs[0].evaluated.sum(1)
    assert torch.equal(runs[0].nfe, 2 * evaluated)  # constant guidance: two evaluations at every step taken


def test_generate_samples_class_i_mod_k_and_requested_classes():
    model = conditional_net()
    x_T = initial_noise(4, (1, 16, 16), 0)
    policy = Uniform(nfe=4, schedule=SCHEDULE)
    with torch.no_grad():
        default = generate(model, SCHEDULE, policy, SolverSpec(), n=4, seed=0)
        one = sample(model, SCHEDULE, x_T[1:2], policy.plan(1), labels=torch.tensor([1]))
        twos = generate(model, SCHEDULE, policy, SolverSpec(), n=4, seed=0, classes=(2,))
        two = sample(model, SCHEDULE, x_T[3:4], policy.plan(1), labels=torch.tensor([2]))
    torch.testing.assert_close(default.x0[1:2], one.x0)
    torch.testing.assert_close(twos.x0[3:4], two.x0)


def test_guidance_or_classes_on_an_unconditional_model_are_refused():
    net = UNet(preset_config("tiny", 1, 16))
    policy = Uniform(nfe=4, schedule=SCHEDULE)
    with pytest.raises(UserError, match="class-conditional"):
        generate(net, SCHEDULE, policy, SolverSpec(), n=2, guidance=Guidance(2.0))
    with pytest.raises(UserError, match="conditional"):
        generate(net, SCHEDULE, policy, SolverSpec(), n=2, classes=(1,))


def test_a_guided_policy_file_is_schema_4_and_round_trips(tmp_path):
    doc = PolicyDocument(Uniform(nfe=10, schedule=SCHEDULE), SolverSpec("dpmpp-2m"), guidance=Guidance(2.0, 0.3, 5.0))
    path = save_policy(tmp_path / "guided.json", doc)
    raw = json.loads(path.read_text())
    assert raw["schema"] == 4 and raw["guidance"] == {"scale": 2.0, "sigma_lo": 0.3, "sigma_hi": 5.0}
    assert load_policy(path).guidance == Guidance(2.0, 0.3, 5.0)
    plain = save_policy(tmp_path / "plain.json", PolicyDocument(Uniform(nfe=10, schedule=SCHEDULE)))
    assert json.loads(plain.read_text())["schema"] == 3 and "guidance" not in json.loads(plain.read_text())
    constant = save_policy(tmp_path / "constant.json", PolicyDocument(Uniform(nfe=10, schedule=SCHEDULE), guidance=Guidance(3.0)))
    assert json.loads(constant.read_text())["guidance"]["sigma_hi"] is None and load_policy(constant).guidance.constant


@pytest.mark.parametrize("edit, message", [
    ({"schema": 3}, "schema-4 field"),
    ({"guidance": {"scale": -1}}, "finite number ≥ 0"),
    ({"guidance": {"scale": 2, "sigma_lo": 5, "sigma_hi": 1}}, "σ_lo ≤ σ_hi"),
    ({"guidance": {"scale": "strong"}}, "must be numbers"),
    ({"guidance": {"weight": 2}}, "expected"),
])
def test_a_malformed_guidance_field_is_one_clear_error(tmp_path, edit, message):
    doc = PolicyDocument(Uniform(nfe=10, schedule=SCHEDULE), guidance=Guidance(2.0)).to_dict() | edit
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=message):
        load_policy(path)


def cli(*args):
    from typer.testing import CliRunner

    from stepdrop_search.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_sample_draws_a_requested_class_with_guidance_and_reports_the_cost(conditional_checkpoint, tmp_path):
    result = cli("sample", "--model", conditional_checkpoint, "--nfe", 6, "--guidance", "2:0.5:20", "--class", 1,
                 "--n", 4, "--out", tmp_path / "grid.png", "--save-samples", tmp_path / "x.npz")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "CFG 2 at σ ∈ [0.5, 20]" in text
    import numpy as np

    measured = np.load(tmp_path / "x.npz")["nfe"]
    assert 6 < measured.min() == measured.max() < 12  # some of the 6 steps are guided, not all
    assert f"expected {float(measured[0]):.2f}" in text  # the stand-in count is the sampler's


@pytest.mark.parametrize("args, message", [
    (["sample", "--guidance", "2"], "needs a class-conditional model"),
    (["sample", "--class", "3"], "--class needs a class-conditional model"),
    (["sample", "--guidance", "2:5:1"], "σ_lo ≤ σ_hi"),
    (["sample", "--guidance", "strong"], "must be numbers"),
    (["evaluate", "--baselines", "ddim", "--nfe", "4", "--samples", "8", "--seeds", "1", "--metrics", "accuracy"],
     "accuracy measure class-conditional samples"),
])
def test_guidance_and_classes_on_an_unconditional_model_fail_in_one_line(tiny_checkpoint, tmp_path, args, message):
    result = cli(*args, "--model", tiny_checkpoint, "--out", tmp_path / "out.png")
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_a_guided_baseline_that_no_grid_fits_fails_in_one_line(conditional_checkpoint, tmp_path):
    """Constant guidance doubles every step's cost: one evaluation buys no guided DDIM step."""
    result = cli("evaluate", "--model", conditional_checkpoint, "--baselines", "ddim", "--nfe", 1, "--guidance", 2,
                 "--samples", 8, "--seeds", 1, "--out", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert "solver ddim with CFG 2 at every step cannot run within 1 evaluations" in " ".join(result.output.split())
    assert not list(tmp_path.iterdir())


def test_a_guided_policy_is_not_exported_as_a_sigma_list(conditional_checkpoint, tmp_path):
    result = cli("policy", "export", "uniform", "--nfe", 6, "--model", conditional_checkpoint, "--guidance", 2,
                 "--format", "sigmas")
    assert result.exit_code == 2 and "sample it unguided" in " ".join(result.output.split()), result.output
    saved = cli("policy", "export", "uniform", "--nfe", 6, "--model", conditional_checkpoint, "--guidance", "2:0.1:9",
                "--out", tmp_path / "g.json")
    assert saved.exit_code == 0 and load_policy(tmp_path / "g.json").guidance == Guidance(2.0, 0.1, 9.0)


def test_evaluate_runs_each_row_per_guidance_with_accuracy_and_per_class_fid(conditional_checkpoint, tiny_features,
                                                                            tiny_judge, tmp_path):
    result = cli("evaluate", "--model", conditional_checkpoint, "--baselines", "ddim", "--nfe", 4, "--guidance",
                 "1,3,3:0.5:20", "--samples", 12, "--seeds", 2, "--metrics", "fid,accuracy,class-fid", "--features",
                 tiny_features, "--judge", tiny_judge, "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads((tmp_path / "r.json").read_text())["results"]}
    assert set(rows) == {"ddim-4-cfg1", "ddim-4-cfg3", "ddim-4-cfg3@0.5-20"}
    nfe = {name: row["summary"]["nfe"]["mean"] for name, row in rows.items()}
    assert nfe["ddim-4-cfg1"] == 4 and nfe["ddim-4-cfg3"] == 4 and nfe["ddim-4-cfg3@0.5-20"] <= 4  # the budget holds
    steps = {r["name"]: len(r["policy"]["timesteps"]) for r in rows.values()}
    assert steps["ddim-4-cfg1"] == 4 and steps["ddim-4-cfg3"] == 2 and 2 <= steps["ddim-4-cfg3@0.5-20"] <= 3
    seed = rows["ddim-4-cfg3"]["per_seed"][0]
    assert 0 <= seed["judge_accuracy"] <= 1 and {"judge_class_fid", "judge_class_fid_0", "class_fid"} <= set(seed)


def test_a_conditional_pool_holds_the_published_interval_on_the_most_steps_its_budget_buys():
    """The pool's guided rows (constant and the published σ interval) each spend at most their NFE, guided evaluations
    counted twice, on the largest grid that does; an interval row guides some steps but not all, and no row repeats."""
    import types

    from stepdrop_search.diffusion.runtimes import DEFAULT_RUNTIME
    from stepdrop_search.generation import document_nfe
    from stepdrop_search.search.guided import POOL_INTERVAL, POOL_INTERVAL_SCALES, step_sigmas
    from stepdrop_search.search.sources.analytic import AnalyticSchedules

    nfes = (8, 6)
    run = types.SimpleNamespace(
        loaded=types.SimpleNamespace(schedule=SCHEDULE), guided=True, runtime=DEFAULT_RUNTIME,
        grids=lambda: [(*spec_for_nfe(name, nfe), nfe) for nfe in nfes for name in ("ddim", "dpmpp-2m", "heun")],
        document=lambda policy, spec, guidance=None: PolicyDocument(policy, spec, guidance=guidance),
        row_name=lambda solver, schedule, nfe: f"{solver}/{schedule}@{nfe}")
    rows = AnalyticSchedules().candidates(run)
    assert len({r.name for r in rows}) == len(rows)
    interval = [r for r in rows if r.document.guidance is not None and not r.document.guidance.constant]
    assert {r.document.guidance for r in interval} == {Guidance(w, *POOL_INTERVAL) for w in POOL_INTERVAL_SCALES}
    for row in interval:
        doc = row.document
        spent = document_nfe(doc)
        assert spent <= row.nfe_budget
        guided = int(doc.guidance.active(step_sigmas(doc.policy)).sum())
        assert 0 < guided < len(doc.policy.timesteps())
        if doc.solver.name != "heun":  # one evaluation a step: one more step would overspend
            bigger = PolicyDocument(Uniform(nfe=len(doc.policy.timesteps()) + 1, schedule=SCHEDULE), doc.solver,
                                    guidance=doc.guidance)
            assert "uniform" not in row.name or document_nfe(bigger) > row.nfe_budget
    uniform = {r.name: r.document for r in interval if r.name.startswith("ddim/uniform+cfg3@")}
    constant = next(r.document for r in rows if r.name == "ddim/uniform+cfg3@8")
    assert len(uniform["ddim/uniform+cfg3@0.28-5.42@8"].policy.timesteps()) > len(constant.policy.timesteps()) == 4


@pytest.mark.slow
def test_optimize_on_a_conditional_model_searches_guidance_within_the_budget(conditional_checkpoint, tiny_features,
                                                                            tiny_judge, tmp_path):
    from stepdrop_search.search.optimize import optimize
    from stepdrop_search.search.settings import OptimizeSettings

    out = tmp_path / "best.json"
    cfg = OptimizeSettings.from_flags(nfe=6, method="optuna", model=str(conditional_checkpoint), features=str(tiny_features),
                                      judge=str(tiny_judge), trials=40, storage=f"sqlite:///{tmp_path}/s.db", out=str(out),
                                      save_pool=str(tmp_path / "pool"), samples=16, trial_samples=16, promote=3,
                                      promote_samples=16, held_out_samples=32, teacher="ddim-50", budget=0)
    optimize(cfg)
    pool = [load_policy(p) for p in (tmp_path / "pool").glob("*.json")]
    constant = [d for d in pool if d.guidance is not None and d.guidance.constant]
    assert {d.guidance.scale for d in constant} == {1.5, 2.0, 3.0, 4.0}
    interval = [d for d in pool if d.guidance is not None and not d.guidance.constant]  # its own files, not the constant's
    assert {(d.guidance.scale, d.guidance.sigma_lo, d.guidance.sigma_hi) for d in interval} == {(2.0, 0.28, 5.42),
                                                                                               (3.0, 0.28, 5.42)}
    ddim = [len(d.policy.timesteps()) for d in constant if d.solver.name == "ddim"]
    assert max(ddim) == 3 and all(2 * n <= 6 for n in ddim)  # 6 NFE buy 3 steps, every one guided (cheaper rows too)
    import optuna

    trials = optuna.load_study(study_name=cfg.study_name, storage=f"sqlite:///{tmp_path}/s.db").trials
    guided = [t for t in trials if t.params.get("guided_steps", 0) > 0 and "policy" in t.user_attrs]
    assert guided, "no trial guided any step"
    for t in guided:
        doc = PolicyDocument.from_dict(t.user_attrs["policy"])
        k = t.params["guided_steps"]
        assert len(doc.policy.timesteps()) == 6 - k and doc.guidance.scale == pytest.approx(t.params["guidance"])
        assert t.user_attrs["scores"]["nfe"] == 6  # counted by the sampler: every budget spent exactly
    best = load_policy(out)
    assert best.provenance["objective"]["held_out"]["nfe"] <= 6


@pytest.mark.parametrize("solver", ["dpmpp-2m", "dpmpp-3m"])
def test_a_class_conditional_diffusers_unet_loads_and_its_guided_recipe_reproduces_our_samples(tmp_path, solver):
    """Import and export against the real diffusers code path: a UNet2DModel with num_class_embeds = 4 (3 classes and
    the null class) samples a guided DPM-Solver++(2M or 3M, the solver of the conditional model's NFE-10 export) policy
    in our sampler and in the printed loop over diffusers' DPMSolverMultistepScheduler, from the same x_T, with the
    same labels and evaluations."""
    diffusers = pytest.importorskip("diffusers")
    from stepdrop_search.interop import diffusers_recipe, diffusers_recipe_sample

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4, num_class_embeds=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(tmp_path / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(tmp_path / "scheduler")
    loaded = load_model(tmp_path)
    assert loaded.config.num_classes == 3 and loaded.model.null_class == 3
    doc = PolicyDocument(Uniform(nfe=8, schedule=loaded.schedule), SolverSpec(solver), guidance=Guidance(2.5, 0.5, 10.0))
    recipe = diffusers_recipe(doc)
    assert 1.0 in recipe.guidance and 2.5 in recipe.guidance and "GUIDANCE = [" in recipe.code()
    with torch.no_grad():
        ours = generate(loaded.model, loaded.schedule, doc.policy, doc.solver, n=6, seed=1, guidance=doc.guidance)
        theirs = diffusers_recipe_sample(loaded, recipe, n=6, seed=1, batch_size=4)
    torch.testing.assert_close(theirs.x0, ours.x0, atol=1e-3, rtol=1e-3)
    assert theirs.nfe.tolist() == ours.nfe.tolist() == [8 + recipe.guidance.count(2.5)] * 6


def test_a_guided_heun_policy_has_no_diffusers_recipe(tmp_path):
    from stepdrop_search.interop import diffusers_recipe

    doc = PolicyDocument(Uniform(nfe=5, schedule=SCHEDULE), SolverSpec("heun"), guidance=Guidance(2.0))
    with pytest.raises(UserError, match="no diffusers recipe"):
        diffusers_recipe(doc)


def test_a_pareto_search_on_a_conditional_model_fronts_fid_nfe_and_class_accuracy(conditional_checkpoint, tiny_features,
                                                                               tiny_judge, tmp_path, monkeypatch):
    import optuna

    from stepdrop_search.search.optimize import optimize
    from stepdrop_search.search.settings import OptimizeSettings

    monkeypatch.chdir(tmp_path)  # the front's plot and members go to policies/
    storage = f"sqlite:///{tmp_path}/s.db"
    cfg = OptimizeSettings.from_flags(multi_objective=True, nfe_range=(3, 6), model=str(conditional_checkpoint),
                                      features=str(tiny_features), judge=str(tiny_judge), trials=10, storage=storage,
                                      samples=16, trial_samples=16, held_out_samples=16, teacher="ddim-50", budget=0)
    result = optimize(cfg)
    study = optuna.load_study(study_name=cfg.study_name, storage=storage)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE", "MAXIMIZE"]
    assert all(len(t.values) == 3 and 0 <= t.values[2] <= 1 for t in study.best_trials)
    assert result.reports and result.reports[0].is_file() and result.exported
