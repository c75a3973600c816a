"""What long phases tell the user: a live rich display on a terminal, plain lines when piped.

Library code reports through the ``log`` callable it is given: ``log(message)`` for a line worth keeping, and, through
:func:`phase` and :func:`advance`, the start of a phase with its item count and each item done. For a plain callable
(``print``, a list's ``append``: notebooks, tests) a phase is a line and each item's detail is a line, as before. A
:class:`Reporter` (what the CLI passes) turns them into a progress display: on a terminal a rich bar per phase (items
done, elapsed, time left, the last item's detail) with the kept lines printed above it; without a terminal one line
when a phase starts and at most one line a minute while it runs, so ``nohup`` and CI logs stay short.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console

Log = Callable[[str], None]
#: without a terminal, a running phase prints its count at most this often
PLAIN_EVERY_S = 60.0


class Reporter:
    """Base of the CLI's reporters: a callable log plus phases (see the module docstring)."""

    def __init__(self, console: Console) -> None:
        self.console, self.start = console, time.perf_counter()

    def elapsed(self) -> str:
        return f"{time.perf_counter() - self.start:6.0f} s"

    def __call__(self, message: str) -> None:
        self.console.print(f"[dim]{self.elapsed()}  {message}[/dim]", highlight=False, soft_wrap=True)

    def phase(self, name: str, total: int | None = None) -> None:
        raise NotImplementedError

    def advance(self, detail: str = "") -> None:
        raise NotImplementedError

    def close(self) -> None:
        """End the display (the CLI calls it when the command ends, also on an error)."""

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PlainReporter(Reporter):
    """Piped output: a line per phase, then its count at most once a minute."""

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self.name, self.total, self.done, self.last, self.began = "", None, 0, 0.0, 0.0

    def phase(self, name: str, total: int | None = None) -> None:
        self.name, self.total, self.done, self.last = name, total, 0, time.perf_counter()
        self.began = self.last
        self(name)

    def advance(self, detail: str = "") -> None:
        self.done += 1
        if time.perf_counter() - self.last >= PLAIN_EVERY_S:
            self.last = time.perf_counter()
            count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
            left = ""
            if self.total:
                per_item = (time.perf_counter() - self.began) / self.done
                left = f", about {per_item * (self.total - self.done) / 60:.0f} min left"
            self(f"{self.name}: {count} done{left}" + (f"; last: {detail}" if detail else ""))


class RichReporter(Reporter):
    """A terminal: one live bar for the running phase; kept lines scroll above it."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        super().__init__(console)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                                 TextColumn("[dim]{task.fields[detail]}"), console=console, transient=False)
        self.progress.start()
        self.task = None

    def __call__(self, message: str) -> None:
        self.progress.console.print(f"[dim]{self.elapsed()}  {message}[/dim]", highlight=False, soft_wrap=True)

    def phase(self, name: str, total: int | None = None) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self(name)
        self.task = self.progress.add_task(name.split(":")[0][:40], total=total, detail="")

    def advance(self, detail: str = "") -> None:
        if self.task is not None:
            self.progress.update(self.task, advance=1, detail=detail[:60])

    def close(self) -> None:
        self.progress.stop()


def reporter(console: Console) -> Reporter:
    """A rich display when ``console`` is a terminal, plain lines otherwise."""
    return RichReporter(console) if console.is_terminal else PlainReporter(console)


def phase(log: Log, name: str, total: int | None = None) -> None:
    """Start a phase of ``total`` items (None: open-ended, e.g. a study until its budget ends)."""
    if isinstance(log, Reporter):
        log.phase(name, total)
    else:
        log(name)


def advance(log: Log, detail: str = "") -> None:
    """One item of the running phase done; ``detail`` says which (a line of its own for a plain log)."""
    if isinstance(log, Reporter):
        log.advance(detail)
    elif detail:
        log(detail)
