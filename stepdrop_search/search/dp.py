"""DP-optimal schedules over a teacher trajectory.

Nodes are the teacher's grid t_0 = T−1 > … > t_{N−1} plus node N = x̂0. A schedule of K NFE is a path
0 = n_0 < n_1 < … < n_{K−1} < N whose last evaluation jumps to node N.

* **GITS** (Chen et al., as published in zju-pi/diff-sampler ``gits-main``) prices every edge i → j once, from the
  *teacher's* state and direction at i, then V[j][1] = C[j][N], V[j][k] = min_{j<i<N} C[j][i] + γ·V[i][k−1]
  (γ = 1.15: later segments weigh more). No NFE beyond the teacher. Its cost ``dev`` is *signed*: how much farther
  from each trajectory's straight line x_T → x_0 one Euler step lands than the teacher's own state at j
  (``deviation``; GITS's ``cal_deviation``), averaged over the batch. The teacher is GITS's too: iPNDM on a 61-point
  Karras ρ = 7 grid. ``l2-endpoint`` (per-sample L2 norm of the miss, this module's former ``dev``), ``l1`` and ``l2``
  (MSE) price the distance to the teacher's state instead.
* **OSS** walks *student* states: at level k each reachable node i evaluates ε once at the best student
  state that reached it, every j > i is a candidate reached by the solver's one-step form
  (``Solver.one_step_form``: DDIM for every solver that starts first order, Heun's own step for Heun), and the
  cheapest candidate (MSE to the teacher at j) wins per sample. Per-sample schedules are aggregated as OSS does
  ("OSS-ave"): per level, the median — the mean of the two middle values for an even batch.

The teacher and every edge are deterministic (stochastic solvers are searched on DDIM's probability-flow ODE, which
shares their marginals at every t: an edge that drew noise would make the schedule depend on one draw), so a
search is reproducible from its seed (the x_T) alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stepdrop_search.checkpoint import LoadedModel
from stepdrop_search.diffusion.runtimes import DEFAULT_RUNTIME, Runtime
from stepdrop_search.diffusion.sampler import Plan, sample
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.diffusion.solvers import SolverSpec, Step, ddim_step, predict_x0, solver_class
from stepdrop_search.errors import UserError
from stepdrop_search.generation import initial_noise
from stepdrop_search.policies.base import distinct_decreasing
from stepdrop_search.policies.kinds import uniform_steps

COSTS = ("dev", "l2-endpoint", "l1", "l2")
#: GITS's teacher: iPNDM on 61 Karras ρ = 7 points (the gits-main README).
GITS_TEACHER = ("ipndm", 61, "karras")
GRID_SPACINGS = ("uniform", "karras", "logsnr")


@dataclass
class TeacherTrajectory:
    grid: torch.Tensor  # (N,) timesteps of nodes 0..N−1
    states: torch.Tensor  # (N+1, B, …): states at nodes, states[N] = the teacher's x̂0
    denoised: torch.Tensor  # (N, B, …): the teacher's x̂0 prediction at nodes 0..N−1
    alphas: torch.Tensor  # (N+1,) float64 ᾱ at nodes, 1 at node N
    nfe: int  # network evaluations the teacher cost (N · B)
    runtime: Runtime = DEFAULT_RUNTIME  # the conventions it was sampled under (the DP-OSS student follows them)

    def subset(self, n: int) -> TeacherTrajectory:
        """The first ``n`` trajectories (what they cost is counted as theirs alone)."""
        return TeacherTrajectory(self.grid, self.states[:, :n], self.denoised[:, :n], self.alphas, len(self.grid) * n,
                                 self.runtime)


@dataclass
class DPResult:
    steps: torch.Tensor  # (K,) strictly decreasing timesteps
    cost: float
    nfe_spent: int  # network evaluations of the search itself, teacher included
    per_sample: torch.Tensor | None = None  # OSS: (B, K) per-sample schedules before aggregation


def teacher_grid(schedule: NoiseSchedule, size: int, spacing: str = "uniform", rho: float = 7.0) -> torch.Tensor:
    """The DP's candidate timesteps, noise to data: ``uniform`` — DDIM's trailing integer steps (on {T−1 − k·T/N});
    ``karras`` — real t at σ̃ = σ/α spaced ρ = 7 from σ̃(T−1) to σ̃(0), as GITS's teacher (61 points there), which
    puts many nodes below t = 9 where uniform grids have none; ``logsnr`` — real t uniform in λ."""
    if spacing not in GRID_SPACINGS:
        raise UserError(f"unknown DP grid spacing {spacing!r}; choose one of {', '.join(GRID_SPACINGS)}")
    limit = schedule.T if spacing == "uniform" else 10 * schedule.T  # real-valued grids may be finer than T
    if not 2 <= size <= limit:
        raise UserError(f"teacher grid size must be in 2..{limit} for the {spacing} spacing")
    if spacing == "uniform":
        return uniform_steps(schedule.T, size, "trailing")
    ramp = torch.linspace(0, 1, size, dtype=torch.float64)
    lam_max, lam_min = schedule.log_snr[0] / 2, schedule.log_snr[-1] / 2  # λ = log(α/σ) = −log σ̃
    if spacing == "karras":
        hi, lo = torch.exp(-lam_min) ** (1 / rho), torch.exp(-lam_max) ** (1 / rho)
        lam = -torch.log((hi + ramp * (lo - hi)) ** rho)
    else:
        lam = lam_min + ramp * (lam_max - lam_min)
    t = schedule.timestep_at_log_snr(2 * lam)
    t[0], t[-1] = schedule.T - 1, 0.0  # exact ends (the interpolation's round trip is off by ~1e-13)
    return t


def teacher_trajectory(loaded: LoadedModel, *, grid_size: int = GITS_TEACHER[1], n: int = 64, seed: int = 0,
                       spacing: str = GITS_TEACHER[2], solver: str = GITS_TEACHER[0],
                       runtime: Runtime = DEFAULT_RUNTIME) -> TeacherTrajectory:
    """``solver`` (deterministic; default iPNDM, as GITS) on a ``grid_size``-node grid (:func:`teacher_grid`) from the
    x_T of ``seed`` under ``runtime``: the states and x̂0 predictions at every node, for every solver's DP (module
    docstring). A teacher solver the runtime lacks is replaced by the runtime's deterministic one of highest order
    (the teacher is a reference trajectory, never exported)."""
    if not runtime.has_solver(solver):
        solver = next(s for s in ("ipndm", "dpmpp-2m", "ddim") if runtime.has_solver(s))
    spec = SolverSpec(solver)
    if spec.solver.stochastic(spec.eta):
        raise UserError(f"the DP teacher must be deterministic; {solver} draws noise (use ipndm, ddim, dpmpp-2m, …)")
    grid = teacher_grid(loaded.schedule, grid_size, spacing)
    device = next(loaded.model.parameters()).device
    cfg = loaded.config
    x_T = initial_noise(n, (cfg.in_channels, cfg.image_size, cfg.image_size), seed).to(device)
    run = sample(loaded.model, loaded.schedule, x_T, Plan(grid, (solver,) * len(grid)), solver=spec, trajectory=True,
                 runtime=runtime)
    abar = loaded.schedule.alphas_cumprod_at(grid).to(device)
    alphas = torch.cat([abar, torch.ones(1, device=device, dtype=abar.dtype)])
    return TeacherTrajectory(run.grid, torch.cat([run.trajectory, run.x0[None]]), run.denoised, alphas,
                             int(spec.solver.nfe(grid_size)) * n, runtime)


def edge_step(x: torch.Tensor, x0: torch.Tensor, a_t: torch.Tensor, a_s: torch.Tensor) -> torch.Tensor:
    """One DDIM η = 0 step from (x, x̂0) at ᾱ_t to ᾱ_s (broadcasting over leading target dims)."""
    eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    return ddim_step(x, x0, eps, a_t, a_s, None, 0.0).to(x.dtype)


def _distance(diff: torch.Tensor, cost: str) -> torch.Tensor:
    """(…, B, C, H, W) → (…, B): per-sample distance."""
    flat = diff.flatten(-3)
    if cost == "l2":
        return flat.pow(2).mean(-1)
    if cost == "l1":
        return flat.abs().mean(-1)
    if cost == "l2-endpoint":
        return flat.norm(dim=-1)
    raise UserError(f"unknown DP cost {cost!r}; choose one of {', '.join(COSTS)}")


def deviation(y: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """GITS's ``cal_deviation``: the distance of states ``y`` (…, B, C, H, W) from each trajectory's straight line
    ``start`` → ``end`` (B, C, H, W): with u the line's unit direction, ‖(end − y) − ⟨end − y, u⟩ u‖₂ per sample."""
    u = (end - start).flatten(1)
    u = u / u.norm(dim=-1, keepdim=True)
    rel = (end - y).flatten(-3)
    return (rel - (rel * u).sum(-1, keepdim=True) * u).norm(dim=-1)


