"""Errors that reach the user as one line, never as a traceback."""
from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad file, bad value, unknown name).

    The CLI prints ``error: <message>`` on stderr and exits with status 2. The message must name the
    offending file, key or value so that one line is enough to act on it.
    """


class DataError(UserError):
    """Input data that cannot be read: names the file (and row, when there is one) and the problem."""


class ConfigError(UserError):
    """A configuration key that is unknown, mistyped or out of range: names the key."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT / SIGTERM. The CLI prints the message (what was interrupted, what was kept)
    on stderr and exits with ``exit_code``: 128 + the signal number, as a shell reports a killed process.

    A :class:`KeyboardInterrupt`, not an ``Exception``: raised from a signal handler it may land inside
    third-party code (torch.compile, a worker pool) whose ``except Exception`` would otherwise wrap it or
    carry on without it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
