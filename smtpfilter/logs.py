"""Logging to stderr (journald adds time and unit) or to syslog facility mail, ident smtpfilter,
so our lines land in /var/log/mail.log beside Postfix's own."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from .config import LogConfig

__all__ = ["setup_logging"]


class _SyslogFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(f"smtpfilter[{os.getpid()}]: %(levelname)s: %(message)s")


def setup_logging(config: LogConfig, *, stream=None) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    if config.target == "syslog":
        address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        handler: logging.Handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        handler.setFormatter(_SyslogFormatter())
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    # aiosmtpd logs every command line at INFO on its "mail.log" logger (and the peer of every
    # connection): per-message noise that also costs CPU. Its warnings still come through.
    logging.getLogger("mail.log").setLevel(
        logging.DEBUG if config.level == "debug" else logging.WARNING
    )
