"""Stop a run cleanly on SIGINT (Ctrl-C) and SIGTERM (a scheduler's pre-emption).

Between training steps the first signal only raises a flag: the loop finishes its current step, writes a
checkpoint and stops with :class:`~unite_sci.errors.Interrupted`. Some stretches cannot wait for a step
boundary: the first step of a compiled run compiles for minutes, data preparation and reference builds
take as long. Inside :meth:`StopSignals.at_once` a first signal therefore stops the run at once, with a
message that names what was interrupted and what was kept. A second signal raises :class:`Interrupted`
at once wherever it lands; checkpoint writes are atomic, so the half-written temporary file is removed
and the checkpoints written before stay complete. A signal while an interruption is already on its way
out (a compile pool shutting down, say) ends the process with :func:`os._exit`.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Any, Iterator

from .errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_leaving: list[int] = []  # the signal of an Interrupted already raised in this process (at most one entry)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def interrupt(message: str, signum: int) -> Interrupted:
    """The :class:`Interrupted` to raise for ``signum``; remembers that the process is on its way out, so
    that any later signal exits at once (:func:`exit_now`)."""
    if not _leaving:
        _leaving.append(signum)
    return Interrupted(message, signum)


def exit_now(signum: int) -> None:
    """End the process at once, skipping clean-up (interpreter shutdown, pools): the user asked twice."""
    print(f"interrupted: second {signal_name(signum)}: exited at once", file=sys.stderr, flush=True)
    os._exit(128 + signum)


class StopSignals:
    """Context manager: while inside, SIGINT / SIGTERM set :attr:`signum` instead of killing the process,
    except inside :meth:`at_once`, where the first signal raises :class:`Interrupted` straight away.

    Handlers can only be installed from the main thread; elsewhere (a notebook's worker thread) the
    signals keep their usual behaviour.

    Example::

        with StopSignals() as stop:
            with stop.at_once("compiling the first step", "nothing trained yet"):
                step()
            while not done:
                step()
                if stop.signum:
                    save(); raise Interrupted(..., stop.signum)
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._now: tuple[str, str] | None = None  # (what is running, what a stop keeps) inside at_once

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old.clear()

    @contextmanager
    def at_once(self, what: str, kept: str) -> Iterator[None]:
        """Inside, a signal stops at once: :class:`Interrupted` says "<SIGNAL> while <what>: <kept>".
        A signal that came just before (the flag is up) stops here too, before ``what`` starts."""
        if self.signum:
            raise interrupt(f"{signal_name(self.signum)} before {what}: {kept}", self.signum)
        outer, self._now = self._now, (what, kept)
        try:
            yield
        finally:
            self._now = outer

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if _leaving:  # an Interrupted is already propagating (its clean-up is what takes long)
            exit_now(signum)
        if self.signum is not None:
            raise interrupt(f"second {signal_name(signum)}: stopped at once; the checkpoints written "
                            "before are complete, resume with --resume", signum)
        self.signum = signum
        if self._now is not None:
            what, kept = self._now
            raise interrupt(f"{signal_name(signum)} while {what}: {kept}", signum)


@contextmanager
def stop_at_once(what: str, kept: str) -> Iterator[StopSignals]:
    """:class:`StopSignals` whose whole body is :meth:`~StopSignals.at_once`: for work with no step
    boundary (data preparation, a reference build). SIGTERM then reports like SIGINT instead of killing
    the process without a word."""
    with StopSignals() as stop, stop.at_once(what, kept):
        yield stop


def command_signals(command: str) -> StopSignals:
    """The CLI's handlers for a whole subcommand: a signal outside a training loop (a reference build, an
    evaluation) stops it at once with one line, SIGTERM included; a training run installs its own inside."""
    stop = StopSignals()
    stop._now = (f"running `unite-sci {command}`", "finished caches are kept (they are written whole), "
                 "outputs not yet written are missing")
    return stop
