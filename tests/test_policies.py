"""Every policy kind: its defining property, JSON round trip, and sampling the tiny model."""

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
from stepdrop_search.policies import POLICIES, PolicyDocument, load_policy, save_policy
from stepdrop_search.policies.kinds import (
    Adaptive,
    Cosine,
    Explicit,
    Importance,
    Karras,
    LogSNR,
    Quadratic,
    SkippedStep,
    StepDrop,
    Uniform,
)

runner = CliRunner()


def build(kind: str, nfe: int):
    if kind == "explicit":
        return Explicit(steps=tuple(Uniform(nfe=nfe, spacing="linspace").timesteps().tolist()))
    return POLICIES[kind](nfe=nfe)


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_every_kind_builds_round_trips_and_samples_at_standard_nfe(kind, tiny_checkpoint, tmp_path):
    loaded = load_model(tiny_checkpoint)
    for nfe in (5, 10, 25, 50):
        policy = build(kind, nfe)
        path = save_policy(tmp_path / f"{kind}-{nfe}.json", PolicyDocument(policy, SolverSpec("ddim")))
        back = load_policy(path, loaded.schedule).policy
        assert back == policy
        if policy.static:
            steps = policy.timesteps()
            assert len(steps) == nfe and len(set(steps.tolist())) == nfe
            assert (steps[1:] < steps[:-1]).all() and steps.min() >= 0 and steps.max() <= 999
        result = generate(loaded.model, loaded.schedule, back, SolverSpec("ddim"), n=3, seed=0)
        assert torch.isfinite(result.x0).all()
        if policy.static:
            assert result.nfe.tolist() == [nfe] * 3


def test_uniform_spacings_follow_their_conventions():
    assert Uniform(nfe=10, spacing="leading").timesteps().tolist() == list(range(900, -1, -100))
    assert Uniform(nfe=10, spacing="trailing").timesteps().tolist() == list(range(999, 0, -100))
    assert Uniform(nfe=4, spacing="linspace").timesteps().tolist() == [999, 666, 333, 0]
    for spacing in ("leading", "trailing", "linspace"):
        assert Uniform(nfe=1000, spacing=spacing).timesteps().tolist() == list(range(999, -1, -1))


def test_quadratic_and_cosine_follow_their_formulas():
    q = Quadratic(nfe=11).timesteps()
    assert q[0] == 999 and q[5] == round(999 * 0.25) and q[-1] == 0
    c = Cosine(nfe=3).timesteps()
    assert c.tolist() == [999, round(999 * 0.5), 0]


def test_quadratic_at_high_nfe_stays_distinct_where_rounding_would_collide():
    steps = Quadratic(nfe=200).timesteps()
    raw = ((999 * (1 - torch.linspace(0, 1, 200, dtype=torch.float64)) ** 2).round()).unique()
    assert len(raw) < 200 and len(steps.unique()) == 200


def test_karras_rho_moves_steps_toward_low_noise():
    low_rho, high_rho = Karras(nfe=10, rho=1.0).timesteps(), Karras(nfe=10, rho=7.0).timesteps()
    assert (high_rho[1:-1] <= low_rho[1:-1]).all() and not torch.equal(low_rho, high_rho)


def test_logsnr_steps_are_evenly_spaced_in_log_snr():
    schedule = NoiseSchedule()
    lam = schedule.log_snr[LogSNR(nfe=10).timesteps()]
    gaps = lam[1:] - lam[:-1]
    assert gaps.std() / gaps.mean() < 0.05


def test_importance_allocates_bands_with_exactly_nfe_distinct_steps():
    steps = Importance(nfe=50).timesteps()
    assert len(steps.unique()) == 50
    assert int((steps >= 900).sum()) == 15 and int((steps < 100).sum()) == 15
    high = steps[steps >= 900]
    assert (high[:-1] - high[1:]).min() > 1  # no 900/899-style near duplicates
    assert Importance(nfe=10, fractions=(0.5, 0.2, 0.3)).band_counts() == (5, 2, 3)


