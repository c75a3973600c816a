"""One exception type for every problem the user can fix.

The CLI turns a :class:`UserError` into a single line on stderr and exit code 2, so bad input never
ends in a traceback; library callers can catch it like any other exception.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (a path, a file, a flag), with a message that says how to fix it."""
