"""Run a command as root without root's power over file permissions, for the tests of what an
unprivileged service user meets (an unreadable rules directory, a mode-600 message).

Tests run as root in CI, and root reads everything: CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
(capabilities(7)) bypass file modes. ``setpriv`` (util-linux, on every Debian) drops both from
the child's bounding and inheritable sets, so the kernel checks modes as for anyone else, while
the child can still read the checkout and the venv it runs from (owned by root, readable by
root as owner): better than ``runuser -u nobody``, which fails wherever the checkout or the
interpreter is not world-readable. A test that cannot drop them fails under CI=true.
"""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["without_file_override"]

_DROP = "-dac_override,-dac_read_search"


def without_file_override(command: list[str]) -> list[str]:
    """``command`` wrapped so that file modes bind it, as they bind a service user."""
    if os.geteuid() != 0:
        return command  # modes bind us already
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        message = "setpriv (util-linux) is needed to test permission errors as root"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return [setpriv, f"--inh-caps={_DROP}", f"--bounding-set={_DROP}", "--", *command]
