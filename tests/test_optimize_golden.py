"""The golden run: every decision ``optimize`` takes on the tiny model with fixed seeds, pinned.

A restructuring of the search must leave these unchanged; a change of behaviour changes this file in the same
commit, and the commit says why. Only decisions are pinned (names and sets), never scores, so the test reads what
the pipeline chose, not how a float rounds on this CPU.
"""

import pytest

from stepdrop_search.search.optimize import optimize
from stepdrop_search.search.settings import OptimizeSettings

SETTINGS = dict(nfe=4, method="all", trials=22, budget=None, samples=16, trial_samples=16, promote=2,
                promote_samples=24, held_out_samples=64, gradient_samples=16, gradient_epochs=1,
                gradient_batch=8, dp_grid=12, dp_samples=4, dp_oss_samples=2)

# Since the selection issue: the pool is also built at cheaper NFEs (``@3``) and holds each sampler once (DP-OSS found
# DP-GITS's steps on this grid, and Heun spends 3 NFE at both budgets); every row and the study's best race on the
# judge (here a residual net on half of the synthetic images), and a cheaper row level with the leader once the race
# reaches its largest round takes the export if it stays level in a deciding round (NFE is a ceiling). The study is seeded with the best
# rung-0 rows first, only as many as --trials leaves room for. Since the learned-solver issue, NFE 4 also learns a
# solver (learned-3m) from DPM-Solver++(3M)'s best rung-1 row; here no epoch beats that start on its validation x_T,
# so it proposes nothing and every decision stays as it was.
GOLDEN = {'export': 'dpmpp-2m-sde/dp-gits@3',
 'gradient_inits': {'unipc/gradient': 'unipc/karras'},
 'leader': 'dpmpp-2m-sde/dp-gits@3',
 'pool': ['ddim/dp-gits', 'ddim/dp-gits@3', 'ddim/karras', 'ddim/karras@3', 'ddim/logsnr', 'ddim/logsnr@3',
          'ddim/quadratic', 'ddim/quadratic@3', 'ddim/uniform', 'ddim/uniform@3', 'ddpm/dp-gits', 'ddpm/dp-gits@3',
          'ddpm/karras', 'ddpm/karras@3', 'ddpm/logsnr', 'ddpm/logsnr@3', 'ddpm/quadratic', 'ddpm/quadratic@3',
          'ddpm/uniform', 'ddpm/uniform@3', 'dpmpp-2m-sde/dp-gits', 'dpmpp-2m-sde/dp-gits@3', 'dpmpp-2m-sde/karras',
          'dpmpp-2m-sde/karras@3', 'dpmpp-2m-sde/logsnr', 'dpmpp-2m-sde/logsnr@3', 'dpmpp-2m-sde/quadratic',
          'dpmpp-2m-sde/quadratic@3', 'dpmpp-2m-sde/uniform', 'dpmpp-2m-sde/uniform@3', 'dpmpp-2m/dp-gits',
          'dpmpp-2m/dp-gits@3', 'dpmpp-2m/karras', 'dpmpp-2m/karras@3', 'dpmpp-2m/logsnr', 'dpmpp-2m/logsnr@3',
          'dpmpp-2m/quadratic', 'dpmpp-2m/quadratic@3', 'dpmpp-2m/uniform', 'dpmpp-2m/uniform@3', 'dpmpp-3m/dp-gits',
          'dpmpp-3m/dp-gits@3', 'dpmpp-3m/karras', 'dpmpp-3m/karras@3', 'dpmpp-3m/logsnr', 'dpmpp-3m/logsnr@3',
          'dpmpp-3m/quadratic', 'dpmpp-3m/quadratic@3', 'dpmpp-3m/uniform', 'dpmpp-3m/uniform@3', 'heun/dp-gits',
          'heun/logsnr', 'heun/uniform', 'ipndm/dp-gits', 'ipndm/dp-gits@3', 'ipndm/karras', 'ipndm/karras@3',
          'ipndm/logsnr', 'ipndm/logsnr@3', 'ipndm/quadratic', 'ipndm/quadratic@3', 'ipndm/uniform',
          'ipndm/uniform@3', 'unipc/dp-gits', 'unipc/dp-gits@3', 'unipc/gradient', 'unipc/karras', 'unipc/karras@3',
          'unipc/logsnr', 'unipc/logsnr@3', 'unipc/quadratic', 'unipc/quadratic@3', 'unipc/uniform',
          'unipc/uniform@3'],
 'rounds': [16, 32, 64],
 'rung1': ['ddim/dp-gits', 'ddpm/dp-gits', 'ddpm/karras', 'ddpm/uniform', 'dpmpp-2m-sde/dp-gits',
           'dpmpp-2m-sde/karras', 'dpmpp-2m-sde/uniform', 'dpmpp-2m/karras', 'dpmpp-3m/karras', 'heun/dp-gits',
           'ipndm/karras', 'unipc/karras'],
 'search_solvers': ['dpmpp-2m-sde', 'ddpm', 'unipc'],
 'searched': ['optuna-trial-16 (dpmpp-2m-sde)', 'optuna-trial-21 (dpmpp-2m-sde)'],
 'still_in': ['ddpm/dp-gits', 'ddpm/dp-gits@3', 'ddpm/karras', 'ddpm/karras@3', 'ddpm/logsnr', 'ddpm/uniform@3',
              'dpmpp-2m-sde/dp-gits@3', 'dpmpp-2m-sde/karras', 'dpmpp-2m-sde/uniform',
              'optuna-trial-16 (dpmpp-2m-sde)', 'optuna-trial-21 (dpmpp-2m-sde)'],
 'trials': 22}


def decisions(result) -> dict:
    """What a run decided, by name."""
    board = result.leaderboard
    return {"pool": sorted(c.name for c in result.candidates if c.source == "pool"),
            "rung1": sorted(c.name for c in result.candidates if result.sizes.rung1 in c.rungs),
            "search_solvers": list(result.search_solvers),
            "gradient_inits": {c.name: c.made_by["init"] for c in result.candidates if c.made_by},
            "searched": sorted(c.name for c in result.candidates if c.source != "pool"),
            "rounds": board.rounds, "still_in": sorted(c.name for c in board.rows if "round" not in c.held_out.status),
            "leader": board.leader.name, "export": result.best.name, "trials": result.trials}


@pytest.fixture(autouse=True)
def private_cache_and_workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("STEPDROP_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def test_optimize_takes_the_golden_decisions_on_the_tiny_model(tiny_checkpoint, tiny_features, tiny_judge, tmp_path):
    cfg = OptimizeSettings.from_flags(model=str(tiny_checkpoint), features=str(tiny_features), judge=str(tiny_judge),
                                      storage=f"sqlite:///{tmp_path}/s.db", out=str(tmp_path / "best.json"), **SETTINGS)
    assert decisions(optimize(cfg)) == GOLDEN
