"""One sampler loop for every policy and solver.

A policy hands the sampler a :class:`Plan`: a grid of candidate timesteps, the solver of each grid
step, and who evaluates where — everyone everywhere (static policies: the dense fast path), a
pre-drawn per-sample mask (StepDrop's coin flips), or an online rule that decides from the ε just
computed (the adaptive policy). Samples that skip a grid step are *not* evaluated: the loop gathers
the active sub-batch, and the model wrapper counts NFE per sample, so reported NFE is measured.

No value is read back to the host inside the loop for static and pre-drawn plans: coefficients live
on the device and every index list is prepared before the first step. The adaptive rule needs one
``nonzero`` per step to size its sub-batch (data-dependent control flow cannot avoid it).

Randomness comes from :class:`SampleStreams`: every sample has its own streams, so what happens to one
sample never moves another's random numbers (see that class).
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from stepdrop_search.diffusion.guidance import ConditionalCall, Guidance, conditional_classes
from stepdrop_search.diffusion.runtimes import DEFAULT_RUNTIME, Runtime
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.diffusion.solvers import SolverSpec, Step, predict_x0, solver_class
from stepdrop_search.diffusion.solvers.base import applied
from stepdrop_search.errors import UserError

Tensor = torch.Tensor

#: Stream ids in the seed derivation of :func:`stream_seed`. x_T is not one of them: it keeps its own torch
#: generator (``generation.initial_noise``) so that every deterministic result stays bit for bit as it was.
STREAMS = {"skip": 1, "noise": 2}
#: Names how solver noise and coin flips are drawn; anything cached from a stochastic run records it.
NOISE_SCHEME = "per-sample-seedsequence-v1"
#: Solver noise is drawn this many float32 values at a time (grid steps × batch × pixels; 64 MiB), which
#: bounds its memory even for 1000-step DDPM at batch 256 while moving it to the device rarely.
NOISE_BLOCK_ELEMENTS = 1 << 24


def stream_seed(seed: int, stream: str, index: int) -> np.random.SeedSequence:
    """The seed of sample ``index``'s ``stream`` under ``seed``: the child (stream id, sample index) of the
    seed's root SeedSequence, i.e. what ``SeedSequence(seed).spawn`` would hand out, without spawning all."""
    entropy = 2 * seed if seed >= 0 else -2 * seed - 1  # every Python int, one-to-one onto the non-negative ones
    return np.random.SeedSequence(entropy, spawn_key=(STREAMS[stream], index))


class SampleStreams:
    """The random numbers of samples ``indices`` of ``seed``: one independent stream per (seed, stream, sample).

    Per sample, because a shared stream makes a sample's result depend on the batch size, on which other
    samples skipped a step and on how many draws earlier rows made; per (seed, stream, sample) position,
    because then every policy of a seed gets the same coin-flip uniform and the same solver noise for sample
    i at grid step j (paired comparisons). Streams are numpy PCG64 generators seeded through SeedSequence,
    which hashes (seed, stream, sample) into 128 bits of state: streams of different seeds, streams or samples
    do not coincide, and none is an x_T (x_T comes from torch's mt19937, whose seeds are 32-bit: deriving
    seeds for it would collide). Everything is drawn on the CPU, so results match across devices.
    """

    def __init__(self, seed: int, indices: range) -> None:
        self.seed, self.indices = seed, indices

    def __len__(self) -> int:
        return len(self.indices)

    def generators(self, stream: str) -> list[np.random.Generator]:
        """One generator per sample, at the start of its stream (every call starts afresh)."""
        return [np.random.Generator(np.random.PCG64(stream_seed(self.seed, stream, i))) for i in self.indices]

    def uniforms(self, length: int) -> Tensor:
        """(B, length) float32 uniforms in [0, 1) of the "skip" stream; [b, j] is sample b's coin for grid step j
        whatever the policy, so StepDrop and adaptive plans of one seed flip paired coins."""
        return torch.from_numpy(np.stack([g.random(length, dtype=np.float32) for g in self.generators("skip")]))

    def noise(self, shape: tuple[int, ...], steps: int, device: torch.device, dtype: torch.dtype) -> NoiseBlocks:
        """Standard normals of the "noise" stream for grid steps 0..steps−1 (see :class:`NoiseBlocks`)."""
        return NoiseBlocks(self.generators("noise"), shape, steps, device, dtype)


