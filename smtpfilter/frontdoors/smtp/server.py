"""The content filter daemon (``smtpfilter serve``): the service lifecycle with the SMTP front
door plugged in.

The lifecycle (bind, accept, reload, drain, metrics, sd_notify) is service/lifecycle.py's
:class:`Daemon`; this module adds what is SMTP's: one :class:`FilterSMTP` per connection with
the transaction handler, the TLS context, the session limit (the longest-idle session makes
room) and the drain's ``421 4.3.2`` to idle sessions.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import weakref

from smtpfilter.config.settings import Config
from smtpfilter.core import logline, replies
from smtpfilter.frontdoors.smtp.session import FilterSMTP
from smtpfilter.frontdoors.smtp.transaction import FilterHandler
from smtpfilter.service.lifecycle import Daemon, run
from smtpfilter.service.runtime import Runtime

__all__ = ["Server", "SmtpFrontDoor", "make_tls_context", "run"]

log = logging.getLogger(__name__)


def make_tls_context(config: Config) -> ssl.SSLContext | None:
    if config.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls.cert, config.tls.key)
    return context


class SmtpFrontDoor:
    """The SMTP sessions of one daemon (service.lifecycle.FrontDoor)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.handler = FilterHandler(runtime)
        self.tls_context = make_tls_context(runtime.config)
        self._protocols: weakref.WeakSet[FilterSMTP] = weakref.WeakSet()

    def protocol(self) -> FilterSMTP:
        config = self.runtime.config
        protocol = FilterSMTP(
            self.handler,
            hostname=config.hostname,  # else aiosmtpd calls getfqdn() per connection
            ident="ESMTP smtpfilter",
            timeout=config.limits.idle_timeout,
            data_size_limit=config.limits.message_size or None,
            enable_SMTPUTF8=True,  # decode arguments as UTF-8 (RFC 6531); announced by us
            tls_context=self.tls_context,
            loop=asyncio.get_running_loop(),
        )
        self._protocols.add(protocol)
        return protocol

    # --- session limit -------------------------------------------------------------------
    def make_room(self) -> bool:
        """At limits.sessions, close the session idle longest, if any, so a newcomer is served.

        Idle sessions (greeted or between transactions, waiting for a command) cost a waiting
        client everything and their own client nothing: Postfix's smtp client keeps an unused
        connection for 2 s at most (smtp_connection_cache_time_limit) and tests a cached one
        with RSET before reusing it (CONNECTION_CACHE_README), so it simply opens a new one.
        Sessions in a transaction are never closed here: only when every session is busy does
        the newcomer get 421."""
        oldest: FilterSMTP | None = None
        oldest_since = 0.0
        for protocol in self._protocols:
            since = protocol.idle_since()
            if since is not None and (oldest is None or since < oldest_since):
                oldest, oldest_since = protocol, since
        if oldest is None:
            return False
        log.info(
            "closing idle session from %s (idle %.1fs) for a new one: %d sessions open "
            "(limits.sessions)",
            logline.peer(oldest.session.peer),
            time.monotonic() - oldest_since,
            self.runtime.sessions,
        )
        self.runtime.count("idle_closed")
        oldest.close_idle(replies.R421_IDLE_CLOSED)
        return True

    # --- drain ---------------------------------------------------------------------------
    def close_idle(self) -> None:
        """421 to every session with no transaction under way (RFC 5321 §3.8)."""
        for protocol in list(self._protocols):
            transport = protocol.transport
            session = protocol.session
            if transport is None or transport.is_closing() or session is None:
                continue
            txn = protocol.envelope
            if session.busy or (txn is not None and getattr(txn, "started", False)):
                continue
            transport.write(replies.R421_SHUTTING_DOWN.encode() + b"\r\n")
            transport.close()

    def open_sessions(self) -> int:
        return sum(1 for p in self._protocols if p.transport is not None)

    def abort(self) -> None:
        for protocol in list(self._protocols):
            if protocol.transport is not None:
                log.warning("shutdown deadline: closing a session still in a transaction")
                protocol.transport.close()


class Server(Daemon):
    """``smtpfilter serve``: the after-queue content filter (and before-queue proxy)."""

    def make_front_door(self) -> SmtpFrontDoor:
        return SmtpFrontDoor(self.runtime)
