"""The learned solver (learned-3m): what zero coefficients are, what any coefficients keep, what learning them buys on a
problem with a known answer, its file, and the python export that runs it elsewhere."""

import itertools
import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from stepdrop_search.cli import app
from stepdrop_search.diffusion.sampler import Plan, sample
from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.errors import UserError
from stepdrop_search.generation import generate, initial_noise
from stepdrop_search.kdiffusion import kdiffusion_modules
from stepdrop_search.loading import load_model
from stepdrop_search.policies import PolicyDocument, load_policy, save_policy
from stepdrop_search.policies.kinds import Explicit, StepDrop, Uniform
from stepdrop_search.policies.transfer import check_export, python_text
from stepdrop_search.search.gradient import StepLogits, learn_schedule
from tests.gaussian_data import SCHEDULE, GaussianEps, exact_x0

runner = CliRunner()
STEPS = (999.0, 773.1, 592.87, 410.88, 185.52)
ROWS = ((0.0, 0.0), (0.12, 0.0), (-0.05, 0.08), (0.1, -0.03), (0.2, 0.05))


class ConstantData(nn.Module):
    """ε consistent with one fixed x0 at every state: a consistent solver must return that x0 whatever its weights."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = SCHEDULE.alphas_cumprod_at(t.double()).view(-1, 1, 1, 1)
        return ((x - a.sqrt() * self.x0) / (1 - a).sqrt()).float()


def run(model, x, steps, spec, name=None):
    grid = torch.tensor(steps, dtype=torch.float64)
    return sample(model, SCHEDULE, x, Plan(grid, (name or spec.name,) * len(steps)), solver=spec)


def test_zero_coefficients_are_dpm_solver_3m_exactly():
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    base = run(GaussianEps(), x, STEPS, SolverSpec("dpmpp-3m"))
    learned = run(GaussianEps(), x, STEPS, SolverSpec("learned-3m", coefficients=((0.0, 0.0),) * 5))
    assert torch.equal(base.x0, learned.x0) and learned.nfe.tolist() == [5] * 6
    assert not torch.equal(run(GaussianEps(), x, STEPS, SolverSpec("learned-3m", coefficients=ROWS)).x0, base.x0)


def test_any_coefficients_keep_the_solver_consistent():
    """The offsets move weight between earlier x̂0 and never change the weights' sum: a constant x̂0 is returned exactly."""
    x0 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    out = run(ConstantData(x0), x, STEPS, SolverSpec("learned-3m", coefficients=((0, 0), (0.7, 0), (-1.3, 2.1), (0.4, 0.9), (3, -2))))
    assert float((out.x0 - x0).abs().max()) < 1e-4


def test_learned_coefficients_go_below_the_best_steps_a_fixed_solver_can_reach():
    """On Gaussian data (exact answer known), three steps of DPM-Solver++(3M): the best steps by brute force on a grid,
    then steps and coefficients learned together from them, on validation x_T no training saw."""
    model = GaussianEps()
    gen = torch.Generator().manual_seed(0)
    x_train, x_val = torch.randn(64, 1, 4, 4, generator=gen), torch.randn(64, 1, 4, 4, generator=gen)
    logits = StepLogits(SCHEDULE, 3)

    def steps_at(a, b):
        return torch.cat([torch.tensor([999.0], dtype=torch.float64),
                          logits._time(logits.start + torch.stack([a, b]) * (logits.end - logits.start))])

    def loss(steps, spec):
        return float((run(model, x_val, steps.tolist(), spec).x0 - exact_x0(x_val)).pow(2).mean())

    us = torch.linspace(0, 1, 42, dtype=torch.float64)[1:-1]
    best, best_steps = min((loss(steps_at(a, b), SolverSpec("dpmpp-3m")), steps_at(a, b))
                           for a, b in itertools.combinations(us, 2))
    result = learn_schedule(model, SCHEDULE, SolverSpec("learned-3m"), 3, train=(x_train, exact_x0(x_train)),
                            validation=(x_val, exact_x0(x_val)), init=best_steps, epochs=40, forcing=False, lr=5e-3,
                            coefficient_lr=2e-2)
    assert result.initial_validation_loss == pytest.approx(best, rel=1e-6)  # step 0 is the base solver
    assert result.validation_loss < 0.5 * best
    assert result.solver.name == "learned-3m" and isinstance(result.solver.coefficients, tuple)
    assert loss(result.steps, result.solver) == pytest.approx(result.validation_loss, rel=1e-6)  # the kept epoch's pair


