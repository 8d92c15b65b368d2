"""The life of a daemon: bind, serve, reload on SIGHUP, drain on SIGTERM, tell systemd.

Every daemon of smtpfilter is a :class:`Daemon` with a front door plugged in: the content filter
(frontdoors/smtp/server.py) plugs in its SMTP protocol; the milter (frontdoors/milter/server.py)
plugs in its own, and where it listens (:meth:`Daemon.bind`). The
front door knows its protocol and its sessions (:class:`FrontDoor`); everything else is here,
written once:

- ``start()`` binds the listener and loads nothing lazily: when it returns, rules are loaded and
  the port is open, which is when systemd gets READY=1.
- SIGHUP re-reads config and rules, builds the new RuleSet beside the old one and swaps a single
  reference; a broken file keeps the old rules serving and logs every problem. Sessions in flight
  are not disturbed; each message finishes with the rules it started with.
- SIGTERM stops accepting mail: idle sessions and connections that arrive during the drain are
  told so by the front door (SMTP: ``421 4.3.2``; Postfix defers and retries; a closed port would
  leave connections already in the kernel's queue with an end of file instead of an answer);
  messages in flight finish within a deadline; then the port closes, the 10026 pool closes and
  it returns (exit 0). A socket that systemd holds (smtpfilter.socket) is let go at once
  instead: connections then wait in its queue for the next instance, which is the point of
  socket activation.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from smtpfilter.config.settings import Config, ConfigError, load_config
from smtpfilter.delivery.downstream import DownstreamPool
from smtpfilter.engine.rules import RuleSet, rules_for
from smtpfilter.service import sdnotify
from smtpfilter.service.listener import Listener
from smtpfilter.service.runtime import Runtime

__all__ = ["Daemon", "FrontDoor", "run"]

log = logging.getLogger(__name__)

_PRUNE_INTERVAL = 5.0
# Settings a reload cannot apply to a running process: where it listens, who it is, which event
# loop runs it and how it logs; it says so and keeps them. The others (rules, policy, limits,
# DNS, the 10026 pool's timeouts and size, quarantine) apply to what starts after the reload.
RESTART_ONLY = ("listen", "forward", "hostname", "tls", "log", "metrics", "event_loop", "state")


def run(main, event_loop: str = "auto"):
    """``asyncio.run(main)`` on the configured event loop.

    uvloop (libuv) costs about 40% less CPU per message than asyncio's own loop in
    bench/run.py (0.48 against 0.77 ms for 10 KB messages); "auto" uses it when installed.
    """
    if event_loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                raise
        else:
            return uvloop.run(main)
    return asyncio.run(main)


class FrontDoor(Protocol):
    """What a daemon serves: the protocol of each accepted connection, and its sessions."""

    def protocol(self) -> asyncio.Protocol:
        """A new protocol object for one accepted connection."""

    def make_room(self) -> bool:
        """At limits.sessions: close a session that waits for nothing; True if one was."""

    def close_idle(self) -> None:
        """During the drain: tell sessions with no message under way we are going, and close."""

    def open_sessions(self) -> int:
        """Sessions whose connection is still open."""

    def abort(self) -> None:
        """The drain deadline passed: close every session that is left."""


class Daemon:
    """A daemon's lifecycle around one front door (:meth:`make_front_door`)."""

    frontdoor = "smtp"  # the front door's name: the metrics' "frontdoor" label
    restart_only = RESTART_ONLY  # config keys a reload cannot apply (RESTART_ONLY)

    def __init__(
        self,
        config: Config,
        ruleset: RuleSet,
        *,
        config_path: Path | None = None,
        overrides: dict[str, str] | None = None,
        sock: socket.socket | None = None,
        handed_over: bool = False,
    ) -> None:
        """``sock``: a listening socket to serve instead of binding ``config.listen``;
        ``handed_over``: it belongs to systemd (socket activation), see the module docstring."""
        self.config_path = config_path
        self.overrides = overrides or {}
        self.runtime = Runtime(config, ruleset, DownstreamPool.for_config(config))
        # Shared by every rule set this daemon will load: the DNS cache and zone health
        # survive reloads.
        self.env = ruleset.env
        self.env.dns.configure(config.dns)
        self.env.auth.configure(config.authentication)
        self._sock = sock
        self._handed_over = handed_over
        self._server: Listener | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.started_at = time.time()
        self.worker = 0  # with serve --workers N: this worker's number, 0..N-1 (0 serves metrics)
        self.metrics = None  # the metrics responder, when metrics.listen is set and bound
        self.door = self.make_front_door()
        self.runtime.make_room = self.door.make_room

    def make_front_door(self) -> FrontDoor:  # pragma: no cover - every daemon has its own
        raise NotImplementedError

    @property
    def config(self) -> Config:
        return self.runtime.config

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # Our own accept loop, not loop.create_server's: out of file descriptors, new
        # connections wait in the listen queue and one warning a minute says so (listener.py).
        if self._sock is not None:
            self._server = Listener(self._sock, self.door.protocol)
        else:
            self._server = self.bind()
        self._server.start()
        self.warn_beyond_loopback()
        await self._start_metrics()
        self._tasks.append(asyncio.create_task(self._maintenance()))
        self._tasks.append(asyncio.create_task(self.env.dns.health_loop()))
        log.info(
            "%s; %d rules from %d files (%s)",
            self.started_text(),
            len(self.runtime.ruleset),
            len(self.runtime.ruleset.files),
            type(loop).__module__.split(".")[0],
        )

    # What a front door's daemon may say differently: where it listens, and how it says so.
    def bind(self) -> Listener:
        """The listening socket, when systemd passed none: ``listen`` for SMTP."""
        listen = self.config.listen
        return Listener.bind(listen.host, listen.port, self.door.protocol)

    def warn_beyond_loopback(self) -> None:
        listen = self.config.listen
        if not listen.is_loopback:
            log.warning(
                "listening on %s, beyond loopback: only allow_clients may connect, "
                "everyone else gets 554",
                listen,
            )

    def started_text(self) -> str:
        return (f"smtpfilter listening on {self.address_text}, forwarding to "
                f"{self.config.forward} as {self.config.hostname}")

    async def _start_metrics(self) -> None:
        """Optional; a port we cannot bind is logged and mail flows on without metrics.
        With --workers N every worker records and worker 0 serves the totals of all of them
        (prometheus_client's multiprocess mode, set up by service/workers.py)."""
        listen = self.config.metrics.listen
        if listen is None:
            return
        # prometheus_client is imported only here: a filter without metrics does not load it.
        from smtpfilter.service.metrics import Metrics, MetricsServer, multiprocess_dir

        metrics = Metrics(self.runtime, started_at=self.started_at, frontdoor=self.frontdoor)
        self.runtime.metrics = metrics
        if self.worker and multiprocess_dir():
            return  # worker 0 serves what this one records
        server = MetricsServer(metrics, listen.host, listen.port)
        try:
            await server.start()
        except OSError as error:
            log.error("metrics: cannot listen on %s:%d (%s); serving mail without metrics",
                      listen.host, listen.port, error.strerror or error)
            if not multiprocess_dir():
                self.runtime.metrics = None  # nobody could read them
            return
        self.metrics = server

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def address_text(self) -> str:
        if self._server is None or not self._server.sockets:
            return str(self.config.listen)
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def _maintenance(self) -> None:
        while True:
            await asyncio.sleep(_PRUNE_INTERVAL)
            self.runtime.pool.prune()
            if self.runtime.metrics is not None:
                self.runtime.metrics.sample()  # other workers' scrapes read it from the files
            sdnotify.notify(f"STATUS={self.status()}", wait=0)  # never holds the loop

    def status(self) -> str:
        rt = self.runtime
        counts = rt.counters
        text = (
            f"{rt.sessions} sessions, {len(rt.ruleset)} rules; delivered {counts.get('delivered', 0)}, "
            f"rejected {counts.get('rejected', 0)}, discarded {counts.get('discarded', 0)}, "
            f"deferred {counts.get('deferred', 0)}"
        )
        if counts.get("quarantined"):
            text += f", quarantined {counts['quarantined']}"
        return text

    async def serve(self, *, notify: bool = True) -> None:
        """Run until SIGTERM/SIGINT (or ``stop()``), then shut down gracefully.

        ``notify=False`` for a worker process: its supervisor talks to systemd."""
        loop = asyncio.get_running_loop()
        await self.start()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        if notify:
            sdnotify.notify(f"READY=1\nSTATUS={self.status()}")
        try:
            await self._stopping.wait()
            # While messages in flight finish, a reload (logrotate's "systemctl reload") or a
            # second SIGTERM must not fall back to the default action, which kills the
            # process and cuts those messages off.
            timeout = self.runtime.config.limits.shutdown_timeout
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.add_signal_handler(sig, self._signal_while_stopping, sig, timeout)
            sdnotify.notify("STOPPING=1")
            await self.shutdown(timeout)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _signal_while_stopping(self, sig: signal.Signals, timeout: float) -> None:
        log.warning(
            "%s ignored: shutting down, messages in flight have up to %gs to finish "
            "(limits.shutdown_timeout)",
            signal.Signals(sig).name,
            timeout,
        )

    def stop(self) -> None:
        self._stopping.set()

    # --- reload --------------------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read config and rules; keep serving the old ones if anything is wrong."""
        sdnotify.notify("RELOADING=1\nMONOTONIC_USEC=%d" % (time.monotonic_ns() // 1000))
        try:
            config = load_config(self.config_path).with_overrides(**self.overrides)
            ruleset = rules_for(config, self.env)
        except Exception as error:
            # A ConfigError lists every problem with file:line and rule; anything else (a bug,
            # an unreadable file) is logged whole. Either way the old rules keep serving
            # (Postfix's daemons degrade, not die, on a bad table at reload).
            if isinstance(error, ConfigError):
                for problem in error.problems:
                    log.error("reload: %s", problem)
            elif isinstance(error, OSError):
                # What the system refused and where; not a bug of ours, so no traceback.
                name = f"{error.filename}: " if error.filename else ""
                log.error("reload: %s%s", name, error.strerror or error)
            else:
                log.exception("reload: unexpected error")
            log.error("reload failed: keeping the previous configuration and rules")
            self.runtime.count("reload_failures")
            sdnotify.notify(f"READY=1\nSTATUS=reload failed; {self.status()}")
            return False
        old = self.runtime.config
        restart_only = [
            key for key in self.restart_only if getattr(old, key) != getattr(config, key)
        ]
        if restart_only:
            log.warning("reload: %s changed; that takes a restart", ", ".join(restart_only))
            config = replace(
                config, **{key: getattr(old, key) for key in restart_only}
            )
        # One assignment: a message in flight already holds the old engine (rules, policy).
        self.runtime.swap(config, ruleset)
        self.env.dns.configure(config.dns)
        self.env.auth.configure(config.authentication)
        self.runtime.pool.configure(config)  # 10026 timeouts and pool size, for new connections
        for warning in ruleset.warnings:  # usable rules, but the admin should know
            log.warning("reload: %s", warning)
        log.info(
            "reloaded: %d rules from %d files", len(ruleset), len(ruleset.files)
        )
        sdnotify.notify(f"READY=1\nSTATUS={self.status()}")
        return True

    # --- shutdown ------------------------------------------------------------------------
    async def shutdown(self, deadline: float = 30.0) -> None:
        self.runtime.accepting = False  # from now on the front door turns newcomers away
        if self._server is not None and self._handed_over:
            self._server.close()
        end = time.monotonic() + deadline
        while True:
            self.door.close_idle()
            if not self.door.open_sessions() or time.monotonic() >= end:
                break
            await asyncio.sleep(0.05)
        if self._server is not None:
            self._server.close()
        self.door.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.metrics is not None:
            await self.metrics.close()
        await self.env.dns.aclose()
        await self.env.state.aclose()  # after the last message settled its rate limits
        await self.runtime.pool.close()
        if self._server is not None:
            await self._server.wait_closed()
        log.info("smtpfilter stopped")