def _broadcast(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return a.view(-1, *([1] * (like.dim() - 1)))


def gits_costs(traj: TeacherTrajectory, cost: str = "dev") -> torch.Tensor:
    """(N+1, N+1) float64 edge costs C[i][j] of one Euler (DDIM) step from the teacher's state at i to node j > i
    (∞ elsewhere), averaged over the batch. ``dev`` works, as GITS, in x̃ = x/α (EDM's space, where the step is
    x̃_i + (σ̃_j − σ̃_i) d_i): dev(step) − dev(teacher's x̃_j), the teacher's x̂0 at N having none."""
    if cost not in COSTS:
        raise UserError(f"unknown DP cost {cost!r}; choose one of {', '.join(COSTS)}")
    N = len(traj.grid)
    scale = traj.alphas.sqrt().to(traj.states.dtype)  # α at nodes 0..N (1 at x̂0)
    start, end = traj.states[0] / scale[0], traj.states[N]
    teacher_dev = deviation(traj.states / _broadcast(scale, traj.states), start, end) if cost == "dev" else None
    C = torch.full((N + 1, N + 1), float("inf"), dtype=torch.float64)
    for i in range(N):
        targets = traj.states[i + 1:]  # (N−i, B, …)
        cand = edge_step(traj.states[i][None], traj.denoised[i][None], traj.alphas[i],
                         _broadcast(traj.alphas[i + 1:], targets))
        if cost == "dev":
            missed = deviation(cand / _broadcast(scale[i + 1:], targets), start, end) - teacher_dev[i + 1:]
            C[i, i + 1:] = missed.mean(-1).double().cpu()
        else:
            C[i, i + 1:] = _distance(cand - targets, cost).mean(-1).double().cpu()
    return C


def gits_schedule(traj: TeacherTrajectory, nfe: int, *, cost: str = "dev", gamma: float = 1.15) -> DPResult:
    """GITS: edge costs from teacher states (:func:`gits_costs`), then a K-step shortest path with discount γ."""
    N = len(traj.grid)
    if not 1 <= nfe <= N:
        raise UserError(f"DP-GITS: nfe {nfe} must be between 1 and the teacher grid size {N}")
    C = gits_costs(traj, cost)
    V = C[:, N].clone()  # one step left: jump straight to x̂0
    choice = []
    inner = torch.arange(N + 1)
    for _ in range(2, nfe + 1):
        total = C + gamma * V[None, :]  # total[j, i] = C[j][i] + γ V[i]
        total[:, N] = float("inf")  # x̂0 is not an evaluation point
        total[inner[:, None] >= inner[None, :]] = float("inf")  # i > j only
        V, arg = total.min(dim=1)
        choice.append(arg)
    if not torch.isfinite(V[0]):
        raise UserError(f"DP-GITS found no {nfe}-step path on a {N}-node teacher grid")
    path, node = [0], 0
    for arg in reversed(choice):
        node = int(arg[node])
        path.append(node)
    return DPResult(traj.grid[path], float(V[0]), traj.nfe)


def one_step_edges(loaded: LoadedModel, form: str, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor,
                   a_t: torch.Tensor, a_targets: torch.Tensor, t_targets: torch.Tensor,
                   runtime: Runtime = DEFAULT_RUNTIME) -> tuple[torch.Tensor, int]:
    """One step of solver ``form`` from (x, x̂0, ε) at ᾱ_t to each of M targets: ((M, B, …) states, NFE spent).

    DDIM's step is closed form (no evaluation); any other form runs the registered solver's own step from a fresh
    state on the M·B (source, target) pairs as one batch, its extra evaluations counted."""
    if form == "ddim":
        return edge_step(x[None], x0[None], a_t, _broadcast(a_targets, x[None])), 0
    M, B = len(a_targets), x.shape[0]
    solver = solver_class(form)(SolverSpec(form))
    spent = [0]

    def evaluate(xs: torch.Tensor, ts: torch.Tensor, which: torch.Tensor | None = None) -> torch.Tensor:
        spent[0] += xs.shape[0]
        ts = runtime.network_time_of(ts)
        return loaded.model(xs, ts.expand(xs.shape[0]) if ts.dim() == 0 else ts)

    def rows(v: torch.Tensor) -> torch.Tensor:
        return v[None].expand(M, *v.shape).reshape(M * B, *v.shape[1:])

    a_s = a_targets.repeat_interleave(B).view(-1, *([1] * (x.dim() - 1)))
    step = Step(rows(x), rows(x0), rows(eps), a_t, a_s, t_targets.repeat_interleave(B), None, 0.0, evaluate, runtime.clamp, 1)
    out, _ = solver.step(step, solver.init_state(step.x))
    return out.view(M, *x.shape).to(x.dtype), spent[0]


@torch.no_grad()
def oss_schedule(loaded: LoadedModel, traj: TeacherTrajectory, nfe: int, *, solver: str = "ddim",
                 batch_size: int = 512, runtime: Runtime | None = None) -> DPResult:
    """OSS student-state DP with ``solver``'s one-step form on every edge, under ``runtime`` (default: the teacher's);
    per-sample schedules aggregated per level by their median (the mean of the two middle values for an even batch, as
    OSS-ave)."""
    runtime = runtime or traj.runtime
    form = solver_class(solver).one_step_form
    N = len(traj.grid)
    if not 1 <= nfe <= N:
        raise UserError(f"DP-OSS: nfe {nfe} must be between 1 and the teacher grid size {N}")
    device = traj.states.device
    B = traj.states.shape[1]
    abar_nodes = traj.alphas
    t_nodes = torch.cat([traj.grid, traj.grid.new_zeros(1)]).to(device)  # node N (x̂0) at t = 0
    best = torch.full((N + 1, B), float("inf"), device=device)
    best[0] = 0
    student = torch.empty_like(traj.states)
    student[0] = traj.states[0]
    parents = torch.zeros((nfe, N + 1, B), dtype=torch.long)
    spent = traj.nfe
    for level in range(nfe):
        last = level == nfe - 1
        sources = [i for i in range(N) if torch.isfinite(best[i]).all()]
        new_best = torch.full_like(best, float("inf"))
        new_student = torch.empty_like(student)
        for i in sources:
            x = student[i]
            t_net = runtime.network_time_of(traj.grid[i].to(device))
            eps_chunks = [loaded.model(x[s:s + batch_size], t_net.expand(len(x[s:s + batch_size])))
                          for s in range(0, B, batch_size)]
            spent += B
            eps = torch.cat(eps_chunks)
            a_t = abar_nodes[i]
            x0, eps_c = predict_x0(x, eps, a_t, clamp=runtime.clamp)
            # Intermediate levels may stop at any node after i but x̂0; the last level must reach x̂0.
            lo, hi = (N, N + 1) if last else (i + 1, N - (nfe - level - 2))
            if lo >= hi:
                continue
            cand, extra = one_step_edges(loaded, form, x, x0.to(x.dtype), eps_c.to(x.dtype), a_t, abar_nodes[lo:hi],
                                         t_nodes[lo:hi], runtime)
            spent += extra
            cost = _distance(cand - traj.states[lo:hi], "l2")  # (hi−lo, B)
            better = cost < new_best[lo:hi]
            new_best[lo:hi] = torch.where(better, cost, new_best[lo:hi])
            new_student[lo:hi] = torch.where(better[..., None, None, None], cand, new_student[lo:hi])
            parents[level, lo:hi][better.cpu()] = i
        best, student = new_best, new_student
    if not torch.isfinite(best[N]).all():
        raise UserError(f"DP-OSS found no {nfe}-step path on a {N}-node teacher grid")
    paths = torch.zeros((B, nfe), dtype=torch.long)
    node = torch.full((B,), N, dtype=torch.long)
    for level in range(nfe - 1, -1, -1):
        node = parents[level].gather(0, node[None]).squeeze(0)
        paths[:, level] = node
    per_sample = traj.grid[paths]  # (B, K) timesteps
    middle = per_sample.double().quantile(0.5, dim=0)  # the two middle values' mean when B is even
    steps = middle if traj.grid.is_floating_point() else distinct_decreasing(middle, loaded.schedule.T)
    return DPResult(steps, float(best[N].mean()), spent, per_sample)
