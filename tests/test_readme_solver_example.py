"""docs/methods.md's "adding a solver" example runs, registers, and is the iPNDM update capped at order 2."""

import re
from pathlib import Path

import torch

from stepdrop_search.diffusion.solvers import SOLVERS, SolverSpec
from stepdrop_search.generation import generate
from stepdrop_search.loading import load_model
from stepdrop_search.policies.kinds import Explicit

README = Path(__file__).resolve().parent.parent / "docs" / "methods.md"


def test_readme_solver_example_registers_a_working_solver(tiny_checkpoint):
    block = re.search(r"<!-- solver-example -->\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    try:
        exec(compile(block, "docs/methods.md", "exec"), {})
        assert "ab2" in SOLVERS
        loaded = load_model(tiny_checkpoint)
        # three evaluated steps: Euler, then AB2, then x̂0 — iPNDM does exactly that on a 3-step grid
        policy = Explicit(steps=(999, 600, 250), schedule=loaded.schedule)
        ab2 = generate(loaded.model, loaded.schedule, policy, SolverSpec("ab2"), n=4, seed=1)
        ipndm = generate(loaded.model, loaded.schedule, policy, SolverSpec("ipndm"), n=4, seed=1)
        assert torch.allclose(ab2.x0, ipndm.x0, atol=1e-4, rtol=1e-5)
        assert ab2.nfe.tolist() == [3] * 4
    finally:
        SOLVERS.pop("ab2", None)
