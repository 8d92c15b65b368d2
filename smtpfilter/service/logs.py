"""Logging to stderr (journald adds time and unit) or to syslog facility mail, ident smtpfilter,
so our lines land in /var/log/mail.log beside Postfix's own.

Syslog lines look like Postfix's: ``smtpfilter[PID]: text`` for information and
``smtpfilter[PID]: warning: text`` for problems (Postfix's msg(3) prefixes), so the tools that
read mail.log (pflogsumm, grep "warning:") treat them alike.

Every line, whatever the target, is escaped (smtpfilter.core.text): log lines quote client data (MAIL
FROM, XFORWARD values, header values, aiosmtpd's own "unrecognised: COMMAND" warning). A raw CR,
LF or ESC there would forge lines or drive the terminal of whoever reads the log, and a byte that
is not UTF-8 (decoded with surrogateescape) makes SysLogHandler's UTF-8 encoding raise, which
loses the line: the one INFO line of a discarded message would leave no trace. Such characters
appear as ``\\xNN`` instead; nothing is dropped.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys

from smtpfilter.config.settings import LogConfig
from smtpfilter.core.text import escape, escape_lines

__all__ = ["EscapingFormatter", "setup_logging"]


class EscapingFormatter(logging.Formatter):
    """A Formatter whose output holds no control character and no undecodable byte: the
    message is one line, a traceback keeps its line feeds (they are ours) and nothing else."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_text:  # cached by another formatter: escaping it again changes nothing
            record.exc_text = escape_lines(record.exc_text)
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:
        return escape_lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return escape_lines(super().formatStack(stack_info))


class _SyslogFormatter(EscapingFormatter):
    """RFC 3164 TAG ``smtpfilter[PID]:`` and Postfix's severity prefixes."""

    _PREFIX = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "fatal: "}

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        # The PID per record, not per formatter: pipe mode and forks get their own.
        prefix = self._PREFIX.get(record.levelno, "")
        return f"smtpfilter[{os.getpid()}]: {prefix}{super().format(record)}"


def _unreachable(path: str) -> str | None:
    """Why nothing can be logged to the syslog socket ``path`` now, or None if it works.

    SysLogHandler ignores a failed connect (as openlog(3) does) and then reports every record
    as a "--- Logging error ---" traceback: ask first, as it would connect (datagram, then
    stream)."""
    error: OSError | None = None
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(path)
                return None
            except OSError as failure:
                error = error or failure
    return error.strerror if error is not None else "unknown error"


def _syslog_handler(config: LogConfig) -> logging.Handler:
    handler = logging.handlers.SysLogHandler(
        address=config.syslog_socket, facility=logging.handlers.SysLogHandler.LOG_MAIL
    )
    # No NUL after each message: RFC 3164 has none, and journald keeps it in the text.
    handler.append_nul = False
    handler.setFormatter(_SyslogFormatter())
    return handler


def setup_logging(config: LogConfig, *, stream=None) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    fallback_reason = None
    handler: logging.Handler
    if config.target == "syslog":
        problem = _unreachable(config.syslog_socket)
        if problem is None:
            handler = _syslog_handler(config)
        else:
            # No syslog daemon (a container): never lose the log, and say why on stderr.
            # (No UDP fallback: a datagram to a port nobody reads is a log thrown away.)
            fallback_reason = (
                f"cannot log to syslog socket {config.syslog_socket} ({problem}): logging to stderr"
            )
    if config.target != "syslog" or fallback_reason is not None:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(EscapingFormatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    # aiosmtpd logs every command line at INFO on its "mail.log" logger (and the peer of every
    # connection): per-message noise that also costs CPU. Its warnings still come through.
    logging.getLogger("mail.log").setLevel(
        logging.DEBUG if config.level == "debug" else logging.WARNING
    )
    if fallback_reason is not None:
        logging.getLogger(__name__).warning("%s", fallback_reason)
