"""External programs some tests need (Postfix's smtp-source/smtp-sink, postfix itself).

Without them a test is skipped on a developer's machine, but fails in CI (CI=true), where
`.ci/run` installs them: a missing tool must never turn into a silently green run.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if not missing:
        return
    message = f"needs {', '.join(missing)} (apt-get install postfix)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + ": CI must have it")
    pytest.skip(message)
