"""Shared fixtures: small CPU settings so the whole suite stays within minutes on 2 cores."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

from unite_sci.testing import TINY  # noqa: E402


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)
