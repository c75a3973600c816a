"""Every policy kind: its defining property, JSON round trip, and sampling the tiny model."""

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from stepdrop_search.cli import app
from stepdrop_search.diffusion.flow import FlowAdapter
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
    Shift,
    Sigmas,
    SkippedStep,
    StepDrop,
    Uniform,
)

runner = CliRunner()


def build(kind: str, nfe: int):
    if kind == "shift":
        return Shift(nfe=nfe, schedule=NoiseSchedule("flow"))
    if kind == "explicit":
        return Explicit(steps=tuple(Uniform(nfe=nfe, spacing="linspace").timesteps().tolist()))
    if kind == "sigmas":
        return Sigmas(sigmas=tuple(Karras(nfe=nfe, continuous=True).to_sigmas().tolist()))
    return POLICIES[kind](nfe=nfe)


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_every_kind_builds_round_trips_and_samples_at_standard_nfe(kind, tiny_checkpoint, tmp_path):
    loaded = load_model(tiny_checkpoint)
    if kind == "shift":  # a flow's kind: the same network as a (random) velocity model
        loaded = replace(loaded, model=FlowAdapter(loaded.model, NoiseSchedule("flow")), schedule=NoiseSchedule("flow"))
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
    ("schema", set_key("schema", 5), "schema 5 is not supported (this version reads schemas 1, 2, 3, 4)"),
    ("runtime", set_key("runtime", "nowhere"), "runtime must name one of stepdrop"),
    ("heun budget outside legacy", lambda d: d.update(solver={"name": "heun", "eta": 0.0, "nfe": 10}), "spent exactly only under the legacy"),
    ("schema true", set_key("schema", True), "schema True is not supported"),
    ("real timesteps in schema 1", lambda d: d.update(schema=1, kind="explicit", params={}, timesteps=[999, 500.5, 300, 100, 0]),
     "schema 1 timesteps are integers"),
    ("real timestep out of range", set_key("timesteps", [999.5, 500, 300, 100, 0]), "outside [0, 999]"),
    ("text timesteps", set_key("timesteps", ["999", 500, 300, 100, 0]), "timesteps must be numbers"),
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


# ---- every static kind over a spread of T, NFE and parameters: distinct steps and a file that reloads ----