def batch_streams(streams: SampleStreams | None, batch: int) -> SampleStreams:
    """``streams`` checked against the batch size; None stands for samples 0..batch−1 of seed 0."""
    streams = SampleStreams(0, range(batch)) if streams is None else streams
    if len(streams) != batch:
        raise ValueError(f"streams for {len(streams)} samples, a batch of {batch}")
    return streams


class NoiseBlocks:
    """Sample b's solver noise at grid step j is draw j of its "noise" stream, whether or not it (or anyone)
    evaluates step j: skipping never shifts later noise. Read in increasing step order with :meth:`at`.

    Each sample's draws for a block of grid steps are made at once on the CPU and the block is moved to the
    device in one copy (pinned and non-blocking on accelerators, so no host sync); there a worker thread
    draws the next block while the device runs (numpy releases the GIL while it fills). On the CPU there is
    no idle core to hide it on, so it is drawn in line.
    """

    def __init__(self, generators: list[np.random.Generator], shape: tuple[int, ...], steps: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.generators, self.shape, self.steps, self.device, self.dtype = generators, tuple(shape), steps, device, dtype
        self.block = max(1, min(steps, NOISE_BLOCK_ELEMENTS // (len(generators) * math.prod(shape))))
        self.accelerated = device.type != "cpu"
        self.pool = ThreadPoolExecutor(1) if self.accelerated else None
        self.start = self.end = 0  # self.current holds grid steps start..end−1
        self.current: Tensor | None = None
        self.pending: Future | None = None

    def _draw(self, start: int) -> Tensor:
        """(B, count, D) float32 on the CPU: each sample's draws for grid steps start..start+count−1 in one call
        (a contiguous row per sample), pinned for an asynchronous copy when the device is a GPU."""
        count = min(self.block, self.steps - start)
        buf = torch.empty((len(self.generators), count, math.prod(self.shape)), dtype=torch.float32,
                          pin_memory=self.device.type == "cuda")
        values = buf.numpy()
        for b, gen in enumerate(self.generators):
            gen.standard_normal(dtype=np.float32, out=values[b])
        return buf

    def at(self, step: int) -> Tensor:
        """(B, *shape) noise of grid step ``step`` on the device."""
        if not self.start <= step < self.steps:
            raise IndexError(f"noise of grid step {step} is not available (steps {self.start}..{self.steps - 1} are)")
        while step >= self.end:
            self.start = self.end
            buf = self.pending.result() if self.pending is not None else self._draw(self.start)
            self.end = self.start + buf.shape[1]
            self.pending = self.pool.submit(self._draw, self.end) if self.pool and self.end < self.steps else None
            moved = buf.to(self.device, non_blocking=self.accelerated)
            self.current = moved.transpose(0, 1).reshape(-1, len(self.generators), *self.shape).to(self.dtype)
        return self.current[step - self.start]


@dataclass(frozen=True)
class Plan:
    """What a policy asks of the sampler for one batch.

    ``grid``: (L,) strictly decreasing candidate timesteps: integers, or real numbers in [0, T−1] (continuous
    time: ᾱ is interpolated in log-SNR and the network gets the real t). ``solvers``: solver name per grid step.
    ``evaluate``: (B, L) bool, pre-drawn per-sample decisions (column 0 must be all True), or None.
    ``skip_base``: (L,) base skip probabilities of the adaptive rule p = min(1, base/r), r = ‖ε‖/√D,
    decided for the following grid steps from the ε of the current evaluation; or None.
    ``uniforms``: (B, L) the adaptive rule's coins: after an evaluation at step i, step j > i is kept when
    uniforms[b, j] ≥ p_j, and the next evaluation is the first kept step, so each coin decides at most once
    along a sample's path and no draw depends on the data.
    """

    grid: Tensor
    solvers: tuple[str, ...]
    evaluate: Tensor | None = None
    skip_base: Tensor | None = None
    uniforms: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.skip_base is None) != (self.uniforms is None):
            raise ValueError("an adaptive plan needs both skip_base and uniforms")

    @property
    def dense(self) -> bool:
        return self.evaluate is None and self.skip_base is None


@dataclass
class SampleResult:
    x0: Tensor
    nfe: Tensor  # (B,) network evaluations per sample, counted by the model wrapper
    evaluated: Tensor  # (B, L) bool: which grid steps each sample evaluated (the "barcode")
    grid: Tensor
    trajectory: Tensor | None = None  # (L, B, …): the state at each grid step, when asked for
    denoised: Tensor | None = None  # (L, B, …): x̂0 predicted at each grid step, when asked for


class NFECounter:
    """Wraps ε_θ and counts evaluations per sample on the device (no host sync). The network is fed the time the
    runtime feeds it (:meth:`Runtime.network_time_of`); the solver's coefficients keep the real t. A class-conditional
    model is called through its :class:`~.guidance.ConditionalCall`, which says what a call cost: 2 where guided."""

    def __init__(self, model: torch.nn.Module, batch: int, device: torch.device, runtime: Runtime = DEFAULT_RUNTIME,
                 conditional: ConditionalCall | None = None) -> None:
        self.model, self.runtime, self.conditional = model, runtime, conditional
        self.counts = torch.zeros(batch, dtype=torch.long, device=device)

    def __call__(self, x: Tensor, t: Tensor, idx: Tensor | None, guided: bool | Tensor = False) -> Tensor:
        t_net = self.runtime.network_time_of(t).expand(x.shape[0])
        eps, cost = (self.model(x, t_net), 1) if self.conditional is None else self.conditional(x, t_net, idx, guided)
        if idx is None:
            self.counts += cost
        else:
            self.counts.index_add_(0, idx, torch.full_like(idx, cost))
        return eps


class AmplitudeCalibration:
    """OSS amplitude calibration: after each step, affinely map every sample's 5%/95% quantiles onto
    a teacher's quantiles at the target timestep (``profile``: (T, 2) tensor of [q05, q95])."""

    def __init__(self, profile: Tensor) -> None:
        self.profile = profile

    def __call__(self, x: Tensor, t_target: Tensor) -> Tensor:
        flat = x.flatten(1)
        q = torch.quantile(flat, torch.tensor([0.05, 0.95], device=x.device, dtype=x.dtype), dim=1)  # (2, n)
        lo, hi = q[0], q[1]
        target = self.profile.to(x.device)[t_target.expand(flat.shape[0]).round().long()]  # continuous t: nearest step
        scale = (target[:, 1] - target[:, 0]) / (hi - lo).clamp(min=1e-6)
        shape = (-1,) + (1,) * (x.dim() - 1)
        return (x - lo.view(shape)) * scale.view(shape) + target[:, 0].view(shape)


def next_evaluated(evaluate: Tensor) -> Tensor:
    """(B, L) mask → (B, L) index of each sample's next evaluated grid step after i (L = the final x̂0)."""
    batch, length = evaluate.shape
    table = torch.empty(batch, length, dtype=torch.long)
    upcoming = torch.full((batch,), length, dtype=torch.long)
    for i in range(length - 1, -1, -1):
        table[:, i] = upcoming
        upcoming = torch.where(evaluate[:, i], torch.tensor(i), upcoming)
    return table


def sample(model: torch.nn.Module, schedule: NoiseSchedule, x: Tensor, plan: Plan, *, eta: float = 0.0,
           runtime: Runtime = DEFAULT_RUNTIME, streams: SampleStreams | None = None,
           calibration: AmplitudeCalibration | None = None, trajectory: bool = False,
           solver: SolverSpec | None = None, differentiable: bool = False, labels: Tensor | None = None,
           guidance: Guidance | None = None) -> SampleResult:
    """Denoise ``x`` (pure noise at grid[0]) along ``plan``; the last step of every sample lands at t = 0: on the
    last evaluation's x̂0, or where the solver's own last step puts it (``Solver.owns_last_step``).

    ``runtime`` decides the conventions a σ list and a solver leave open (:mod:`.runtimes`): whether x̂0 is clamped, the
    time the network is fed, and how the start noise ``x`` is scaled (1 for the exact VP start x_T = ε). Its solver set
    is checked here; Heun's correction pattern is the ``solver`` spec's (``spec_for_nfe`` builds it for a runtime).

    The solver of grid step i is the registered strategy named ``plan.solvers[i]`` (``solver`` gives the
    run's own spec: η and, for Heun, the NFE budget); each strategy keeps its per-sample state, which the
    loop gathers and scatters with the active sub-batch. ``streams``: the batch's random streams (default:
    samples 0..B−1 of seed 0); only solver steps that add noise draw from them, so deterministic runs draw
    nothing. ``trajectory=True`` (dense plans only: teacher runs) also returns the state and the x̂0
    prediction at every grid step (what the DP searches compare against).

    ``differentiable=True`` records the autograd graph (dense, deterministic plans): a real-valued ``plan.grid``
    that requires grad then receives d(x0)/d(t) through every solver coefficient and the network's time input —
    what the gradient-learned schedules (:mod:`stepdrop_search.search.gradient`) descend on. Otherwise nothing is
    recorded (the fast path).

    A class-conditional model samples the class ``labels`` ((B,) long) with ``guidance`` (:mod:`.guidance`; default
    none: the conditional prediction alone); without labels it predicts unconditionally (its null class). Whether a
    grid step is guided is decided from its σ on the host before the loop, so a guided step is one batched call of
    both predictions and no value is read back.
    """
    conditional = None
    if labels is not None:
        classes = conditional_classes(model)
        if not classes:
            raise UserError("class labels were given for an unconditional model (train one with --conditional)")
        if labels.shape != (x.shape[0],):
            raise ValueError(f"labels for {tuple(labels.shape)} samples, a batch of {x.shape[0]}")
        conditional = ConditionalCall(model, labels.to(x.device), guidance or Guidance(), classes)
    elif guidance is not None and guidance.scale != 1:
        raise UserError("guidance needs a class-conditional model and the classes to sample")
    with torch.set_grad_enabled(differentiable):
        return _sample(model, schedule, x, plan, eta, runtime, streams, calibration, trajectory, solver, conditional)


def guided_steps(schedule: NoiseSchedule, grid: Tensor, guidance: Guidance) -> list[bool]:
    """Whether each grid step (and, last, the end t = 0, never evaluated) is guided, decided on the host from σ."""
    abar = schedule.alphas_cumprod_at(grid.detach().cpu())
    return guidance.active(((1 - abar) / abar).sqrt()).tolist() + [False]


def _sample(model: torch.nn.Module, schedule: NoiseSchedule, x: Tensor, plan: Plan, eta: float, runtime: Runtime,
            streams: SampleStreams | None, calibration: AmplitudeCalibration | None, trajectory: bool,
            solver: SolverSpec | None, conditional: ConditionalCall | None) -> SampleResult:
    device, batch, length = x.device, x.shape[0], len(plan.grid)
    if plan.evaluate is not None and not bool(plan.evaluate[:, 0].all()):
        raise UserError("every sample must evaluate the first grid step (x_T is only defined there)")
    grid = plan.grid.to(device)
    # Coefficients are formed in float64 (0-dim or (n,1,1,1) operands) and applied to float32 states:
    # over 1000 steps float32 ratios like ᾱ_t/ᾱ_s drift by ~1e-4.
    abar = schedule.alphas_cumprod_at(plan.grid).to(device=device, dtype=torch.float64)
    a_ext = torch.cat([abar, torch.ones(1, device=device, dtype=torch.float64)])  # index L = "jump to x̂0"
    t_ext = torch.cat([grid, torch.zeros(1, dtype=grid.dtype, device=device)])
    runtime.check_family(schedule.is_flow)
    if solver is not None and solver.nfe is not None and not runtime.spends_even_heun_budgets:
        raise UserError(f"a {solver.name} NFE budget spent exactly (first interval uncorrected) is the legacy runtime's pattern; "
                        f"runtime {runtime.name} corrects every interval but the last (build the spec with spec_for_nfe)")
    for name in dict.fromkeys(plan.solvers):
        runtime.check_solver(name, solver.eta if solver is not None and solver.name == name else None)
    counter = NFECounter(model, batch, device, runtime, conditional)
    guided = guided_steps(schedule, plan.grid, conditional.guidance) if conditional is not None else [False] * (length + 1)
    guided_on_device = torch.tensor(guided, device=device) if conditional is not None else None
    evaluated = torch.zeros(batch, length, dtype=torch.bool, device=device)
    x = x * applied(runtime.start_scale(abar[0], schedule.alphas_cumprod_at(torch.tensor(schedule.T - 1)).to(abar)), x)
    if trajectory and not plan.dense:
        raise UserError("trajectories are recorded for static policies only")
    states = torch.empty((length, *x.shape), device=device, dtype=x.dtype) if trajectory else None
    denoised = torch.empty_like(states) if trajectory else None
    specs = {name: solver if solver is not None and solver.name == name else SolverSpec(name, eta if solver_class(name).has_eta else 0.0)
             for name in dict.fromkeys(plan.solvers)}
    strategies = {name: spec.solver for name, spec in specs.items()}
    for strategy in strategies.values():
        strategy.check_plan(length, plan.dense)
    memory = {name: strategy.init_state(x) for name, strategy in strategies.items()}

    # Who is active at each grid step, prepared before the loop.
    if plan.evaluate is not None:
        targets = next_evaluated(plan.evaluate).to(device)
        lists = [plan.evaluate[:, i].nonzero().squeeze(1) for i in range(length)]
        sizes = [len(ix) for ix in lists]
        active_lists = torch.split(torch.cat(lists).to(device), sizes)
    if plan.skip_base is not None:
        skip_base = plan.skip_base.to(device=device, dtype=torch.float32)
        uniforms = plan.uniforms.to(device)
        next_eval = torch.zeros(batch, dtype=torch.long, device=device)
    noisy = [strategies[name].stochastic(specs[name].eta) for name in plan.solvers]
    if any(noisy):
        noise_blocks = batch_streams(streams, batch).noise(x.shape[1:], max(j for j, v in enumerate(noisy) if v) + 1, device, x.dtype)

    for i in range(length):
        if plan.dense:
            idx = None
        elif plan.evaluate is not None:
            if sizes[i] == 0:
                continue
            idx = active_lists[i]
        else:
            idx = (next_eval == i).nonzero().squeeze(1)  # the adaptive rule's one sync per step
            if idx.numel() == 0:
                continue
        if states is not None:
            states[i] = x
        xi = x if idx is None else x.index_select(0, idx)
        eps = counter(xi, grid[i], idx, guided[i])
        a_t = a_ext[i]
        x0, eps_c = predict_x0(xi, eps, a_t, runtime.clamp)
        if denoised is not None:
            denoised[i] = x0

        if idx is None:
            target = i + 1
            a_s, t_s = a_ext[target], t_ext[target]
        else:
            if plan.evaluate is not None:
                target = targets[idx, i]
            else:
                r = eps.flatten(1).norm(dim=1) / eps[0].numel() ** 0.5
                p = (skip_base[i + 1:][None] / r[:, None]).clamp(max=1.0)
                keep = uniforms[idx, i + 1:] >= p
                keep = torch.cat([keep, torch.ones(len(idx), 1, dtype=torch.bool, device=device)], dim=1)
                target = i + 1 + keep.to(torch.uint8).argmax(dim=1)
                next_eval[idx] = target
            a_s, t_s = a_ext[target].view(-1, *([1] * (x.dim() - 1))), t_ext[target]

        name = plan.solvers[i]
        noise = None
        if noisy[i]:
            noise = noise_blocks.at(i)
            noise = noise if idx is None else noise.index_select(0, idx)

        def evaluate_more(xs: Tensor, ts: Tensor, which: Tensor | None = None, idx=idx, target=target) -> Tensor:
            """A solver's extra evaluation at its target step (Heun's correction), guided as that step is."""
            if conditional is None:
                at = False
            elif idx is None:
                at = guided[target]
            else:  # samples jumping to different steps: each its own
                at = guided_on_device[target if which is None else target.index_select(0, which)]
            return counter(xs, ts, idx if which is None else (which if idx is None else idx.index_select(0, which)), at)

        kept = memory[name] if idx is None else {k: v.index_select(0, idx) for k, v in memory[name].items()}
        step = Step(xi, x0, eps_c, a_t, a_s, t_s, noise, specs[name].eta, evaluate_more, runtime.clamp, i,
                    idx is None and target == length)
        x_next, kept = strategies[name].step(step, kept)
        if idx is None:
            memory[name] = kept
        else:
            memory[name] = {k: v.index_copy(0, idx, kept[k].to(v.dtype)) for k, v in memory[name].items()}

        x_next = x_next.to(x.dtype)
        x0 = x0.to(x.dtype)
        final = a_s == 1
        if calibration is not None:
            x_next = calibration(x_next, t_s if idx is not None else t_s.view(1))
        if not strategies[name].owns_last_step:
            x_next = torch.where(final, x0, x_next) if idx is not None else (x0 if target == length else x_next)
        if idx is None:
            x = x_next
            evaluated[:, i] = True
        else:
            x = x.index_copy(0, idx, x_next)
            evaluated[idx, i] = True
    return SampleResult(x, counter.counts, evaluated, plan.grid, states, denoised)
