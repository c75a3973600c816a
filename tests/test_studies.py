"""`studies list|show|export` over the storages optimize writes, and optuna-dashboard reading the same storage."""

import json
import threading
import urllib.request

import optuna
import pytest
from typer.testing import CliRunner

from stepdrop_search.cli import app
from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.policies import PolicyDocument, load_policy
from stepdrop_search.policies.kinds import Explicit
from stepdrop_search.search.studies import dashboard

runner = CliRunner()
STEPS = [(999, 600, 300, 50), (999, 700, 350, 90), (999, 500, 200, 10)]


def make_study(path, name: str, values: list[float | None]) -> None:
    """A study as optimize leaves it: each trial keeps the policy it proposed; None stands for a pruned trial."""
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{path}")
    study.set_user_attr("config", {"model_hash": "abc123"})
    for i, value in enumerate(values):
        trial = study.ask()
        doc = PolicyDocument(Explicit(steps=STEPS[i % 3]), SolverSpec("unipc"))
        trial.set_user_attr("policy", doc.to_dict())
        if i == 0:
            trial.set_user_attr("source", "unipc/uniform")
        if value is None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    make_study(tmp_path / "studies" / "a.db", "a", [5.0, 3.5, None, 4.0])
    make_study(tmp_path / "studies" / "b.db", "b", [7.0])
    return tmp_path


def test_studies_list_shows_every_default_study_with_trial_counts_and_best(workdir):
    result = runner.invoke(app, ["studies", "list"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "│ a " in line or "│ b " in line]
    assert len(lines) == 2
    assert "3.5000" in lines[0] and "│ 3 " in lines[0] and "│ 1 " in lines[0]  # 3 complete, 1 pruned, best 3.5


def test_studies_show_lists_trials_best_first_with_their_steps(workdir):
    result = runner.invoke(app, ["studies", "show", "a"])
    assert result.exit_code == 0, result.output
    body = [line for line in result.output.splitlines() if line.startswith("│")]
    assert body[0].split("│")[1].strip() == "1" and "999, 700, 350, 90" in body[0]
    assert "pruned" in body[-1] and "unipc/uniform" in result.output
    assert "a: 4 trials (3 complete, 1 pruned)" in result.output.replace("\n", " ")  # counts by state in the title


def test_studies_export_writes_the_chosen_trials_policy(workdir):
    out = workdir / "best.json"
    assert runner.invoke(app, ["studies", "export", "a", "--out", str(out)]).exit_code == 0
    doc = load_policy(out)
    assert doc.policy.timesteps().tolist() == list(STEPS[1]) and doc.solver.name == "unipc"
    assert doc.provenance["search"]["trial"] == 1 and doc.provenance["model_hash"] == "abc123"
    assert runner.invoke(app, ["studies", "export", "a", "--trial", "3", "--out", str(out)]).exit_code == 0
    assert load_policy(out).policy.timesteps().tolist() == list(STEPS[0])


@pytest.mark.parametrize("args,message", [
    (["show", "nope"], "no such file studies/nope.db"),
    (["show", "a", "--storage", "sqlite:///studies/b.db"], "no study 'a' in sqlite:///studies/b.db; it holds b"),
    (["export", "a", "--trial", "9"], "has no trial 9"),
    (["export", "a", "--trial", "x"], "neither a trial number nor best"),
    (["list", "--storage", "journal:missing.log"], "no such file missing.log"),
])
def test_studies_refuse_a_missing_study_or_trial_in_one_line_and_create_nothing(workdir, args, message):
    before = sorted(p.name for p in workdir.rglob("*"))
    cmd = ["studies", *args] + (["--out", str(workdir / "x.json")] if args[0] == "export" else [])
    result = runner.invoke(app, cmd)
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert sorted(p.name for p in workdir.rglob("*")) == before


def test_the_dashboard_serves_the_study_with_its_trials_over_http(workdir):
    server, url = dashboard("a", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = url.split("/dashboard/")[0]
        study_id = int(url.rsplit("/", 1)[1])
        with urllib.request.urlopen(f"{base}/api/studies", timeout=10) as response:
            assert [s["study_name"] for s in json.loads(response.read())["study_summaries"]] == ["a"]
        with urllib.request.urlopen(f"{base}/api/studies/{study_id}?after=0", timeout=10) as response:
            assert len(json.loads(response.read())["trials"]) == 4
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200  # the page itself
    finally:
        server.shutdown()
        server.server_close()


def test_the_dashboard_command_refuses_a_missing_study_before_it_binds(workdir):
    result = runner.invoke(app, ["studies", "dashboard", "nope"])
    assert result.exit_code == 2 and "no such file" in result.output


def test_studies_list_without_a_studies_folder_says_where_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["studies", "list"])
    assert result.exit_code == 2 and "no studies/ folder" in result.output and not (tmp_path / "studies").exists()
