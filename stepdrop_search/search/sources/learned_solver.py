"""A learned solver (:mod:`~stepdrop_search.diffusion.solvers.learned`): steps and per-step solver coefficients learned
together by gradient through the sampler, where the steps alone stop short — at the lowest NFE.

It starts from the best DPM-Solver++(3M) schedule the run has (the learned steps' when the gradient method ran before
it, else the best rung-1 row), with its coefficients at 0: step 0 of training *is* that solver, and the coefficients of
the best validation epoch are kept, so a learned solver is proposed only when it beat its start on x_T the training
never saw. Its training and validation x_T are not the learned steps': those steps were picked on their validation set,
which flatters them (a first run at NFE 5 found no epoch that beat them there). Like every candidate it then races on
the judge: it is exported only if it beats the pool there.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.diffusion.solvers.learned import LearnedMultistep
from stepdrop_search.policies.kinds import Explicit
from stepdrop_search.progress import phase
from stepdrop_search.search.candidates import Candidate, ranked
from stepdrop_search.search.gradient import learn_schedule
from stepdrop_search.search.sources.gradient import training_pairs

if TYPE_CHECKING:
    from stepdrop_search.search.run import Run

#: By default a learned solver is tried at this NFE and below (where the field reports its gains); above it only
#: without a time limit or when ``--method`` names it.
DEFAULT_MAX_NFE = 6
#: the solver whose steps it starts from (its coefficients at 0 are that solver)
BASE = LearnedMultistep.base


class LearnedSolver:
    name = "learned-solver"

    def applies(self, run: Run) -> bool:
        """Whether this run learns a solver: at NFE ≤ :data:`DEFAULT_MAX_NFE`, with no time limit, or when asked by name."""
        search = run.settings.search
        return search.nfe <= DEFAULT_MAX_NFE or run.budget.seconds is None or self.name in search.method.split(",")

    def candidates(self, run: Run, seconds: float | None) -> list[Candidate]:
        settings, search = run.settings.search.gradient, run.settings.search
        if not run.runtime.has_solver(LearnedMultistep.name):
            run.log(f"learned solver: runtime {run.runtime.name} cannot run learned coefficients; skipped")
            return []
        epoch = run.budget.cost(search.nfe * 4 * settings.samples)
        if seconds is not None and seconds < epoch:
            run.log(f"learned solver: {seconds:.0f} s is less than one epoch (≈ {epoch:.0f} s); skipped "
                    "(raise --budget to learn a solver at this NFE)")
            return []
        start = self.start(run)
        if start is None:
            run.log(f"learned solver: no finite {BASE} row at NFE {search.nfe} to start from; skipped")
            return []
        steps = len(start.document.policy.timesteps())
        n = settings.samples
        # x_T the learned steps it may start from never saw: their validation set picked them, so it flatters them
        x_T, target = training_pairs(run, after=1)
        phase(run.log, f"learned solver: {LearnedMultistep.name} from {start.name}, steps and coefficients, {settings.loss} "
              f"loss on {n} + {n} samples" + (f", {seconds:.0f} s" if seconds is not None else ""), settings.solver_epochs)
        res = learn_schedule(run.loaded.model, run.loaded.schedule, SolverSpec(LearnedMultistep.name), steps,
                             train=(x_T[:n], target[:n]), validation=(x_T[n:], target[n:]),
                             init=start.document.policy.timesteps(), space=settings.space, loss=settings.loss,
                             features=run.coach, epochs=settings.solver_epochs, batch_size=settings.batch,
                             lr=settings.solver_lr, coefficient_lr=settings.solver_lr, seconds=seconds, seed=search.seed,
                             runtime=run.runtime, log=run.log)
        run.log(f"learned solver: validation {settings.loss} {res.initial_validation_loss:.4f} → {res.validation_loss:.4f} "
                f"in {res.epochs} epochs, {res.seconds:.0f} s; steps {[round(float(t), 2) for t in res.steps]}, "
                f"coefficients {[[round(v, 3) for v in row] for row in res.solver.coefficients]}")
        if not res.validation_loss < res.initial_validation_loss:
            run.log(f"learned solver: no epoch beat its start ({BASE} on {start.name}'s steps) on validation; not proposed")
            return []
        document = run.document(Explicit(steps=tuple(res.steps.tolist()), schedule=run.loaded.schedule), res.solver)
        return run.runnable([Candidate(f"{LearnedMultistep.name}/gradient", document, "pool", nfe_budget=search.nfe, made_by={
            "method": "gradient", "learned": "steps and solver coefficients", "init": start.name, "loss": settings.loss,
            "space": settings.space, "validation_loss": [res.initial_validation_loss, res.validation_loss],
            "epochs": res.epochs, "seconds": round(res.seconds, 1), "forward_nfe": res.forward_nfe,
            "backward_nfe": res.backward_nfe})])

    def start(self, run: Run) -> Candidate | None:
        """The best :data:`BASE` schedule at the run's NFE: learned steps if the gradient method made some, else rung 1's."""
        nfe = run.settings.search.nfe
        learned = [c for c in run.pool if c.made_by.get("method") == "gradient" and c.document.solver.name == BASE
                   and len(c.document.policy.timesteps()) == nfe]
        if learned:
            return learned[0]
        rows = [c for c in ranked(run.rung1, run.sizes.rung1) if c.document.solver.name == BASE
                and len(c.document.policy.timesteps()) == nfe and math.isfinite(c.value(run.sizes.rung1))]
        return rows[0] if rows else None
