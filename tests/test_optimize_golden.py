"""The golden run: every decision ``optimize`` takes on the tiny model with fixed seeds, pinned.

A restructuring of the search must leave these unchanged; a change of behaviour changes this file in the same
commit, and the commit says why. Only decisions are pinned (names and sets), never scores, so the test reads what
the pipeline chose, not how a float rounds on this CPU.
"""

import pytest

from stepdrop_search.diffusion.solvers import SOLVERS
from stepdrop_search.search.optimize import optimize
from stepdrop_search.search.settings import OptimizeSettings

SETTINGS = dict(nfe=4, method="all", trials=22, budget=None, samples=16, trial_samples=16, promote=2,
                promote_samples=24, finalists=2, held_out_samples=32, gradient_samples=16, gradient_epochs=1,
                gradient_batch=8, dp_grid=12, dp_samples=4, dp_oss_samples=2)
SCHEDULES = ("uniform", "logsnr", "karras", "quadratic", "dp-gits", "dp-oss")

GOLDEN = {
    "pool": sorted({f"{solver}/{schedule}" for solver in SOLVERS for schedule in SCHEDULES} | {"unipc/gradient"}),
    # rung 1: each solver's best rung-0 row, the 6 best overall, the learned row and the study's 2 best new trials
    "rung1": ["ddim/dp-gits", "ddpm/dp-gits", "ddpm/dp-oss", "ddpm/uniform", "dpmpp-2m-sde/dp-gits",
              "dpmpp-2m-sde/dp-oss", "dpmpp-2m-sde/karras", "dpmpp-2m/karras", "dpmpp-3m/karras", "heun/dp-gits",
              "ipndm/karras", "optuna-trial-12 (dpmpp-2m-sde)", "optuna-trial-13 (ddpm)", "unipc/gradient",
              "unipc/karras"],
    "search_solvers": ["dpmpp-2m-sde", "ddpm", "unipc"],
    "gradient_inits": {"unipc/gradient": "unipc/karras"},
    "searched": ["optuna-trial-12 (dpmpp-2m-sde)", "optuna-trial-13 (ddpm)"],
    "finalists": ["dpmpp-2m-sde/dp-gits", "dpmpp-2m-sde/dp-oss", "optuna-trial-12 (dpmpp-2m-sde)"],
    "export": "optuna-trial-12 (dpmpp-2m-sde)",
    "trials": 22,
}


def decisions(result) -> dict:
    """What a run decided, by name."""
    return {"pool": sorted(c.name for c in result.candidates if c.source == "pool"),
            "rung1": sorted(c.name for c in result.candidates if result.sizes.rung1 in c.rungs),
            "search_solvers": list(result.search_solvers),
            "gradient_inits": {c.name: c.made_by["init"] for c in result.candidates if c.made_by},
            "searched": sorted(c.name for c in result.candidates if c.source != "pool"),
            "finalists": sorted(c.name for c in result.finalists), "export": result.best.name, "trials": result.trials}


@pytest.fixture(autouse=True)
def private_cache_and_workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("STEPDROP_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def test_optimize_takes_the_golden_decisions_on_the_tiny_model(tiny_checkpoint, tiny_features, tmp_path):
    cfg = OptimizeSettings.from_flags(model=str(tiny_checkpoint), features=str(tiny_features), storage=f"sqlite:///{tmp_path}/s.db",
                         out=str(tmp_path / "best.json"), **SETTINGS)
    assert decisions(optimize(cfg)) == GOLDEN
