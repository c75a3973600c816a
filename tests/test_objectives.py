"""Metrics through torch-fidelity, residual, the search objective and `evaluate` end to end."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from stepdrop_search.cli import app
from stepdrop_search.data import load_dataset
from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.errors import UserError
from stepdrop_search.evaluation import Candidate, evaluate
from stepdrop_search.loading import load_model
from stepdrop_search.objectives.features import load_features
from stepdrop_search.objectives.metrics import ProxyFeatureExtractor, fidelity_metrics, inception_fid, proxy_extractor
from stepdrop_search.objectives.objective import Objective
from stepdrop_search.objectives.residual import Teacher, teacher_outputs
from stepdrop_search.policies import PolicyDocument
from stepdrop_search.policies.kinds import Uniform
from stepdrop_search.suites import PEER_KINDS, peers_suite, stepdrop_suite

runner = CliRunner()
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def features(tiny_features):
    return load_features(tiny_features)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STEPDROP_CACHE", str(tmp_path / "cache"))


def test_feature_file_reports_accuracy_above_chance_and_holds_reference_stats(features):
    assert features.card["accuracy_test"] > 0.5  # 3 balanced classes: chance is 1/3
    ref = features.reference
    assert ref["features"].shape == (2048, 64) and ref["sigma"].shape == (64, 64)


def test_the_judge_is_another_family_trained_on_half_of_the_training_images(features, tiny_judge):
    judge = load_features(tiny_judge)
    seen = judge.card["training_images"]
    assert judge.card["family"] == "residual" and features.card["family"] == "plain"
    assert seen["which"] == "half-b" and seen["count"] == seen["of"] // 2
    assert judge.card["accuracy_test"] > 0.5 and judge.reference["features"].shape == (2048, 64)
    assert judge.card["weights_hash"] != features.card["weights_hash"]


@pytest.mark.parametrize("flags", [["--family", "wide"], ["--images", "half-c"]])
def test_an_unknown_feature_family_or_image_half_exits_2_before_training(tmp_path, flags):
    result = runner.invoke(app, ["features", "train", "--dataset", "synthetic", "--out", str(tmp_path / "f.pt"), *flags])
    assert result.exit_code == 2 and "choose one of" in result.output and not (tmp_path / "f.pt").exists()


def test_fid_of_the_reference_set_against_itself_is_about_zero(features):
    real = load_dataset("synthetic", split="test").images
    assert fidelity_metrics(real, features, {"fid"}, device=CPU)["fid"] == pytest.approx(0, abs=1e-3)


def test_fid_grows_with_added_noise(features):
    real = load_dataset("synthetic", split="test").images
    gen = torch.Generator().manual_seed(0)
    fids = [fidelity_metrics((real + s * torch.randn(real.shape, generator=gen)).clamp(-1, 1), features, {"fid"},
                             device=CPU)["fid"] for s in (0.05, 0.2, 0.5)]
    assert fids[0] < fids[1] < fids[2]


def test_all_fidelity_metrics_come_from_the_registered_proxy_extractor(features):
    extractor = proxy_extractor(features, CPU)
    assert isinstance(extractor, ProxyFeatureExtractor)  # not torch-fidelity's Inception
    real = load_dataset("synthetic", split="test").images[:300]
    values = fidelity_metrics(real, features, {"fid", "kid", "is", "prc"}, device=CPU)
    assert set(values) >= {"fid", "kid", "is", "precision", "recall"}
    assert 1 <= values["is"] <= 3 + 1e-6 and values["precision"] > 0.5


def test_missing_inception_weights_give_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="Inception weights.*--inception-weights"):
        inception_fid(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), None, device=CPU)
    with pytest.raises(UserError, match="not found"):
        inception_fid(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), tmp_path / "none.pth", device=CPU)


def test_residual_of_the_teacher_itself_is_zero(tiny_checkpoint, features):
    loaded = load_model(tiny_checkpoint)
    objective = Objective(loaded, features, samples=16, teacher=Teacher("ddim", 20))
    same = objective(PolicyDocument(Uniform(nfe=20, schedule=loaded.schedule), SolverSpec("ddim")))
    other = objective(PolicyDocument(Uniform(nfe=5, schedule=loaded.schedule), SolverSpec("ddim")))
    assert same.residual == 0.0 and other.residual > 0
    assert other.value == pytest.approx(other.fid + 100 * other.residual)


def test_teacher_outputs_are_cached_on_disk(tiny_checkpoint, tmp_path):
    from stepdrop_search.objectives.residual import teacher_outputs

    loaded = load_model(tiny_checkpoint)
    first = teacher_outputs(loaded, Teacher("ddim", 10), n=4, seed=0)
    assert len(list((tmp_path / "cache").glob("teacher-*.pt"))) == 1
    assert torch.equal(first, teacher_outputs(loaded, Teacher("ddim", 10), n=4, seed=0))


class NaNModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, x, t):
        return self.inner(x, t) * float("nan")


def test_non_finite_samples_make_a_failed_result_not_a_crash(tiny_checkpoint, features):
    loaded = load_model(tiny_checkpoint)
    loaded.model = NaNModel(loaded.model)
    doc = PolicyDocument(Uniform(nfe=5, schedule=loaded.schedule))
    results = evaluate(loaded, [Candidate("nan", doc)], samples=8, seeds=1, metrics=["fid"], features=features)
    assert "not finite" in results[0].failed
    scores = Objective(loaded, features, samples=8, residual_weight=0)(doc)
    assert scores.failed and math.isinf(scores.value)


def test_stepdrop_suite_reports_true_expected_nfe():
    suite = {c.name: c.document.policy for c in stepdrop_suite(Uniform(nfe=1).schedule).rows}
    assert suite["ddpm-1000"].nfe == 1000
    assert 650 < suite["linear p=0.5"].expected_nfe() < 700
    assert suite["cosine2 p=0.3"].expected_nfe() > 800


def test_evaluate_end_to_end_on_the_tiny_model(tiny_checkpoint, tiny_features, tmp_path):
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_checkpoint), "--features", str(tiny_features),
                                 "--baselines", "ddim,importance", "--nfe", "5,10", "--samples", "64", "--seeds", "2",
                                 "--metrics", "fid,kid,is,prc,residual,throughput,gflops,memory",
                                 "--teacher", "ddim-50", "--residual-samples", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.with_suffix(".json").read_text())
    names = [r["name"] for r in data["results"]]
    assert names == ["ddim-5", "ddim-10", "importance-5", "importance-10"]
    for row in data["results"]:
        assert len(row["per_seed"]) == 2 and row["summary"]["fid"]["std"] >= 0
        assert row["summary"]["nfe"]["mean"] == int(row["name"].rsplit("-", 1)[1])
    seeds = [r["per_seed"][0] for r in data["results"]]
    assert all(s["seed"] == 0 for s in seeds)
    assert out.with_suffix(".csv").read_text().startswith("policy,")
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    report = out.with_suffix(".md").read_text()
    fid = data["results"][0]["summary"]["fid"]
    assert f"{fid['mean']:.3f} ± {fid['std']:.3f}" in report  # the report prints evaluate's numbers
    assert "## coach FID by NFE" in report and "| importance |" in report
    assert "judge: None" in report and "judge_fid" not in data["results"][0]["per_seed"][0]  # no judge for these images
    assert "no judge network for this model's images" in result.output


def test_evaluate_leads_with_the_judge_and_reports_the_coach_beside_it(tiny_checkpoint, tiny_features, tiny_judge,
                                                                        tmp_path):
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_checkpoint), "--features", str(tiny_features),
                                 "--judge", str(tiny_judge), "--baselines", "ddim", "--nfe", "3,6", "--samples", "48",
                                 "--seeds", "2", "--metrics", "fid,kid", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["meta"]["judge"] == str(tiny_judge) and data["meta"]["features"] == str(tiny_features)
    seed = data["results"][0]["per_seed"][0]
    assert {"fid", "kid", "judge_fid", "judge_kid"} <= set(seed) and seed["judge_fid"] != seed["fid"]
    report = out.with_suffix(".md").read_text()
    assert "## judge FID by NFE" in report
    assert report.index("judge FID |") < report.index("coach FID |")  # the headline column comes first


def test_peers_suite_has_every_peer_at_every_nfe_or_says_why(tiny_checkpoint):
    loaded = load_model(tiny_checkpoint)
    suite = peers_suite(loaded, [3, 6], dp_samples=4, diffusers_available=False)
    families = {c.family for c in suite.rows}
    expected = {"ddim-trailing", "ddim-leading", "ddim-linspace", "dp-gits", "dp-oss", "dpmpp-2m-trailing",
                "dp-oss→dpmpp-2m", *PEER_KINDS}
    for nfe in (3, 6):
        built = {c.family for c in suite.rows if c.nominal_nfe == nfe}
        explained = {line.split("@")[0] for line in suite.missing if f"@{nfe}:" in line}
        assert expected - {"diffusers"} <= built | explained
        assert sum("diffusers is not installed" in line for line in suite.missing if f"@{nfe}:" in line) == 6
    assert families >= {"dp-oss", "ddim-leading"}
    oss = [c.document.policy.timesteps() for c in suite.rows if c.family == "dp-oss"]
    assert [len(t) for t in oss] == [3, 6]


def test_peers_suite_runs_diffusers_schedulers_through_evaluate(tiny_checkpoint, tiny_features, tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "peers"
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_checkpoint), "--features", str(tiny_features),
                                 "--suite", "peers", "--nfe", "4", "--samples", "8", "--seeds", "2", "--dp-samples", "4",
                                 "--metrics", "fid,residual", "--teacher", "ddim-20", "--residual-samples", "4",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(out.with_suffix(".json").read_text())["results"]}
    for scheduler in ("dpm-solver-multistep", "ddpm", "euler"):
        default, ours = rows[f"diffusers {scheduler}@4"], rows[f"diffusers {scheduler} on dp-oss@4"]
        assert default["summary"]["nfe"]["mean"] == ours["summary"]["nfe"]["mean"] == 4  # counted, not declared
        assert ours["timesteps"] == rows["dp-oss@4"]["policy"]["timesteps"] and ours["policy"] is None
        assert default["diffusers"] == scheduler and default["timesteps"] is None
    assert "## Every row" in out.with_suffix(".md").read_text()


def test_peers_suite_with_too_few_samples_fails_before_any_dp_work(tiny_checkpoint, tiny_features, tmp_path):
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_checkpoint), "--features", str(tiny_features),
                                 "--suite", "peers", "--nfe", "4", "--samples", "1", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "at least 2 samples" in result.output
    assert "peers:" not in result.output and not list(tmp_path.iterdir())  # no DP row was built


def test_evaluate_reloads_a_policy_file(tiny_checkpoint, tiny_features, tmp_path):
    from stepdrop_search.policies import save_policy

    loaded = load_model(tiny_checkpoint)
    path = save_policy(tmp_path / "mine.json", PolicyDocument(Uniform(nfe=4, spacing="linspace", schedule=loaded.schedule)))
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_checkpoint), "--features", str(tiny_features),
                                 "--policy", str(path), "--samples", "32", "--seeds", "1", "--metrics", "fid",
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "mine" in result.output


def test_evaluate_runs_a_policy_file_with_other_solvers_for_schedule_transfer(tiny_checkpoint, tiny_features, tmp_path):
    from stepdrop_search.policies import save_policy

    loaded = load_model(tiny_checkpoint)
    path = save_policy(tmp_path / "mine-nfe4.json", PolicyDocument(Uniform(nfe=4, schedule=loaded.schedule)))
    out = tmp_path / "r"
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_checkpoint), "--features", str(tiny_features),
                                 "--policy", str(path), "--solvers", "ddim,dpmpp-2m", "--samples", "16", "--seeds", "1",
                                 "--metrics", "fid", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.with_suffix(".json").read_text())["results"]
    assert [(r["name"], r["family"], r["policy"]["solver"]["name"]) for r in rows] == [
        ("mine-nfe4", "mine", "ddim"), ("mine-nfe4→dpmpp-2m", "mine→dpmpp-2m", "dpmpp-2m")]
    assert rows[0]["summary"]["fid"]["mean"] != rows[1]["summary"]["fid"]["mean"]


def test_evaluate_asking_for_inception_without_weights_exits_2(tiny_checkpoint, tmp_path):
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_checkpoint), "--metrics", "inception-fid",
                                 "--samples", "8", "--seeds", "1", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--inception-weights" in result.output


def test_a_stochastic_teacher_cache_entry_is_keyed_by_the_noise_scheme(tiny_checkpoint, tmp_path, monkeypatch):
    import stepdrop_search.objectives.residual as residual_module

    monkeypatch.setenv("STEPDROP_CACHE", str(tmp_path))
    loaded = load_model(tiny_checkpoint)
    first = teacher_outputs(loaded, Teacher.parse("ddpm-5"), n=2, seed=0)
    monkeypatch.setattr(residual_module, "NOISE_SCHEME", "another-scheme")
    teacher_outputs(loaded, Teacher.parse("ddpm-5"), n=2, seed=0)
    teacher_outputs(loaded, Teacher.parse("ddim-5"), n=2, seed=0)
    teacher_outputs(loaded, Teacher.parse("ddim-5"), n=2, seed=0)
    assert len(list(tmp_path.glob("teacher-*.pt"))) == 3  # two ddpm entries (one per scheme), one ddim entry
    assert first.shape[0] == 2
