"""Writing files so that a reader (or a crash) never sees half of one.

Every file the tool writes — checkpoints, policy files, reports, images, sample arrays — goes through
:func:`atomic_write`: the content is written to a temporary name in the same folder and renamed onto
the target, which POSIX makes atomic. It lives apart from model loading so that writing a report does
not import the model code.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)``, then rename onto ``path``: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should look like any other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | os.PathLike, payload) -> Path:
    """``payload`` as indented JSON with a final newline, atomically."""
    return write_text(path, json.dumps(payload, indent=2) + "\n")


def check_writable(path: str | os.PathLike | None, flag: str, *, folder: bool = False) -> None:
    """Refuse, before any work, an output the run could not write at its end: a file path that is a folder (or a
    ``folder`` path that is a file), or one under a folder that cannot be created or written. A probe file is made
    and removed in the deepest folder that exists, so nothing is left behind (folders are made when the output is)."""
    from stepdrop_search.errors import UserError

    if path is None:
        return
    path = Path(path)
    if path.is_dir() != folder and path.exists():
        raise UserError(f"{flag} {path} is a {'file' if folder else 'folder'}; give a {'folder' if folder else 'file'} path")
    existing = path if folder and path.is_dir() else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, so no folder can be made there")
    try:
        fd, probe = tempfile.mkstemp(prefix=".stepdrop-probe.", dir=existing)
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot write in {existing} ({exc.strerror or exc}); choose another path") from None
    os.close(fd)
    os.unlink(probe)
