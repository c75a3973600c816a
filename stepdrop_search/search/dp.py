"""DP-optimal schedules over a teacher trajectory.

Nodes are the teacher's grid t_0 = T−1 > … > t_{N−1} plus node N = x̂0. A schedule of K NFE is a path
0 = n_0 < n_1 < … < n_{K−1} < N whose last evaluation jumps to node N.

* **GITS** prices every edge i → j once, from the *teacher's* state and direction at i, against the
  teacher's state at j (costs ``dev`` = per-sample L2 norm, ``l1``, ``l2`` = MSE), averaged over the
  batch; then V[j][1] = C[j][N], V[j][k] = min_{j<i<N} C[j][i] + γ·V[i][k−1]. No NFE beyond the teacher.
* **OSS** walks *student* states: at level k each reachable node i evaluates ε once at the best student
  state that reached it, every j > i is a candidate, and the cheapest candidate (MSE to the teacher at j)
  wins per sample. Per-sample schedules are aggregated by the median ("OSS-ave").

Every solver's schedule is searched on the same deterministic skeleton, the probability-flow ODE: the
teacher is DDIM η = 0 on the grid and every edge is one DDIM step, whatever solver the schedule is then
used with. For ``dpmpp-2m`` DDIM is its first-order step (multistep history does not fit an edge cost);
for a stochastic solver (``ddpm``, DDIM η > 0) a teacher that draws noise would make the search depend on
one noise draw per sample, and its edges (the posterior mean) would not follow the teacher that drew it;
the ODE shares the stochastic sampler's marginals at every t. So the teacher draws no random numbers at
all: a search is reproducible from its seed (the x_T) alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stepdrop_search.checkpoint import LoadedModel
from stepdrop_search.diffusion.sampler import Plan, sample
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.diffusion.solvers import ddim_step, predict_x0
from stepdrop_search.errors import UserError
from stepdrop_search.generation import initial_noise
from stepdrop_search.policies.base import distinct_decreasing
from stepdrop_search.policies.kinds import uniform_steps

COSTS = ("dev", "l1", "l2")
GRID_SPACINGS = ("uniform", "karras", "logsnr")


@dataclass
class TeacherTrajectory:
    grid: torch.Tensor  # (N,) timesteps of nodes 0..N−1
    states: torch.Tensor  # (N+1, B, …): states at nodes, states[N] = the teacher's x̂0
    denoised: torch.Tensor  # (N, B, …): the teacher's x̂0 prediction at nodes 0..N−1
    alphas: torch.Tensor  # (N+1,) float64 ᾱ at nodes, 1 at node N
    nfe: int  # network evaluations the teacher cost (N · B)

    def subset(self, n: int) -> TeacherTrajectory:
        """The first ``n`` trajectories (what they cost is counted as theirs alone)."""
        return TeacherTrajectory(self.grid, self.states[:, :n], self.denoised[:, :n], self.alphas, len(self.grid) * n)


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


def teacher_trajectory(loaded: LoadedModel, *, grid_size: int = 100, n: int = 64, seed: int = 0,
                       spacing: str = "uniform") -> TeacherTrajectory:
    """DDIM η = 0 on a ``grid_size``-node grid (:func:`teacher_grid`) from the x_T of ``seed``, for every solver
    (module docstring)."""
    grid = teacher_grid(loaded.schedule, grid_size, spacing)
    device = next(loaded.model.parameters()).device
    cfg = loaded.config
    x_T = initial_noise(n, (cfg.in_channels, cfg.image_size, cfg.image_size), seed).to(device)
    run = sample(loaded.model, loaded.schedule, x_T, Plan(grid, ("ddim",) * len(grid)), eta=0.0, trajectory=True)
    abar = loaded.schedule.alphas_cumprod_at(grid).to(device)
    alphas = torch.cat([abar, torch.ones(1, device=device, dtype=abar.dtype)])
    return TeacherTrajectory(run.grid, torch.cat([run.trajectory, run.x0[None]]), run.denoised, alphas, grid_size * n)


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
    if cost == "dev":
        return flat.norm(dim=-1)
    raise UserError(f"unknown DP cost {cost!r}; choose one of {', '.join(COSTS)}")


def _broadcast(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return a.view(-1, *([1] * (like.dim() - 1)))


def gits_schedule(traj: TeacherTrajectory, nfe: int, *, cost: str = "dev", gamma: float = 1.15) -> DPResult:
    """GITS: edge costs from teacher states, then a K-step shortest path with discount γ."""
    N = len(traj.grid)
    if not 1 <= nfe <= N:
        raise UserError(f"DP-GITS: nfe {nfe} must be between 1 and the teacher grid size {N}")
    C = torch.full((N + 1, N + 1), float("inf"), dtype=torch.float64)
    for i in range(N):
        targets = traj.states[i + 1:]  # (N−i, B, …)
        cand = edge_step(traj.states[i][None], traj.denoised[i][None], traj.alphas[i],
                         _broadcast(traj.alphas[i + 1:], targets))
        C[i, i + 1:] = _distance(cand - targets, cost).mean(-1).double().cpu()
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


@torch.no_grad()
def oss_schedule(loaded: LoadedModel, traj: TeacherTrajectory, nfe: int, *, batch_size: int = 512) -> DPResult:
    """OSS student-state DP; per-sample schedules aggregated by their median."""
    N = len(traj.grid)
    if not 1 <= nfe <= N:
        raise UserError(f"DP-OSS: nfe {nfe} must be between 1 and the teacher grid size {N}")
    device = traj.states.device
    B = traj.states.shape[1]
    abar_nodes = traj.alphas
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
            eps_chunks = [loaded.model(x[s:s + batch_size], traj.grid[i].to(device).expand(len(x[s:s + batch_size])))
                          for s in range(0, B, batch_size)]
            spent += B
            eps = torch.cat(eps_chunks)
            a_t = abar_nodes[i]
            x0 = predict_x0(x, eps, a_t, clamp=True)[0].to(x.dtype)
            # Intermediate levels may stop at any node after i but x̂0; the last level must reach x̂0.
            lo, hi = (N, N + 1) if last else (i + 1, N - (nfe - level - 2))
            if lo >= hi:
                continue
            cand = edge_step(x[None], x0[None], a_t, _broadcast(abar_nodes[lo:hi], traj.states[lo:hi]))
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
    if traj.grid.is_floating_point():  # a real-valued grid: the median node of each level, kept on the grid
        nodes = paths.median(dim=0).values.tolist()
        for k in range(1, nfe):  # distinct, increasing node indices (medians of neighbouring levels can tie)
            nodes[k] = max(nodes[k], nodes[k - 1] + 1)
        nodes[-1] = min(nodes[-1], N - 1)
        for k in range(nfe - 2, -1, -1):
            nodes[k] = min(nodes[k], nodes[k + 1] - 1)
        steps = traj.grid[nodes]
    else:
        steps = distinct_decreasing(per_sample.double().median(dim=0).values, loaded.schedule.T)
    return DPResult(steps, float(best[N].mean()), spent, per_sample)