def _skipped_step_params(T: int) -> list[dict]:
    t_cs = sorted({t for t in (0, 1, 5, T // 2, T - 2) if 0 <= t <= T - 2})
    return [dict(t_c=t_c, m=m) for t_c in t_cs for m in (None, 1, 3, T)]


def _importance_params(T: int) -> list[dict]:
    edges = [(900, 100), (max(2, 9 * T // 10), max(1, T // 10)), (T - 1, 1)]
    fractions = [(0.3, 0.4, 0.3), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.2, 0.6, 0.2)]
    return [dict(band_edges=e, fractions=f) for e in edges for f in fractions]


def _explicit_params(T: int, nfe: int) -> list[dict]:
    gen = torch.Generator().manual_seed(T * 7919 + nfe)
    random_subset = sorted(torch.randperm(T, generator=gen)[:nfe].tolist(), reverse=True)
    random_reals = sorted((torch.rand(nfe, generator=gen, dtype=torch.float64) * (T - 1)).tolist(), reverse=True)
    return [dict(steps=tuple(random_subset)), dict(steps=tuple(range(T - 1, T - 1 - nfe, -1))), dict(steps=tuple(random_reals))]


def _sigmas_params(schedule: NoiseSchedule, nfe: int) -> list[dict]:
    """σ lists as exported from a continuous and an integer schedule, with and without the trailing 0."""
    karras = Karras(nfe=nfe, continuous=True, schedule=schedule).to_sigmas().tolist()
    uniform = Uniform(nfe=nfe, schedule=schedule).to_sigmas().tolist()
    return [dict(sigmas=tuple(karras)), dict(sigmas=tuple(uniform[:-1]))]


# Parameter spreads per static kind (given the schedule and NFE); a new static kind without an entry fails the test.
SPREADS = {
    "uniform": lambda s, nfe: [dict(spacing=sp) for sp in ("leading", "trailing", "linspace")],
    "quadratic": lambda s, nfe: [{}],
    "cosine": lambda s, nfe: [{}],
    "logsnr": lambda s, nfe: [dict(continuous=c) for c in (False, True)],
    "karras": lambda s, nfe: [dict(rho=r, continuous=c) for r in (0.5, 1.0, 7.0, 30.0) for c in (False, True)],
    "importance": lambda s, nfe: _importance_params(s.T),
    "skipped-step": lambda s, nfe: _skipped_step_params(s.T),
    "explicit": lambda s, nfe: _explicit_params(s.T, nfe),
    "sigmas": _sigmas_params,
    "shift": lambda s, nfe: [dict(shift=v, spacing=sp, continuous=c) for v in (0.25, 1.0, 3.0, 16.0)
                             for sp in ("trailing", "linspace") for c in (False, True)],
}
CONTINUOUS_KINDS = ("explicit", "sigmas")  # besides continuous=true: the kinds that may give real timesteps
SPREAD_SCHEDULES = (NoiseSchedule(T=2), NoiseSchedule("cosine", 7), NoiseSchedule("linear", 50),
                    NoiseSchedule("scaled_linear", 1000, 0.00085, 0.012), NoiseSchedule(), NoiseSchedule("flow", 50),
                    NoiseSchedule("flow"))


def _nfes(T: int) -> list[int]:
    return sorted({n for n in (1, 2, 3, 5, 10, 20, 21, 50, T // 2, T - 1, T) if 1 <= n <= T})


def _skipped_step_fits(T: int, nfe: int, t_c: int, m: int | None) -> bool:
    """Brute force: some jump size (the given one, or any when m is omitted) leaves 1..t_c+1 steps below t_c."""
    span = T - 1 - t_c
    return any(nfe - t_c - 1 <= -(-span // size) <= nfe - 1 for size in ([m] if m else range(1, span + 1)))


def test_the_spread_covers_every_static_kind():
    assert set(SPREADS) == {kind for kind, cls in POLICIES.items() if cls.static}


@pytest.mark.parametrize("kind", sorted(SPREADS))
def test_every_static_policy_gives_distinct_decreasing_steps_and_reloads(kind, tmp_path):
    built = 0
    for schedule in SPREAD_SCHEDULES:
        T = schedule.T
        for nfe in _nfes(T):
            for params in SPREADS[kind](schedule, nfe):
                try:
                    policy = POLICIES[kind](nfe=nfe, schedule=schedule, **params)
                except UserError as exc:  # an impossible combination: refused in one line, never half-built
                    assert "\n" not in str(exc)
                    assert kind != "skipped-step" or not _skipped_step_fits(T, nfe, **params), (nfe, params, exc)
                    continue
                assert kind != "skipped-step" or _skipped_step_fits(T, nfe, **params)
                steps = policy.timesteps()
                where = f"{kind} T={T} nfe={nfe} {params}: {steps.tolist()}"
                whole = bool((steps == steps.round()).all())
                assert steps.dtype == (torch.long if whole else torch.float64) and len(steps) == nfe, where
                assert whole or params.get("continuous") or kind in CONTINUOUS_KINDS, where
                assert (steps[1:] < steps[:-1]).all(), where  # strictly decreasing, hence distinct
                assert 0 <= steps.min() and steps.max() <= T - 1, where
                path = save_policy(tmp_path / "p.json", PolicyDocument(policy, SolverSpec("dpmpp-2m")))
                back = load_policy(path, schedule).policy
                assert back == policy and torch.equal(back.timesteps(), steps), where
                built += 1
    assert built >= 20  # the spread is not vacuous: most combinations are possible


def test_skipped_step_picks_an_m_that_fits_below_a_low_t_c():
    # Was: m = 100, ten jumps, then ten steps rounded onto the six timesteps 5..0 (…, 4, 4, 3, 3, …).
    policy = SkippedStep(nfe=20, t_c=5)
    steps = policy.timesteps().tolist()
    assert len(set(steps)) == 20 and steps[-6:] == [5, 4, 3, 2, 1, 0] and policy.jumps() == 14
    assert SkippedStep(nfe=20).m == 40  # where the half-and-half default fits, it is unchanged


def test_skipped_step_with_more_steps_than_fit_below_t_c_says_what_fits():
    with pytest.raises(UserError, match=r"10 steps below t_c=5 .* at most t_c \+ 1 = 6 distinct timesteps"):
        SkippedStep(nfe=20, t_c=5, m=100)


# ---- scaled_linear betas survive a policy file; a file made on another model warns ----

def test_policy_file_keeps_scaled_linear_betas_for_the_diffusers_export(tmp_path):
    from stepdrop_search.interop import scheduler_config_from_schedule

    schedule = NoiseSchedule("scaled_linear", 1000, 0.00085, 0.012)
    path = save_policy(tmp_path / "p.json", PolicyDocument(Uniform(nfe=10, schedule=schedule)))
    back = load_policy(path, schedule).policy.schedule
    assert back == schedule and torch.equal(back.betas, schedule.betas)
    config = scheduler_config_from_schedule(back)
    assert (config["beta_start"], config["beta_end"]) == (0.00085, 0.012)
    other = NoiseSchedule("scaled_linear", 1000, 0.0001, 0.02)
    with pytest.raises(UserError, match="was made for noise schedule"):
        load_policy(path, other)


def test_foreign_model_warning_names_the_model_a_policy_was_made_for():
    from stepdrop_search.policies.io import foreign_model_warning, provenance

    doc = PolicyDocument(Uniform(nfe=5), provenance=provenance("optimize", "09e615e16b2ba47f", objective={"fid": 177.9}))
    message = foreign_model_warning(doc, "f96ff1f0d8ae4fc0", "p.json")
    assert "p.json" in message and "09e615e16b2ba47f" in message and "f96ff1f0d8ae4fc0" in message
    assert "do not apply to this model" in message and "\n" not in message
    assert foreign_model_warning(doc, "09e615e16b2ba47f") is None
    assert foreign_model_warning(PolicyDocument(Uniform(nfe=5)), "f96ff1f0d8ae4fc0") is None  # no provenance


def test_cli_warns_once_on_stderr_when_a_policy_file_meets_another_model(tmp_path, tiny_checkpoint):
    from stepdrop_search.policies.io import provenance

    own = load_model(tiny_checkpoint).weights_hash
    foreign, native = tmp_path / "foreign.json", tmp_path / "native.json"
    save_policy(foreign, PolicyDocument(Uniform(nfe=5), provenance=provenance("optimize", "0123456789abcdef")))
    save_policy(native, PolicyDocument(Uniform(nfe=5), provenance=provenance("optimize", own)))
    warned = runner.invoke(app, ["policy", "show", str(foreign), "--model", str(tiny_checkpoint)])
    assert warned.exit_code == 0, warned.output
    lines = [line for line in warned.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "warning:" in lines[0] and "0123456789abcdef" in lines[0] and own in lines[0]
    assert json.loads(warned.stdout)["provenance"]["model_hash"] == "0123456789abcdef"  # the document is unchanged
    quiet = runner.invoke(app, ["policy", "show", str(native), "--model", str(tiny_checkpoint)])
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_shipped_policy_files_were_made_on_the_shipped_model():
    """A policy in the repo's policies/ is a result for the shipped model (a test artefact once landed there)."""
    from pathlib import Path

    from stepdrop_search.loading import load_default_model
    from stepdrop_search.policies.io import foreign_model_warning

    shipped = load_default_model()
    files = sorted((Path(__file__).resolve().parent.parent / "policies").glob("*.json"))
    assert files
    for path in files:
        assert foreign_model_warning(load_policy(path, shipped.schedule), shipped.weights_hash, path.name) is None


def test_the_test_run_fails_if_a_test_writes_into_the_repo_policies_or_studies(tmp_path):
    """The guard in conftest.py: defaults land in the test's tmp_path; a write into the repo fails the run."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "policies").mkdir()
    shutil.copy(Path(__file__).with_name("conftest.py"), repo / "tests" / "conftest.py")
    (repo / "tests" / "test_writes.py").write_text(
        "from pathlib import Path\n"
        "def test_default_relative_output_stays_in_tmp_path():\n"
        "    Path('policies').mkdir(); Path('policies/a.json').write_text('{}')\n"
        "def test_absolute_write_into_the_repo():\n"
        "    (Path(__file__).resolve().parent.parent / 'studies').mkdir()\n"
        "    (Path(__file__).resolve().parent.parent / 'studies' / 'b.db').write_text('x')\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=repo,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0, result.stdout
    assert "2 passed" in result.stdout and "tests wrote into the repository: studies/b.db;" in result.stdout, result.stdout
    assert not (repo / "policies" / "a.json").exists()