def test_coefficients_are_refused_in_one_line_where_they_cannot_apply():
    with pytest.raises(UserError, match="takes no coefficients"):
        SolverSpec("dpmpp-3m", coefficients=ROWS)
    with pytest.raises(UserError, match="does not exist yet"):
        SolverSpec("learned-3m", coefficients=((0.1, 0.0),) + ROWS[1:])
    with pytest.raises(UserError, match="rows of 2 finite numbers"):
        SolverSpec("learned-3m", coefficients=((0.0, float("nan")),))
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(UserError, match="2 coefficient rows for a 5-step grid"):
        run(GaussianEps(), x, STEPS, SolverSpec("learned-3m", coefficients=ROWS[:2]))
    plan = StepDrop(nfe=5, schedule=SCHEDULE).plan(2, solver="learned-3m")
    with pytest.raises(UserError, match="static policies only"):
        sample(GaussianEps(), SCHEDULE, x, plan, solver=SolverSpec("learned-3m"))


def document(rows=ROWS):
    return PolicyDocument(Explicit(steps=STEPS, schedule=SCHEDULE), SolverSpec("learned-3m", coefficients=rows))


def test_a_policy_file_keeps_the_coefficients_and_refuses_rows_that_do_not_fit(tmp_path):
    save_policy(tmp_path / "learned.json", document())
    loaded = load_policy(tmp_path / "learned.json")
    assert loaded.solver.coefficients == ROWS and loaded == document()
    doc = json.loads((tmp_path / "learned.json").read_text())
    doc["solver"]["coefficients"].pop()
    broken = tmp_path / "short.json"
    broken.write_text(json.dumps(doc))
    result = runner.invoke(app, ["policy", "show", str(broken)])
    assert result.exit_code == 2 and "4 solver coefficient rows for 5 timesteps" in result.output
    assert "Traceback" not in result.output


def test_sigma_exports_refuse_a_learned_solver_and_point_to_the_python_export():
    for fmt in ("sigmas", "comfyui", "a1111", "diffusers"):
        with pytest.raises(UserError, match="no σ-list tool runs.*Fix: export it with --format python"):
            check_export(document(), fmt, "learned.json")
    heun = PolicyDocument(Uniform(nfe=5, schedule=SCHEDULE), SolverSpec("heun"))
    with pytest.raises(UserError, match="python has no heun"):
        check_export(heun, "python", "heun.json")


@pytest.mark.parametrize("rows", [ROWS, None], ids=["learned", "zero rows (dpmpp-3m)"])
def test_the_python_export_reproduces_our_samples_through_a_k_diffusion_denoiser(tmp_path, rows):
    loaded = load_model(None)
    doc = document(rows) if rows is not None else PolicyDocument(Explicit(steps=STEPS, schedule=loaded.schedule),
                                                                    SolverSpec("dpmpp-3m"))
    save_policy(tmp_path / "p.json", doc)
    result = runner.invoke(app, ["policy", "export", str(tmp_path / "p.json"), "--format", "python", "--out",
                                 str(tmp_path / "sampler.py")])
    assert result.exit_code == 0, result.output
    source = (tmp_path / "sampler.py").read_text()
    assert {line for line in source.splitlines() if line.startswith(("import ", "from "))} == {"import math", "import torch"}
    namespace: dict = {}
    exec(compile(source, "sampler.py", "exec"), namespace)  # the file as a user runs it: torch only
    _, external = kdiffusion_modules()
    denoiser = external.DiscreteEpsDDPMDenoiser(loaded.model, loaded.schedule.alphas_cumprod.float(), quantize=False)
    noise = initial_noise(8, (1, 28, 28), 3)
    sigmas = torch.tensor(namespace["SIGMAS"])
    theirs = namespace["sample"](denoiser, noise * (1 + sigmas[0] ** 2) ** 0.5, sigmas, namespace["COEFFICIENTS"])
    ours = generate(loaded.model, loaded.schedule, doc.policy, doc.solver, n=8, seed=3).x0
    assert float((theirs - ours).abs().max()) <= 1e-4
    assert len(python_text(doc, "p.json").splitlines()) <= 100


def test_resampling_a_learned_solver_keeps_its_base_and_says_the_coefficients_stay_behind(tmp_path):
    save_policy(tmp_path / "learned.json", document())
    result = runner.invoke(app, ["policy", "resample", str(tmp_path / "learned.json"), "--nfe", "4", "--out",
                                 str(tmp_path / "r4.json")])
    assert result.exit_code == 0 and "runs its base solver, dpmpp-3m" in result.output
    moved = load_policy(tmp_path / "r4.json")
    assert moved.solver.name == "dpmpp-3m" and moved.solver.coefficients is None and moved.policy.nfe == 4
