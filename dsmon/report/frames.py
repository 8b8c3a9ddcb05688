"""Which frames of a Python stack a reader needs: the interpreter's and the standard
library's thread and process bootstrap removed, the program's own frames kept.

A frame is py-spy's label, "function (short/file.py:line)", innermost first; the file is
py-spy's short name (relative to its sys.path entry), so the standard library's own
`threading.py` reads as exactly that, while a package's `mypkg/threading.py` does not.
"""

from __future__ import annotations

import re

_LABEL = re.compile(r"^(?P<function>.*) \((?P<file>.*):\d+\)$")

# (file, function) of the frames that start a thread, a pool worker or a process and then
# call the program's code: every stack of such a thread ends in them, so they say nothing.
# Functions are matched on their last dotted part (py-spy on Python < 3.11 has no class).
BOOTSTRAP = frozenset({
    ("threading.py", "_bootstrap"), ("threading.py", "_bootstrap_inner"),
    ("threading.py", "run"),
    ("runpy.py", "_run_module_as_main"), ("runpy.py", "_run_code"),
    ("runpy.py", "run_module"), ("runpy.py", "run_path"),
    ("concurrent/futures/thread.py", "_worker"), ("concurrent/futures/thread.py", "run"),
    ("concurrent/futures/process.py", "_process_worker"),
    ("multiprocessing/process.py", "_bootstrap"), ("multiprocessing/process.py", "run"),
    ("multiprocessing/process.py", "start"),
    ("multiprocessing/popen_fork.py", "__init__"), ("multiprocessing/popen_fork.py", "_launch"),
    ("multiprocessing/context.py", "_Popen"),
    ("multiprocessing/spawn.py", "spawn_main"), ("multiprocessing/spawn.py", "_main"),
    ("multiprocessing/pool.py", "worker"),
})
MODULE_FUNCTION = "<module>"


def _parts(frame: str) -> tuple[str, str] | None:
    match = _LABEL.match(frame)
    if match is None:
        return None
    return match["file"], match["function"].rsplit(".", 1)[-1]


def is_bootstrap(frame: str) -> bool:
    return _parts(frame) in BOOTSTRAP


def user_frames(frames: list[str]) -> list[str]:
    """`frames` (innermost first) without bootstrap frames, and without the launcher's
    `<module>` frames at the outer end (the script's top level that called main()). A stack
    made only of such frames is returned whole: never an empty stack."""
    kept = [frame for frame in frames if not is_bootstrap(frame)]
    while len(kept) > 1 and (_parts(kept[-1]) or ("", ""))[1] == MODULE_FUNCTION:
        kept.pop()
    return kept or list(frames)