def test_importance_that_cannot_fit_its_band_is_rejected():
    with pytest.raises(UserError, match="do not fit the high band"):
        Importance(nfe=400)


def test_skipped_step_jumps_by_m_above_t_c_with_the_ancestral_solver():
    policy = SkippedStep(nfe=10, t_c=500, m=100)
    steps = policy.timesteps().tolist()
    assert steps[:5] == [999, 899, 799, 699, 599] and steps[5] == 500 and steps[-1] == 0
    assert policy.solvers("ddim", 10) == ("ddpm",) * 5 + ("ddim",) * 5
    with pytest.raises(UserError, match="leave no step"):
        SkippedStep(nfe=5, t_c=500, m=100)


def test_stepdrop_calibrates_p0_to_the_target_expected_nfe():
    for profile in ("constant", "linear", "quadratic", "cosine2"):
        policy = StepDrop(nfe=25, base_steps=100, profile=profile)
        assert policy.expected_nfe() == pytest.approx(25, abs=1e-6)
        p = policy.skip_probabilities()
        assert p[0] == 0 and p[-1] == 0


def test_stepdrop_with_explicit_p0_reports_its_true_expected_nfe():
    """StepDrop's "linear p=0.5" on a 1000-step base is ~667 NFE, not 50."""
    policy = StepDrop(base_steps=1000, p0=0.5, profile="linear", protect=20)
    assert policy.nfe == round(policy.expected_nfe()) and 650 < policy.nfe < 700
    with pytest.raises(UserError, match="does not match the expected NFE"):
        StepDrop(nfe=50, base_steps=1000, p0=0.5, profile="linear")


def test_stepdrop_measured_nfe_averages_to_the_expected_nfe():
    policy = StepDrop(nfe=20, base_steps=60)
    plan = policy.plan(4000)
    assert plan.evaluate.sum(1).float().mean().item() == pytest.approx(20, abs=0.2)


def test_unreachable_expected_nfe_is_rejected():
    with pytest.raises(UserError, match="out of reach"):
        StepDrop(nfe=2, base_steps=40, protect=3)


