"""Solvers as strategies, one module each, one registry (``SOLVERS``); see :mod:`.base` for the interface.

Adding a solver is one module with a :class:`Solver` subclass decorated with :func:`register_solver`, and
its import below: the sampler loop, the CLI's ``--solver``, ``evaluate --baselines`` and the policy files
all go through the registry.
"""

from stepdrop_search.diffusion.solvers import dpmpp, first_order, heun, ipndm, learned, unipc  # noqa: F401  (registers the solvers)
from stepdrop_search.diffusion.solvers.base import (
    SOLVERS,
    Solver,
    SolverSpec,
    State,
    Step,
    eta_solvers,
    fixed_solvers,
    log_snr,
    predict_x0,
    register_solver,
    solver_class,
    spec_for_nfe,
)
from stepdrop_search.diffusion.solvers.dpmpp import dpmpp_2m_step
from stepdrop_search.diffusion.solvers.first_order import ancestral_step, ddim_step

__all__ = ["SOLVERS", "Solver", "SolverSpec", "State", "Step", "ancestral_step", "ddim_step", "dpmpp_2m_step",
           "eta_solvers", "fixed_solvers", "log_snr", "predict_x0", "register_solver", "solver_class", "spec_for_nfe"]
