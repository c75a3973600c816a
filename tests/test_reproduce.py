"""`bench/reproduce.sh --quick`: every step of the figure pipeline runs on the shipped model at tiny sizes, and a
second run into the same folder keeps what the first one made (a killed full run is continued, not restarted)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stepdrop_search.loading import load_default_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "reproduce.sh"

#: one result of each step, as the full run writes them into its results folder
RESULTS = ["ddim-sanity-2000x3.json", "model-compare.md", "suite-stepdrop.json", "solvers-nfe5-10-25.json",
           "solvers-nfe5-10-25-clamp.json", "runtime-clamp.md",
           "sampler-speed.txt", "stochastic-variance.json", "teacher-accuracy.txt", "small-sample-bias-nfe10.txt",
           "optimize-nfe25/best.json", "optimize-nfe25/paired.md",
           "optimize-nfe25-comfyui/best.json", "export-fidelity.md", "learned-nfe5/paired.md",
           "learned-nfe5/rung-correlation.txt", "few-nfe/paired.md", "gradient-losses-unipc-nfe5.txt", "resample/paired-nfe25.md",
           "peers/peers.json", "figures/samples-across-nfe.png", "figures/quality-vs-nfe.png"]
#: the results of the steps that need the Fashion-MNIST images (the metric's floor, the S2-DM fine-tunes, the real side
#: of more_steps.py)
NEED_IMAGES = ["metric-floor.txt", "s2dm-ablation-paired.md", "finetune-compare.md", "more-steps.md"]


def have_fashion_mnist() -> bool:
    """Whether the steps that need the images (the metric's floor, the S2-DM fine-tunes) run on this machine."""
    from stepdrop_search.data import load_dataset
    from stepdrop_search.errors import UserError

    try:
        load_dataset("fashion-mnist")
    except UserError:
        return False
    return True


def reproduce(out: Path, cache: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"OUT": str(out), "STEPDROP_CACHE": str(cache),
                        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", str(SCRIPT), "--quick"], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_quick_reproduction_runs_every_step_and_a_second_run_keeps_what_the_first_made(tmp_path):
    out, cache = tmp_path / "results", tmp_path / "cache"
    first = reproduce(out, cache)
    assert first.returncode == 0, first.stderr[-4000:]
    steps = re.findall(r'^step "([^"$]+)', SCRIPT.read_text(), flags=re.M)
    ran = [line for line in first.stderr.splitlines() if line.startswith("== ")]
    assert len(steps) > 10 and all(any(step in line for line in ran) for step in steps)
    expected = RESULTS + (NEED_IMAGES if have_fashion_mnist() else [])
    missing = [name for name in expected if not (out / name).is_file()]
    assert not missing, f"reproduce.sh --quick did not write {missing}"
    assert json.loads((out / "solvers-nfe5-10-25.json").read_text())["meta"]["samples"] == 8  # the quick sizes
    # the shipped model against the one it replaced, row by row (8 samples cannot tell which is better: 0.5 judge FID)
    comparison = (out / "model-compare.md").read_text()
    compared = re.match(r"old: model (\w+), .*new: model (\w+),", comparison)
    assert compared and compared[1] != compared[2] == load_default_model().weights_hash
    assert "| heun-10 |" in comparison

    made = {name: (out / name).stat().st_mtime_ns for name in RESULTS}
    remade = ["teacher-accuracy.txt", "peers/peers.json"]  # a step and the peers' report, killed before they ended
    for name in remade:
        (out / name).unlink()
    second = reproduce(out, cache)
    assert second.returncode == 0, second.stderr[-4000:]
    assert all((out / name).is_file() for name in remade)
    evaluated = [name for name in RESULTS if name.endswith(".json") and name not in remade
                 and (out / name).stat().st_mtime_ns != made[name]]
    assert not evaluated, f"the second run remade {evaluated} instead of keeping them"
    assert f"kept {out}/solvers-nfe5-10-25.json" in second.stderr
    assert f"kept {out}/peers/optuna-ddim-nfe5.json" in second.stderr  # the peers' searches are not run again


def test_a_full_run_on_another_model_is_refused_without_its_own_results_folder(tmp_path):
    """MODEL without OUT would keep the shipped model's results (the default folder) as the candidate's: one line,
    exit 2, before any work."""
    env = {k: v for k, v in os.environ.items() if k != "OUT"} | {
        "MODEL": str(tmp_path / "candidate.pt"), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "needs its own OUT" in run.stderr
