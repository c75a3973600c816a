"""One exception type for every problem the user can fix.

The CLI turns a :class:`UserError` into a single line on stderr and exit code 2, so bad input never
ends in a traceback; library callers can catch it like any other exception.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (a path, a file, a flag), with a message that says how to fix it."""


def unknown_name(what: str, name: str, choices) -> UserError:
    """"unknown solver 'dpmpp2m'; did you mean dpmpp-2m? choose one of …": the closest names first, compared without
    case, dashes, underscores and '+' (how names are most often misspelled: dpmpp2m, DPM++2M, dpmpp_2m)."""
    import difflib

    choices = list(choices)

    def plain(text: str) -> str:
        return "".join(c for c in text.lower() if c not in "-_+ ")

    by_plain = {plain(c): c for c in choices}
    close = [by_plain[plain(name)]] if plain(name) in by_plain else \
        [by_plain[c] for c in difflib.get_close_matches(plain(name), list(by_plain), n=2, cutoff=0.6)]
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return UserError(f"unknown {what} {name!r}; {hint}choose one of {', '.join(choices)}")
