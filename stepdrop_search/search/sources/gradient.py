"""Learned steps (LD3-style, :mod:`~stepdrop_search.search.gradient`): for each deterministic solver the search works
on, gradient descent on the steps, starting from that solver's best rung-1 schedule.

Training and validation take x_T the rungs never see: samples after the largest rung of the search seed (the training
set first, then the validation set). The ``fid`` loss descends the coach (the network the search scores on, never the
judge); the other losses use the residual's teacher."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch import Tensor

from stepdrop_search.diffusion.solvers import SolverSpec
from stepdrop_search.generation import initial_noise
from stepdrop_search.objectives.residual import Teacher, teacher_outputs
from stepdrop_search.policies.kinds import Explicit
from stepdrop_search.progress import phase
from stepdrop_search.search.candidates import Candidate, candidate_key, ranked
from stepdrop_search.search.gradient import learn_schedule
from stepdrop_search.seeds import search_seed

if TYPE_CHECKING:
    from stepdrop_search.search.run import Run


def training_pairs(run: Run, after: int = 0) -> tuple[Tensor, Tensor]:
    """(x_T, target) of a gradient method's training set then validation set (``samples`` each): x_T of the search seed
    after its largest rung and after ``after`` such pairs of sets (a method that starts from another's result takes the
    next ones: a start picked on a validation set is flattered there), and the teacher's x0 from them (x_T again for
    the ``fid`` loss, which reads none)."""
    settings, search = run.settings.search.gradient, run.settings.search
    n, seed = settings.samples, search_seed(search.seed)
    offset = max(run.sizes.rung1, search.trial_samples) + 2 * n * after
    config = run.loaded.config
    x_T = initial_noise(offset + 2 * n, (config.in_channels, config.image_size, config.image_size), seed)[offset:]
    x_T = x_T.to(run.device)
    target = x_T if settings.loss == "fid" else teacher_outputs(
        run.loaded, Teacher.parse(search.teacher), n=offset + 2 * n, seed=seed, runtime=run.runtime,
        log=run.log)[offset:].to(run.device)
    return x_T, target


class LearnedSteps:
    name = "gradient"

    def applies(self, run: Run) -> bool:
        return True

    def candidates(self, run: Run, seconds: float | None) -> list[Candidate]:
        """Learned steps for each deterministic searched solver, ``seconds`` shared among them (None: the epochs)."""
        solvers = [name for name in run.search_solvers if not SolverSpec(name).solver.stochastic(SolverSpec(name).eta)]
        if not solvers:
            run.log("gradient: no deterministic solver to learn steps for (it needs one: ddim, dpmpp-2m, unipc, …)")
            return []
        settings, search = run.settings.search.gradient, run.settings.search
        share = None if seconds is None else max(0.0, seconds) / len(solvers)
        # one epoch: a forward and a backward (≈ 2 forwards) on the training set, a forward on the validation set
        epoch = run.budget.cost(search.nfe * 4 * settings.samples)
        if share is not None and share < epoch:
            run.log(f"gradient: {share:.0f} s per solver is less than one epoch (≈ {epoch:.0f} s); skipped "
                    "(raise --budget to learn steps at this NFE)")
            return []
        n = settings.samples
        x_T, target = training_pairs(run)
        out = []
        for name in solvers:
            starts = [c for c in ranked(run.rung1, run.sizes.rung1) if c.document.solver.name == name
                      and math.isfinite(c.value(run.sizes.rung1))]
            if not starts:
                run.log(f"gradient: {name} has no finite rung-1 row to start from; skipped")
                continue
            start = starts[0]
            spec, steps = start.document.solver, len(start.document.policy.timesteps())
            phase(run.log, f"gradient: {name} from {start.name}, {settings.loss} loss on {n} + {n} samples"
                  + (f", {share:.0f} s" if share is not None else ""), settings.epochs)
            res = learn_schedule(run.loaded.model, run.loaded.schedule, spec, steps, train=(x_T[:n], target[:n]),
                                 validation=(x_T[n:], target[n:]), init=start.document.policy.timesteps(),
                                 space=settings.space, loss=settings.loss, features=run.coach, epochs=settings.epochs,
                                 batch_size=settings.batch, lr=settings.lr, seconds=share, seed=search.seed,
                                 runtime=run.runtime, log=run.log)
            run.log(f"gradient: {name} validation {settings.loss} {res.initial_validation_loss:.4f} → "
                    f"{res.validation_loss:.4f} in {res.epochs} epochs, {res.seconds:.0f} s, {res.forward_nfe} forward + "
                    f"{res.backward_nfe} backward NFE: {[round(float(t), 2) for t in res.steps]}")
            document = run.document(Explicit(steps=tuple(res.steps.tolist()), schedule=run.loaded.schedule), spec)
            if candidate_key(document) == start.key:
                run.log(f"gradient: {name} kept its start (no epoch improved on validation)")
                continue
            out.append(Candidate(f"{name}/gradient", document, "pool", nfe_budget=search.nfe, made_by={
                "method": "gradient", "init": start.name, "loss": settings.loss, "space": settings.space,
                "validation_loss": [res.initial_validation_loss, res.validation_loss], "epochs": res.epochs,
                "seconds": round(res.seconds, 1), "forward_nfe": res.forward_nfe, "backward_nfe": res.backward_nfe}))
        return run.runnable(out)
