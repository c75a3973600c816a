"""Making the network run fast where it runs: the process allocator on Linux, and ``torch.compile``.

Both exist because of measurements on the shipped model (2 CPU cores, batch 256): a sampling run spent
≈12% of its CPU time in the kernel on page faults (80 M of them in one 12-minute evaluation), because
glibc hands large tensors back to the OS and faults them in again on the next forward; and about half of
each forward is memory-bound GroupNorm / SiLU / add / cat passes that ``torch.compile`` fuses.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from stepdrop_search.errors import UserError

#: ``mallopt`` parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: glibc's largest mmap threshold on 64-bit (32 MiB): blocks below it are served from the heap and reused.
_MMAP_THRESHOLD_MAX = 32 << 20

#: ``--compile auto`` compiles when a run plans at least this many sample-forwards: there the one-off
#: compile (≈1 min on 2 CPU cores, seconds once torch's on-disk cache has it) is paid back.
AUTO_COMPILE_SAMPLE_FORWARDS = 250_000
COMPILE_MODES = ("auto", "on", "off")


def keep_freed_memory_for_reuse() -> bool:
    """Tell glibc to keep freed blocks up to 32 MiB in the heap instead of unmapping them, so the next forward
    reuses them without page faults (the in-process form of the jemalloc/tcmalloc advice for PyTorch on CPU).
    Process-wide, hence called by the command-line entry point, not on import. False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:  # the process's own symbols include libc's; find_library would spawn ldconfig on every start
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


class CompiledNetwork(nn.Module):
    """ε_θ(x, t) through one ``torch.compile`` graph whose batch dimension is symbolic.

    One graph serves full batches, a ragged last batch and every sub-batch a stochastic policy evaluates, so
    it compiles once and no policy is timed on other code than another. Batches of one run eagerly: the
    compiler specialises size 1, and a second compile would cost more than such a batch ever takes.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.eager = model
        self.config = model.config
        self.graph = torch.compile(model)

    def forward(self, x: torch.Tensor, t: torch.Tensor, *labels: torch.Tensor) -> torch.Tensor:
        """``labels``: a conditional network's class labels (the null class among them), passed through."""
        return self.eager(x, t, *labels) if x.shape[0] < 2 else self.graph(x, t, *labels)


def compile_cache() -> tuple[Path, bool]:
    """The folder torch.compile keeps its artefacts in, and whether it is ours: ``TORCHINDUCTOR_CACHE_DIR`` when the
    user set it, else ``inductor/`` in the project's cache (``$STEPDROP_CACHE``), set here for the whole process."""
    from stepdrop_search.objectives.residual import cache_dir

    users = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if users is not None and users not in (os.environ.get("STEPDROP_OWNS_INDUCTOR_CACHE"), _torch_default_cache()):
        return Path(users), False
    ours = str(cache_dir() / "inductor")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.environ["STEPDROP_OWNS_INDUCTOR_CACHE"] = ours
    return Path(ours), True


def _torch_default_cache() -> str | None:
    """The folder torch picks when nobody chose one (it writes it into TORCHINDUCTOR_CACHE_DIR on first use, which
    must not pass for a user's choice)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return None
    return os.path.abspath(default_cache_dir())


def compile_network(model: nn.Module, batch_size: int, log: Callable[[str], None] = lambda m: None) -> nn.Module:
    """``model`` wrapped in a :class:`CompiledNetwork`, compiled now on one batch of ``batch_size`` (so a broken
    compiler shows here, not mid-run); on any compile failure, ``model`` itself, and one line saying why.

    A compile killed midway (Ctrl-C) can leave a truncated artefact in the cache that every later compile trips
    on; so when compiling fails with the project's cache in use, the cache is emptied and the compile tried once
    more, and the log says so. A cache the user chose (``TORCHINDUCTOR_CACHE_DIR``) is never deleted."""
    cache, owned = compile_cache()
    tick = time.perf_counter()
    network, reason = _try_compile(model, batch_size)
    if reason is not None and owned and cache.is_dir() and any(cache.iterdir()):
        shutil.rmtree(cache, ignore_errors=True)
        torch._dynamo.reset()  # the failed attempt's graphs and in-memory caches go too
        log(f"torch.compile failed with its cache in {cache} ({reason[:160]}); emptied the cache and compiling again")
        network, reason = _try_compile(model, batch_size)
    if network is None:
        hint = "" if owned else f"; if a compile was interrupted, its cache {cache} (TORCHINDUCTOR_CACHE_DIR) may be corrupt"
        log(f"torch.compile is not available here ({reason[:160]}){hint}; running the network eagerly")
        return model
    log(f"compiled the network with torch.compile in {time.perf_counter() - tick:.0f} s")
    return network


def _try_compile(model: nn.Module, batch_size: int) -> tuple[CompiledNetwork | None, str | None]:
    """``model`` compiled on one batch of ``batch_size``, or None and the first line of why not."""
    cfg = model.config
    device = next(model.parameters()).device
    n = max(batch_size, 2)
    x = torch.zeros(n, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    t = torch.zeros((), dtype=torch.long, device=device).expand(n)  # as the sampler passes it
    torch._dynamo.mark_dynamic(x, 0)
    torch._dynamo.mark_dynamic(t, 0)
    network = CompiledNetwork(model)
    try:
        with torch.no_grad():
            network(x, t)
    except Exception as error:  # no C++ compiler, no triton, an unsupported op, a broken cache…
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        return None, " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]  # "backend='inductor' raised:" + why
    return network, None


def check_compile_mode(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise UserError(f"--compile takes {', '.join(COMPILE_MODES)}, not {mode!r}")
    return mode


def should_compile(mode: str, sample_forwards: int) -> bool:
    """``--compile``: ``on``, ``off``, or ``auto`` = when the run is big enough to pay for the compile."""
    return check_compile_mode(mode) == "on" or (mode == "auto" and sample_forwards >= AUTO_COMPILE_SAMPLE_FORWARDS)
