"""Logging to stderr (journald adds time and unit) or to syslog facility mail, ident smtpfilter,
so our lines land in /var/log/mail.log beside Postfix's own.

Syslog lines look like Postfix's: ``smtpfilter[PID]: text`` for information and
``smtpfilter[PID]: warning: text`` for problems (Postfix's msg(3) prefixes), so the tools that
read mail.log (pflogsumm, grep "warning:") treat them alike. A problem with one message is
``smtpfilter[PID]: QUEUEID: warning: text`` (core/logline.py PER_MESSAGE), as Postfix's
cleanup(8) writes one, so that ``grep QUEUEID`` finds it beside Postfix's own lines.

Under ``serve --workers N`` (or ``milter --workers N``) each worker's lines carry its number:
the syslog tag ``smtpfilter/w2[PID]:`` (Postfix's ``postfix/smtpd[PID]:`` shape, so a pattern
``smtpfilter[/[]`` finds every process and ``smtpfilter/w2`` one worker), and a ``w2 `` prefix on
stderr. The supervisor and a single process write plain ``smtpfilter[PID]:``.

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

__all__ = ["EscapingFormatter", "set_worker", "setup_logging"]

_IDENT = "smtpfilter"
# The worker number of this process (set_worker), None outside --workers.
_worker: int | None = None


def set_worker(number: int | None) -> None:
    """This process is worker ``number`` of ``--workers N`` (service/workers.py, after the
    fork): its log lines say so from now on, whatever handler was set up before."""
    global _worker
    _worker = number


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
        # The PID and worker per record, not per formatter: pipe mode and forks get their own.
        tag = _IDENT if _worker is None else f"{_IDENT}/w{_worker}"
        prefix = self._PREFIX.get(record.levelno, "")
        text = super().format(record)
        if prefix and getattr(record, "per_message", False):
            # "QUEUEID: text" → "QUEUEID: warning: text" (core/logline.py PER_MESSAGE)
            queue_id, sep, rest = text.partition(": ")
            if sep:
                return f"{tag}[{os.getpid()}]: {queue_id}: {prefix}{rest}"
        return f"{tag}[{os.getpid()}]: {prefix}{text}"


class _StderrFormatter(EscapingFormatter):
    """``LEVEL logger: text`` (journald adds time, unit and PID), ``wN `` first in a worker."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if _worker is None else f"w{_worker} {text}"


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
        handler.setFormatter(_StderrFormatter())
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    # aiosmtpd logs every command line at INFO on its "mail.log" logger (and the peer of every
    # connection): per-message noise that also costs CPU. Its warnings still come through.
    logging.getLogger("mail.log").setLevel(
        logging.DEBUG if config.level == "debug" else logging.WARNING
    )
    if fallback_reason is not None:
        logging.getLogger(__name__).warning("%s", fallback_reason)