class ScaledEps(torch.nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.config = type("C", (), {"in_channels": 1, "image_size": 8})()

    def forward(self, x, t):
        return torch.ones_like(x) * self.scale + self.anchor


def test_adaptive_skips_more_where_the_predicted_noise_is_small():
    policy = Adaptive(nfe=20, base_steps=40)
    schedule = NoiseSchedule()
    small = generate(ScaledEps(0.5), schedule, policy, SolverSpec(), n=256, seed=0).nfe.float().mean()
    unit = generate(ScaledEps(1.0), schedule, policy, SolverSpec(), n=256, seed=0).nfe.float().mean()
    large = generate(ScaledEps(2.0), schedule, policy, SolverSpec(), n=256, seed=0).nfe.float().mean()
    assert small < unit < large
    assert unit.item() == pytest.approx(20, abs=1.0)  # calibrated for ‖ε‖/√D = 1


def test_explicit_rejects_bad_lists():
    for steps, message in (((5, 9, 1), "strictly decreasing"), ((9, 9, 1), "duplicate"), ((1000, 5), "outside")):
        with pytest.raises(UserError, match=message):
            Explicit(steps=steps)


# ---- the policy file and its validator, through the CLI (message + exit code 2) ----

def write_doc(tmp_path, mutate, name="p.json"):
    doc = PolicyDocument(Uniform(nfe=5)).to_dict()
    mutate(doc)
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def set_key(key, value):
    return lambda d: d.__setitem__(key, value)


BAD_FILES = [
    ("unknown kind", set_key("kind", "magic"), "unknown policy kind 'magic'"),
    ("non-monotonic", set_key("timesteps", [999, 500, 700, 100, 0]), "strictly decreasing"),
    ("duplicate", set_key("timesteps", [999, 500, 500, 100, 0]), "duplicate timesteps [500]"),
    ("out of range", set_key("timesteps", [1200, 500, 300, 100, 0]), "outside [0, 999]"),
    ("nfe mismatch", set_key("nfe", 7), "nfe 7 does not match the 5 timesteps"),
    ("edited timesteps", set_key("timesteps", [998, 500, 300, 100, 0]), "do not match the uniform policy"),
    ("bad hash", set_key("noise_schedule_hash", "0000"), "does not match its noise_schedule"),
    ("bad type", lambda d: d["params"].__setitem__("spacing", 3), "'spacing' must be a string"),
    ("bad nfe type", set_key("nfe", "5"), "nfe must be an integer"),
    ("unknown param", lambda d: d["params"].__setitem__("rho", 7), "unknown parameter(s) rho"),
    ("schema", set_key("schema", 2), "schema 2 is not supported"),
    ("missing field", lambda d: d.pop("solver"), "missing field(s) solver"),
    ("bad solver", set_key("solver", {"name": "euler"}), "unknown solver 'euler'"),
]


@pytest.mark.parametrize("case,mutate,message", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_malformed_policy_file_gives_one_line_and_exit_2(case, mutate, message, tmp_path, tiny_checkpoint):
    path = write_doc(tmp_path, mutate)
    out = tmp_path / "grid.png"
    result = runner.invoke(app, ["sample", "--policy", str(path), "--model", str(tiny_checkpoint), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_policy_for_another_noise_schedule_is_refused(tmp_path, tiny_checkpoint):
    path = tmp_path / "cosine-schedule.json"
    save_policy(path, PolicyDocument(Uniform(nfe=5, schedule=NoiseSchedule("cosine"))))
    result = runner.invoke(app, ["sample", "--policy", str(path), "--model", str(tiny_checkpoint)])
    assert result.exit_code == 2 and "was made for noise schedule" in result.output


def test_missing_and_invalid_json_files_give_one_line_and_exit_2(tmp_path, tiny_checkpoint):
    missing = runner.invoke(app, ["sample", "--policy", str(tmp_path / "none.json"), "--model", str(tiny_checkpoint)])
    assert missing.exit_code == 2 and "not found" in missing.output
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema": 1,')
    invalid = runner.invoke(app, ["sample", "--policy", str(broken), "--model", str(tiny_checkpoint)])
    assert invalid.exit_code == 2 and "not valid JSON (line 1" in invalid.output


def test_export_then_sample_reproduces_the_same_policy(tmp_path, tiny_checkpoint):
    out = tmp_path / "imp.json"
    exported = runner.invoke(app, ["policy", "export", "importance", "--nfe", "10", "--out", str(out),
                                   "--model", str(tiny_checkpoint)])
    assert exported.exit_code == 0, exported.output
    doc = json.loads(out.read_text())
    assert doc["timesteps"] == Importance(nfe=10).timesteps().tolist()
    assert doc["provenance"]["model_hash"] == load_model(tiny_checkpoint).weights_hash
    grid, barcode = tmp_path / "g.png", tmp_path / "b.png"
    sampled = runner.invoke(app, ["sample", "--policy", str(out), "--model", str(tiny_checkpoint), "--n", "4",
                                  "--out", str(grid), "--barcode", str(barcode)])
    assert sampled.exit_code == 0, sampled.output
    assert "measured NFE 10.00" in sampled.output and barcode.exists()


def test_sample_accepts_kind_parameters(tmp_path, tiny_checkpoint):
    result = runner.invoke(app, ["sample", "--policy", "stepdrop", "--nfe", "10", "--param", "profile=linear",
                                 "--param", "base_steps=30", "--model", str(tiny_checkpoint), "--n", "8",
                                 "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 0, result.output
    assert "expected 10.00" in result.output
