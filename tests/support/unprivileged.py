"""Run a child as a service user would, when the tests run as root: files it cannot read.

The README's unit runs smtpfilter as an unprivileged user, and a rules directory that only root
can read is the first thing a newcomer meets (issue 13). Tests run as root here, and root reads a
``chmod 000`` file all the same (CAP_DAC_OVERRIDE). Switching to ``nobody`` is no way out: the
interpreter itself may live under /root (pyenv), which nobody can read. So the child stays uid 0
and gives up the two capabilities that let root ignore file modes (capabilities(7):
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): then a file or directory of mode 000 is refused with
EACCES, "Permission denied", exactly as it is for the service user. Not root: nothing to drop,
mode 000 already does it.

Both sets must lose them: the effective/permitted/inheritable sets (capset(2)) for this process,
and the bounding set (prctl PR_CAPBSET_DROP) so that an execve does not give them back (for uid 0
the kernel grants permitted = inheritable | bounding at exec). No external tool (setpriv, capsh)
is needed.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["drop_file_override", "needs_dropping"]

_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2
_PR_CAPBSET_DROP = 24
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def needs_dropping() -> bool:
    return os.geteuid() == 0


def drop_file_override() -> None:
    """In the child (a preexec_fn, or after fork): root no longer reads what mode 000 forbids.
    Raises OSError when the kernel refuses, so a test fails rather than passes unprivileged."""
    if not needs_dropping():
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    keep = ~((1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH)) & 0xFFFFFFFF
    data[0].effective &= keep
    data[0].permitted &= keep
    data[0].inheritable &= keep
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
