"""Skips for references that live outside the repository (network weights, system data packages): a skip
on a developer's machine without them, a failure in CI (environment variable ``CI`` set), where a missing
reference means the install is broken and the test must not pass silently. Data small enough to ship lives
in ``tests/data`` and is never skipped."""
from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")


def needs(available: bool, reason: str) -> pytest.MarkDecorator:
    """``skipif(not available)`` outside CI; in CI the test runs, and fails on what is missing."""
    return pytest.mark.skipif(not available and not IN_CI, reason=reason)
