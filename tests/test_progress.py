"""Progress: a live bar on a terminal, a line per phase (and at most one a minute) when piped, lines for plain logs."""

import io
import re

from rich.console import Console

from stepdrop_search import progress
from stepdrop_search.progress import PlainReporter, RichReporter, advance, phase, reporter


def console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=160, color_system=None), out


def test_piped_output_is_one_line_per_phase_and_a_count_at_most_every_minute(monkeypatch):
    con, out = console(False)
    log = reporter(con)
    assert isinstance(log, PlainReporter)
    phase(log, "rung 0 (pool): 48 candidates", 48)
    for i in range(10):
        advance(log, f"candidate {i}")
    log("exported best.json")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith("rung 0 (pool): 48 candidates") and "candidate" not in lines[1]
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    advance(log, "candidate 10")
    assert re.search(r"rung 0 \(pool\): 48 candidates: 11/48 done, about \d+ min left; last: candidate 10$",
                     out.getvalue().splitlines()[-1])


def test_a_terminal_gets_a_live_bar_with_the_count_and_the_last_item():
    con, out = console(True)
    with reporter(con) as log:
        assert isinstance(log, RichReporter)
        phase(log, "held-out check: 5 finalists", 5)
        for i in range(3):
            advance(log, f"finalist {i}")
        log("a kept line")
    text = out.getvalue()
    assert "3/5" in text and "finalist 2" in text and "a kept line" in text and "held-out check" in text


def test_a_plain_callable_hears_phases_and_items_as_lines():
    lines: list[str] = []
    phase(lines.append, "teacher", 4)
    advance(lines.append, "batch 1")
    advance(lines.append)
    assert lines == ["teacher", "batch 1"]
