"""Files the commands write (`diagnose -o`, `snapshot -o`): checked before any work starts, and
written whole or not at all."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager


def output_problem(path: str) -> str | None:
    """Why `path` cannot be written, in words, or None. Checked before a diagnosis window or a
    snapshot starts, so a typo costs no sampling time."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"{path} is a directory; name a file in it"
    try:
        if not stat.S_ISDIR(os.stat(directory).st_mode):
            return f"{directory} is not a directory"
    except PermissionError:
        return f"cannot reach directory {directory} (permission denied)"
    except OSError:
        return f"directory {directory} does not exist"
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            return f"{path} is not writable (permission denied)"
    elif not os.access(directory, os.W_OK | os.X_OK):
        return f"cannot create files in {directory} (permission denied)"
    return None


@contextmanager
def replacing(path: str):
    """Yield the name to write to. For a regular file (or a new one) that is a temporary file
    beside it, renamed over `path` only when the block succeeds: a failure or a kill midway
    leaves no half-written report. A device or FIFO (`-o /dev/stdout`) is written directly:
    renaming over it would replace the device node."""
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        special = False
    if special:
        yield path
        return
    partial = f"{path}.{os.getpid()}.partial"
    try:
        yield partial
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
