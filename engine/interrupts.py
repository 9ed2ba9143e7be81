"""Stopping a long run cleanly: while `signals_interrupt` is active, SIGINT and SIGTERM raise `Interrupted` (a
KeyboardInterrupt) in the main thread, so a run killed by `kill` or a job scheduler unwinds as Ctrl-C does: its
`with` blocks close (eval's results file gets its last atomic write; score-heads has written each finished trial
already) and the command exits with 128 + the signal number. Further SIGINT/SIGTERM are ignored while that
clean-up runs, so a second signal cannot cut it short.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

WATCHED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; `exit_status` is the shell's convention for it (130 SIGINT, 143 SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_status = 128 + signum


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into `Interrupted` inside the block (main thread only: elsewhere it changes
    nothing, as Python runs signal handlers in the main thread); the previous handlers come back on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in WATCHED}

    def stop(signum: int, _frame: object) -> None:
        for watched in WATCHED:
            signal.signal(watched, signal.SIG_IGN)
        raise Interrupted(signum)

    for signum in WATCHED:
        signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
