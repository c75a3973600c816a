"""DP searches, Optuna studies, durable resume after SIGKILL, and several workers on one study."""

import itertools
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

from stepdrop_search.diffusion.solvers import fixed_solvers
from stepdrop_search.errors import UserError
from stepdrop_search.loading import load_model
from stepdrop_search.policies import load_policy
from stepdrop_search.search.dp import _distance, edge_step, gits_schedule, oss_schedule, teacher_trajectory
from stepdrop_search.search.optimize import optimize
from stepdrop_search.search.settings import OptimizeSettings
from stepdrop_search.search.space import gaps_to_steps, steps_to_params
from stepdrop_search.seeds import search_seed, selection_seed


@pytest.fixture(autouse=True)
def private_cache_and_workdir(tmp_path, monkeypatch):
    """Teacher cache and default outputs (policies/, studies/) stay in the test's own directory."""
    monkeypatch.setenv("STEPDROP_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_model(tiny_checkpoint)


def test_gaps_parameterisation_is_always_valid_and_invertible():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        gaps = (torch.rand(9, generator=gen) * 0.98 + 0.02).tolist()
        steps = gaps_to_steps(gaps, 999, 3, 1000)
        assert len(steps.unique()) == 10 and (steps[1:] < steps[:-1]).all() and steps[0] == 999 and steps[-1] == 3
    known = [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    p = steps_to_params(known, True)
    assert gaps_to_steps([p[f"gap_{i}"] for i in range(9)], p["t_first"], p["t_last"], 1000).tolist() == known


def test_a_seed_outside_the_space_runs_exactly_and_quietly():
    """Learned steps can end above the space's last-step range (T/5): the seeded trial must still run the pool row's
    exact steps, without Optuna's out-of-range warning in every search log."""
    import types
    import warnings

    from stepdrop_search.diffusion.runtimes import DEFAULT_RUNTIME
    from stepdrop_search.diffusion.schedule import NoiseSchedule
    from stepdrop_search.policies import PolicyDocument
    from stepdrop_search.search.sources.optuna_study import trial_document

    steps = [999, 768, 572, 415, 219]  # t_last 219 > 200
    run = types.SimpleNamespace(
        settings=types.SimpleNamespace(search=types.SimpleNamespace(kind="explicit", free_boundary=True, search_eta=False)),
        search_solvers=("ddim",), runtime=DEFAULT_RUNTIME, loaded=types.SimpleNamespace(schedule=NoiseSchedule()),
        guided=False, document=lambda policy, spec, guidance=None: PolicyDocument(policy, spec, guidance=guidance))
    study = optuna.create_study()
    study.enqueue_trial(steps_to_params(steps, True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        doc = trial_document(study.ask(), run, 5)
    assert list(doc.policy.steps) == steps


def test_gits_dp_matches_brute_force_on_a_small_grid(tiny):
    traj = teacher_trajectory(tiny, grid_size=7, n=4)
    nfe = 3
    result = gits_schedule(traj, nfe, cost="l2", gamma=1.15)
    N = 7

    def edge(i, j):
        cand = edge_step(traj.states[i], traj.denoised[i], traj.alphas[i], traj.alphas[j])
        return float(_distance(cand - traj.states[j], "l2").mean())

    best = None
    for middle in itertools.combinations(range(1, N), nfe - 1):
        path = [0, *middle, N]
        # GITS discount γ on later edges: total = Σ_k γ^k · C[path_k][path_k+1]
        total = sum(1.15**k * edge(a, b) for k, (a, b) in enumerate(zip(path, path[1:], strict=False)))
        if best is None or total < best[0]:
            best = (total, path[:-1])
    assert result.steps.tolist() == traj.grid[best[1]].tolist()
    assert result.cost == pytest.approx(best[0], rel=1e-5)
    assert result.nfe_spent == 7 * 4


def test_dp_with_nfe_equal_to_the_grid_uses_every_node(tiny):
    traj = teacher_trajectory(tiny, grid_size=5, n=2)
    assert gits_schedule(traj, 5).steps.tolist() == traj.grid.tolist()
    assert oss_schedule(tiny, traj, 5).steps.tolist() == traj.grid.tolist()


def test_oss_gives_per_sample_schedules_and_counts_its_nfe(tiny):
    traj = teacher_trajectory(tiny, grid_size=12, n=3)
    result = oss_schedule(tiny, traj, 4)
    assert result.per_sample.shape == (3, 4) and (result.per_sample[:, 0] == 999).all()
    assert len(result.steps.unique()) == 4 and (result.steps[1:] < result.steps[:-1]).all()
    assert result.nfe_spent > traj.nfe


def tiny_args(tiny_checkpoint, tiny_features, storage, extra=()):
    return [sys.executable, "-m", "stepdrop_search", "optimize", "--model", str(tiny_checkpoint), "--features",
            str(tiny_features), "--nfe", "5", "--method", "optuna", "--samples", "16", "--teacher", "ddim-50",
            "--trial-samples", "16", "--promote", "2", "--promote-samples", "16", "--held-out-samples", "16",
            "--storage", storage, "--study", "s", "--timeout", "300", *extra]


SMALL = dict(samples=16, trial_samples=16, promote=4, promote_samples=24, held_out_samples=32, teacher="ddim-50",
             gradient_samples=16, gradient_epochs=2, gradient_batch=8, gradient_solver_epochs=2)


def test_optimize_exports_a_loadable_best_policy_with_provenance(tiny_checkpoint, tiny_features, tmp_path):
    out = tmp_path / "best.json"
    cfg = OptimizeSettings.from_flags(nfe=5, method="all", model=str(tiny_checkpoint), features=str(tiny_features), trials=6,
                         storage=f"sqlite:///{tmp_path}/s.db", dp_grid=20, dp_samples=4, dp_oss_samples=2, out=str(out),
                         residual_weight=100.0, **SMALL)
    result = optimize(cfg)
    doc = load_policy(out, load_model(tiny_checkpoint).schedule)
    assert doc.solver.solver.nfe(doc.policy.nfe) <= 5  # NFE is a ceiling: a cheaper row as good may win
    prov = doc.provenance
    assert prov["search"]["trials"] >= 6 and prov["objective"]["held_out"]["status"] == "export"
    names = {c.name for c in result.candidates}
    # the pool: every solver × every analytic schedule and both DPs, each solver on the grid that spends NFE 5 (a
    # sampler the DP or a cheaper NFE gave again is listed once), and at the cheaper NFEs 3 and 4
    assert {f"{s}/{k}" for s in fixed_solvers() for k in ("uniform", "logsnr", "karras", "quadratic", "dp-gits")} <= names
    assert {f"{s}/uniform@{n}" for s in ("ddim", "dpmpp-2m") for n in (3, 4)} <= names
    for cand in result.candidates:  # learned steps (when an epoch improved on validation) say how they were made
        if cand.name.endswith("/gradient"):
            assert cand.made_by["forward_nfe"] > cand.made_by["backward_nfe"] > 0 and cand.source == "pool"
    assert {c.source for c in result.candidates} >= {"pool"}
    assert result.best.name == prov["search"]["winner"] and result.best is result.leaderboard.export
    assert prov["search"]["selection"]["finalists"] == len(result.candidates)  # every pool row and the study's best
    assert (tmp_path / "best.leaderboard.md").read_text().startswith("# Selection leaderboard: exported")
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.search.storage)
    searched = study.user_attrs["search_solvers"]
    assert len(searched) == 3 and set(searched) <= set(fixed_solvers())
    sources = [t.user_attrs.get("source") for t in study.trials]
    # the study was seeded with the pool's step sets of the searched solvers, the best rung-0 row first
    assert sources[0].split("/")[0] in searched and all(s is None or s.split("/")[0] in searched for s in sources)

    # evaluate on the search seed's noise reproduces the coach's scores of a rung-1 row (its largest rung)
    from stepdrop_search.evaluation import Candidate, evaluate
    from stepdrop_search.objectives.features import load_features
    from stepdrop_search.objectives.residual import Teacher

    row = next(c for c in result.candidates if 24 in c.rungs)
    [res] = evaluate(load_model(tiny_checkpoint), [Candidate("row", row.document)], samples=24, seeds=[search_seed(0)],
                     metrics=["fid", "residual"], features=load_features(str(tiny_features)),
                     teacher=Teacher.parse("ddim-50"), residual_samples=24)
    record = row.objective_record()
    assert record["samples"] == 24
    assert res.summary()["fid"][0] == pytest.approx(record["fid"], rel=1e-4)
    assert res.summary()["residual"][0] == pytest.approx(record["residual"], rel=1e-4)


def test_search_selection_and_evaluation_seeds_never_overlap(tiny_checkpoint):
    from stepdrop_search.evaluation import seed_values
    from stepdrop_search.seeds import EVALUATION_SEEDS, SEARCH_SEEDS

    evaluation = set(seed_values(2, EVALUATION_SEEDS))
    search = {search_seed(s) for s in range(0, SEARCH_SEEDS, 997)} | {search_seed(SEARCH_SEEDS - 1)}
    selection = {selection_seed(s) for s in range(0, SEARCH_SEEDS, 997)} | {selection_seed(SEARCH_SEEDS - 1)}
    assert max(evaluation) < min(search) and max(search) < min(selection) and max(selection) < 2**31
    # the ranges are contiguous, so sampled ends prove disjointness; x_T keeps 32 bits of a seed, all are below 2^31
    with pytest.raises(UserError, match="--seeds"):
        seed_values(2, EVALUATION_SEEDS + 1)
    with pytest.raises(UserError, match="--seed"):
        OptimizeSettings.from_flags(seed=SEARCH_SEEDS)
    # and the x_T really differ: an evaluation seed never starts from a search seed's noise
    from stepdrop_search.generation import initial_noise

    assert not initial_noise(4, (1, 4, 4), 0).equal(initial_noise(4, (1, 4, 4), search_seed(0)))


def finished(db: Path) -> list[tuple[int, str, float]]:
    with sqlite3.connect(db) as con:
        if not con.execute("select name from sqlite_master where name = 'trial_values'").fetchall():
            return []  # the worker has not created Optuna's tables yet
        return con.execute("select t.number, t.state, v.value from trials t left join trial_values v "
                           "on v.trial_id = t.trial_id order by t.number").fetchall()


def test_killed_optimize_keeps_finished_trials_when_rerun(tiny_checkpoint, tiny_features, tmp_path):
    db = tmp_path / "kill.db"
    args = tiny_args(tiny_checkpoint, tiny_features, f"sqlite:///{db}", ["--trials", "200"])
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:
        if db.exists() and sum(s in ("COMPLETE", "PRUNED") for _, s, _ in finished(db)) >= 3:
            break
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [row for row in finished(db) if row[1] in ("COMPLETE", "PRUNED")]
    assert len(before) >= 3
    rerun = subprocess.run(tiny_args(tiny_checkpoint, tiny_features, f"sqlite:///{db}", ["--trials", str(len(before) + 2)]),
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    after = finished(db)
    assert all(row in after for row in before)  # nothing finished was lost or changed
    assert sum(s in ("COMPLETE", "PRUNED") for _, s, _ in after) >= len(before) + 2


def run_two_workers(args) -> None:
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err


def assert_study_is_clean(storage: str, target: int) -> None:
    study = optuna.load_study(study_name="s", storage=storage)
    states = [t.state for t in study.trials]
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    assert optuna.trial.TrialState.RUNNING not in states and optuna.trial.TrialState.FAIL not in states
    finished_count = sum(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states)
    assert target <= finished_count <= target + 1  # each worker may finish the trial it was running
    seeded = [t.user_attrs["source"] for t in study.trials if "source" in t.user_attrs]
    assert len(seeded) == len(set(seeded))  # every seed enqueued once, run once


def test_two_workers_share_one_fresh_sqlite_study(tiny_checkpoint, tiny_features, tmp_path):
    storage = f"sqlite:///{tmp_path}/shared.db"
    run_two_workers(tiny_args(tiny_checkpoint, tiny_features, storage, ["--trials", "8"]))
    assert_study_is_clean(storage, 8)


def test_two_workers_share_one_postgresql_study(tiny_checkpoint, tiny_features, postgres):
    run_two_workers(tiny_args(tiny_checkpoint, tiny_features, postgres, ["--trials", "8"]))
    assert_study_is_clean(postgres, 8)


def test_resuming_with_other_settings_is_refused(tiny_checkpoint, tiny_features, tmp_path):
    storage = f"sqlite:///{tmp_path}/cfg.db"
    with_teacher = ["--residual-weight", "100"]  # so that there is a teacher whose cache must stay untouched
    first = subprocess.run(tiny_args(tiny_checkpoint, tiny_features, storage, ["--trials", "1", *with_teacher]),
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    teachers = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("teacher-*")}
    assert teachers
    args = tiny_args(tiny_checkpoint, tiny_features, storage, ["--trials", "2", *with_teacher])
    args[args.index("--samples") + 1] = "12"  # other --samples
    second = subprocess.run(args, capture_output=True, text=True)
    assert second.returncode == 2 and "other settings (samples)" in second.stderr
    # refused before computing its own teacher (which would log a line and rewrite the cache entry)
    assert len(second.stderr.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("teacher-*")} == teachers


def test_search_time_is_what_the_budget_leaves_after_setup_and_export_reserve(monkeypatch):
    from stepdrop_search.search.budget import Budget

    def at(elapsed, seconds, timeout=None):
        budget = Budget(seconds, timeout)
        monkeypatch.setattr(budget, "elapsed", lambda: elapsed)
        return budget

    assert at(300, 900).search_seconds(reserve=100) == 500
    assert at(300, 900, timeout=60).search_seconds(reserve=100) == 60
    assert at(950, 900).search_seconds(reserve=0) < 0
    assert at(950, None).search_seconds(reserve=0) is None


def test_optimize_with_its_budget_spent_still_exports_the_best_seed(tiny_checkpoint, tiny_features, tmp_path):
    out = tmp_path / "best.json"
    result = subprocess.run(tiny_args(tiny_checkpoint, tiny_features, f"sqlite:///{tmp_path}/s.db",
                                      ("--budget", "1", "--out", str(out))), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and "selection on the judge" in result.stdout
    # the first lines say the budget buys no search, and which budget would; the run then selects among the pool only
    head = "\n".join(result.stderr.splitlines()[:4])
    assert re.search(r"--budget 1 s buys no search trial: .* --budget \d+ or more would search", head), head
    assert "search: study" not in result.stderr and not re.search(r"-\d+ s for it", result.stderr)


def test_search_eta_with_a_solver_without_eta_is_refused():
    with pytest.raises(UserError, match="--search-eta"):
        OptimizeSettings.from_flags(nfe=5, solver="dpmpp-2m", search_eta=True)


@pytest.mark.parametrize("solver", ["ddim,ddim", ",", "ddim,euler", "auto,ddim", "ddim,learned-3m"])
def test_a_solver_list_must_name_each_known_fixed_solver_once(solver):
    with pytest.raises(UserError, match="--solver|euler") as refused:
        OptimizeSettings.from_flags(nfe=5, solver=solver)
    assert "\n" not in str(refused.value)
    if "learned" in solver:
        assert "list dpmpp-3m instead" in str(refused.value)


def test_a_solver_list_is_one_study_however_it_is_typed_and_each_name_must_run_under_the_runtime():
    typed = [OptimizeSettings.from_flags(nfe=5, solver=s) for s in ("heun,ddim", " ddim , heun", "ddim,heun,")]
    assert {t.search.solver for t in typed} == {"ddim,heun"} and {t.study_name for t in typed} == {"explicit-ddim+heun-nfe5"}
    assert len({json.dumps(t.study_config("w")) for t in typed}) == 1  # what a resumed study is checked against
    assert OptimizeSettings.from_flags(nfe=5, solver=" ddim ").search.pinned_solver == "ddim"
    with pytest.raises(UserError, match="dpmpp-3m"):  # ComfyUI has no DPM-Solver++(3M) sampler
        OptimizeSettings.from_flags(nfe=5, solver="ddim,dpmpp-3m", runtime="comfyui")
    with pytest.raises(UserError, match="--search-eta"):
        OptimizeSettings.from_flags(nfe=5, solver="ddim,heun", search_eta=True)


def test_a_solver_list_keeps_only_those_solvers_in_the_pool_and_the_search(tiny_checkpoint, tiny_features, tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = OptimizeSettings.from_flags(nfe=4, method="optuna", solver="ddim, dpmpp-2m", model=str(tiny_checkpoint),
                                      features=str(tiny_features), trials=2, budget=None, **SMALL)
    assert cfg.pool_solvers() == ("ddim", "dpmpp-2m") and cfg.search.pinned_solver is None
    result = optimize(cfg)
    assert {c.document.solver.name for c in result.candidates} == {"ddim", "dpmpp-2m"}
    assert set(result.search_solvers) == {"ddim", "dpmpp-2m"}  # rung 1 ranks both; neither is dropped unasked
    assert (tmp_path / "policies" / "best-explicit-ddim+dpmpp-2m-nfe4.json").exists()
    with pytest.raises(UserError, match="--search-eta|--kind"):
        OptimizeSettings.from_flags(nfe=4, solver="ddim,dpmpp-2m", kind="karras")


def test_optimize_refuses_a_feature_network_of_another_image_shape_before_any_work(tiny_checkpoint, tmp_path):
    from stepdrop_search.objectives.features import default_features_path

    cfg = OptimizeSettings.from_flags(nfe=3, model=str(tiny_checkpoint), features=str(default_features_path("fashion-mnist")),
                         device="cpu", samples=4, teacher="ddim-20", promote_samples=4, held_out_samples=4)
    with pytest.raises(UserError, match="scores 1×28×28 images but the model makes 1×16×16"):
        optimize(cfg)
    assert not (tmp_path / "studies").exists() and not (tmp_path / "policies").exists()


def test_rung_sizes_buy_more_samples_when_each_evaluation_is_cheap():
    from stepdrop_search.search.rungs import RungSizes, rung_sizes

    assert rung_sizes(5) == RungSizes(256, 1024, 2048)
    assert rung_sizes(10) == RungSizes(128, 512, 2048)
    assert rung_sizes(25) == RungSizes(64, 256, 2048)
    assert rung_sizes(1) == RungSizes(512, 1024, 2048) and rung_sizes(1000) == RungSizes(64, 256, 2048)


def test_auto_rung_sizes_are_recorded_and_a_resumed_study_keeps_them(tiny_checkpoint, tiny_features, tmp_path):
    storage = f"sqlite:///{tmp_path}/r.db"
    settings = dict(nfe=3, method="optuna", solver="ddim", model=str(tiny_checkpoint), features=str(tiny_features), trials=2, trial_samples=8,
                    storage=storage, study="r", teacher="ddim-20", promote=1, budget=None)
    optimize(OptimizeSettings.from_flags(**settings))
    recorded = optuna.load_study(study_name="r", storage=storage).user_attrs["rung_sizes"]
    assert recorded[0] in (64, 128, 256, 512) and recorded[1] >= recorded[0] and recorded[2] >= 1024
    study = optuna.load_study(study_name="r", storage=storage)
    study.set_user_attr("rung_sizes", [64, 64, 1100])  # as if an older rule had sized them
    result = optimize(OptimizeSettings.from_flags(**settings | {"trials": 3}))
    assert result.sizes.held_out == 1100 and result.leaderboard.rounds[-1] <= 1100


def test_optimize_with_the_gradient_method_learns_steps_from_the_best_pool_schedule(tiny_checkpoint, tiny_features,
                                                                                      tmp_path):
    lines: list[str] = []
    result = optimize(OptimizeSettings.from_flags(nfe=4, method="gradient", solver="dpmpp-2m", model=str(tiny_checkpoint),
                                     features=str(tiny_features), out=str(tmp_path / "best.json"), budget=None,
                                     save_pool=str(tmp_path / "pool"), gradient_loss="l2", **SMALL), log=lines.append)
    learned = [line for line in lines if line.startswith("gradient: dpmpp-2m validation l2")]
    assert len(learned) == 1 and "forward +" in learned[0]
    assert any(line.startswith("gradient: dpmpp-2m from dpmpp-2m/") for line in lines)  # warm start: a pool schedule
    names = [c.name for c in result.candidates]
    assert not any(n.endswith(("/dp-gits", "/dp-oss")) for n in names) and result.study_name is None
    if "dpmpp-2m/gradient" in names:
        saved = load_policy(tmp_path / "pool" / "dpmpp-2m_gradient-nfe4.json", load_model(tiny_checkpoint).schedule)
        made = saved.provenance["search"]["made_by"]
        assert made["loss"] == "l2" and made["validation_loss"][1] < made["validation_loss"][0]
    else:
        assert any("kept its start" in line for line in lines)


@pytest.mark.parametrize("method", ["gradient,sgd", "", "dp-gits,,"])
def test_a_method_list_must_name_known_methods(method):
    if method == "dp-gits,,":
        assert OptimizeSettings.from_flags(method=method).search.methods == ("dp-gits",)
        return
    with pytest.raises(UserError, match="--method"):
        OptimizeSettings.from_flags(method=method)


def test_multi_objective_search_exports_its_pareto_set_and_draws_the_front(tiny_checkpoint, tiny_features, tmp_path):
    result = optimize(OptimizeSettings.from_flags(nfe=4, method="optuna", solver="ddim", multi_objective=True, nfe_range=(2, 5),
                                     model=str(tiny_checkpoint), features=str(tiny_features), trials=8, samples=8,
                                     promote_samples=8, held_out_samples=16, trial_samples=8, prune_samples=8,
                                     budget=None, storage=f"sqlite:///{tmp_path}/mo.db"))
    policies = result.exported
    [figure] = result.reports
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.parent.name == "policies"
    assert len(policies) == len(result.candidates) >= 1
    nfes = [load_policy(p).solver.solver.nfe(load_policy(p).policy.nfe) for p in policies]
    assert all(2 <= n <= 5 for n in nfes)


def test_multi_objective_does_the_same_from_python_and_from_the_cli(tiny_checkpoint, tiny_features, tmp_path,
                                                                     monkeypatch):
    from typer.testing import CliRunner

    from stepdrop_search.cli import app

    flags = dict(nfe=4, method="optuna", solver="ddim", multi_objective=True, nfe_range=(2, 5), trials=6, samples=8,
                 promote_samples=8, held_out_samples=16, trial_samples=8, budget=0, model=str(tiny_checkpoint),
                 features=str(tiny_features))
    exported = {}
    for way in ("python", "cli"):
        (tmp_path / way).mkdir()
        monkeypatch.chdir(tmp_path / way)
        storage = f"sqlite:///{tmp_path}/{way}.db"
        if way == "python":
            result = optimize(OptimizeSettings.from_flags(**flags, storage=storage))
            assert result.settings.search.sampler == "nsga2" and result.settings.budget.seconds is None
        else:
            args = ["optimize", "--multi-objective", "--nfe-range", "2,5", "--storage", storage, "--budget", "0"]
            for name, value in flags.items():
                if name not in ("multi_objective", "nfe_range", "budget"):
                    args += [f"--{name.replace('_', '-')}", str(value)]
            outcome = CliRunner().invoke(app, args)
            assert outcome.exit_code == 0, outcome.output
        exported[way] = sorted((p.name, load_policy(p).policy.timesteps().tolist())
                               for p in (tmp_path / way / "policies").glob("*.json"))
    assert exported["python"] == exported["cli"] and exported["python"]  # NSGA-II, no time limit, the same Pareto set
