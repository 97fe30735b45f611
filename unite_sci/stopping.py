"""Stop a training loop cleanly on SIGINT (Ctrl-C) and SIGTERM (a scheduler's pre-emption).

The first signal only raises a flag: the loop finishes its current step, writes a checkpoint and stops
with :class:`~unite_sci.errors.Interrupted`. A second signal, say while that checkpoint is written,
raises :class:`Interrupted` at once; checkpoint writes are atomic, so the half-written temporary file is
removed and the checkpoints written before stay complete.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from .errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager: while inside, SIGINT / SIGTERM set :attr:`signum` instead of killing the process.

    Handlers can only be installed from the main thread; elsewhere (a notebook's worker thread) the
    signals keep their usual behaviour.

    Example::

        with StopSignals() as stop:
            while not done:
                step()
                if stop.signum:
                    save(); raise Interrupted(..., stop.signum)
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise Interrupted(f"second {signal.Signals(signum).name}: stopped at once; the checkpoints "
                              "written before are complete, resume with --resume", signum)
        self.signum = signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
