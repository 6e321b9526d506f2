"""What some tests need from the system (packages .ci/run installs with apt-get, or a part built only when they are
there): where it is missing the test is skipped with the reason, except on CI (CI=true), where that fails the run."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(reason: str) -> NoReturn:
    """Skip the calling test for `reason`; on CI fail it instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true requires it (.ci/run installs it)")
    pytest.skip(reason)
