"""The milter daemon (``smtpfilter milter``): the service lifecycle with the milter front door.

The lifecycle (accept, SIGHUP reload, SIGTERM drain, sd_notify, metrics, ``--workers``) is
service/lifecycle.py's :class:`Daemon`; this module adds what is the milter's: where it listens
(``milter.listen``: ``inet:HOST:PORT`` or ``unix:/PATH``, as main.cf's smtpd_milters writes
it), one :class:`~smtpfilter.frontdoors.milter.session.MilterSession` per connection, and what
the drain means here.

Each connection is read in large chunks and decoded incrementally; the replies produced by one
read leave in one write. A malformed packet, a connection idle for an hour or
a peer that vanishes ends that connection only (Postfix applies milter_default_action to that
SMTP session and opens a new connection for the next one); nothing a peer sends can stop the
listener.

TCP_QUICKACK: Postfix leaves Nagle on for its milter sockets and, with the SMFIP_NR_* flags, we
send nothing back until end of message, so our delayed ACK (up to 40 ms on Linux) holds back
Postfix's next small segment: one SMTP session then crawls at ~19 messages a second instead of
~280 (measured with real Postfix 3.7, tests/postfix/test_milter.py keeps it fixed). Asking for
an immediate ACK after every read (the kernel clears the flag each time) removes the stall.

Drain (SIGTERM): connections between messages are closed at once (Postfix answers that SMTP
session's later messages with milter_default_action, a 4xx with the setting main.cf.example
asks for); a message under way gets its reply first, within ``limits.shutdown_timeout``; new
connections are closed as they arrive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import weakref
from dataclasses import replace

from smtpfilter.config.settings import Config, in_networks
from smtpfilter.core import logline
from smtpfilter.frontdoors.milter import protocol as p
from smtpfilter.frontdoors.milter.session import MilterSession
from smtpfilter.service.lifecycle import Daemon
from smtpfilter.service.listener import Listener
from smtpfilter.service.runtime import Runtime

__all__ = ["MilterDaemon", "MilterFrontDoor", "bind_milter"]

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
# Postfix keeps the milter connection for the whole SMTP session, and each SMTP command may
# take smtpd_timeout (300 s) with nothing sent to us in between (SMFIP_NR_*): a connection is
# given up only after this much silence between two messages.
IDLE_TIMEOUT = 3600.0
# smtpd runs as the postfix user and must be able to write to a unix socket: the systemd unit
# runs us with the postfix group (Group=postfix), so 0660 lets postfix in and nobody else.
UNIX_MODE = 0o660


def bind_milter(config: Config, *, reuse_port: bool = False, backlog: int = 128) -> socket.socket:
    """The listening socket of ``milter.listen`` (service/workers.py's binder for --workers)."""
    listen = config.milter.listen
    if listen.family == "unix":
        if reuse_port:
            raise OSError(0, "--workers needs an inet: listen (a unix socket cannot be shared "
                             "with SO_REUSEPORT)")
        path = listen.path
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # a socket left by a previous run (a crash, a SIGKILL)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o777 & ~UNIX_MODE)  # never world-writable, not even for a moment
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            os.chmod(path, UNIX_MODE)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        return sock
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((listen.host, listen.port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class _Connection:
    """One milter connection: its session and the task that serves it."""

    __slots__ = ("session", "writer", "__weakref__")

    def __init__(self, session: MilterSession, writer: asyncio.StreamWriter) -> None:
        self.session = session
        self.writer = writer


class MilterFrontDoor:
    """The milter connections of one daemon (service.lifecycle.FrontDoor)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._tasks: set[asyncio.Task] = set()
        self.protocol_errors = 0
        self.quickack = hasattr(socket, "TCP_QUICKACK")

    def protocol(self) -> asyncio.Protocol:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_SIZE, loop=loop)
        return asyncio.StreamReaderProtocol(reader, self._serve, loop=loop)

    # --- lifecycle hooks -----------------------------------------------------------------------
    def make_room(self) -> bool:
        # An idle milter connection is an SMTP session between two messages: closing it would
        # make Postfix answer that session's next message 4xx. Never closed to make room.
        return False

    def close_idle(self) -> None:
        for conn in list(self._connections):
            if not conn.session.busy and not conn.writer.is_closing():
                conn.writer.close()

    def open_sessions(self) -> int:
        return sum(1 for conn in self._connections if not conn.writer.is_closing())

    def abort(self) -> None:
        for conn in list(self._connections):
            if not conn.writer.is_closing():
                log.warning("shutdown deadline: closing a milter connection with a message "
                            "under way (Postfix answers it with milter_default_action)")
                conn.writer.close()

    # --- one connection ------------------------------------------------------------------------
    def _admit(self, peer: object) -> bool:
        rt, config = self.runtime, self.runtime.config
        if isinstance(peer, tuple) and not in_networks(peer, config.allow_clients):
            log.warning("refused milter connection from %s: not in allow_clients",
                        logline.peer(peer))
            rt.count("refused_clients")
            return False
        if not rt.accepting:
            return False  # draining: Postfix applies milter_default_action
        if rt.sessions >= config.limits.sessions:
            log.warning("refused milter connection from %s: %d connections open "
                        "(limits.sessions); Postfix answers that SMTP session with "
                        "milter_default_action", logline.peer(peer), rt.sessions)
            rt.count("refused_busy")
            return False
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        address = writer.get_extra_info("peername") or "unix"
        if not self._admit(address):
            writer.close()
            self._tasks.discard(task)
            return
        peer = logline.peer(address)  # as the log writes it
        rt = self.runtime
        rt.sessions += 1
        sock = writer.get_extra_info("socket")
        quickack = (self.quickack and sock is not None
                    and sock.family in (socket.AF_INET, socket.AF_INET6))
        session = MilterSession(rt, peer=peer)
        conn = _Connection(session, writer)
        self._connections.add(conn)
        decoder = p.Decoder()
        try:
            while not session.closed:
                idle = IDLE_TIMEOUT if not session.busy else None
                async with asyncio.timeout(idle):
                    data = await reader.read(READ_SIZE)
                if quickack:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                if not data:
                    if decoder.pending:
                        log.warning("milter %s: connection closed inside a packet", peer)
                    break
                out = []
                for event in decoder.feed(data):
                    reply = await session.handle(event)
                    if reply:
                        out.append(reply)
                    if session.closed:
                        break
                if out:
                    writer.write(b"".join(out))
                    await writer.drain()
                if not rt.accepting and not session.busy:
                    break  # draining: this SMTP session's next message gets the default action
        except p.ProtocolError as error:
            self.protocol_errors += 1
            log.warning("milter %s: protocol error, closing this connection: %s", peer, error)
        except TimeoutError:
            log.info("milter %s: idle for %gs, closing", peer, IDLE_TIMEOUT)
        except (ConnectionError, OSError) as error:
            log.info("milter %s: connection lost: %s", peer, error)
        except Exception:  # one connection's bug must not stop the listener
            log.exception("milter %s: internal error, closing this connection", peer)
        finally:
            rt.sessions -= 1
            self._tasks.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


class MilterDaemon(Daemon):
    """``smtpfilter milter``: the same rules inside Postfix's smtpd (smtpd_milters)."""

    frontdoor = "milter"

    def make_front_door(self) -> MilterFrontDoor:
        return MilterFrontDoor(self.runtime)

    def bind(self) -> Listener:
        self._bound_path = None
        sock = bind_milter(self.config)
        if sock.family == socket.AF_UNIX:
            self._bound_path = (self.config.milter.listen.path, os.stat(self.config.milter.listen.path).st_ino)
        return Listener(sock, self.door.protocol)

    def warn_beyond_loopback(self) -> None:
        listen = self.config.milter.listen
        if not listen.is_loopback:
            log.warning("milter listening on %s, beyond loopback: only allow_clients may "
                        "connect", listen)

    @property
    def address_text(self) -> str:
        listen = self.config.milter.listen
        if listen.family == "unix" or self._server is None or not self._server.sockets:
            return str(listen)
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"inet:[{host}]:{port}" if ":" in host else f"inet:{host}:{port}"

    def started_text(self) -> str:
        body = "asking for the body" if self.runtime.ruleset.needs_body or \
            self.config.milter.quarantine == "store" else "without the body (no rule reads it)"
        return f"smtpfilter milter listening on {self.address_text}, {body}"

    def reload(self) -> bool:
        """As every daemon's, except that ``milter.listen`` stays the socket we listen on
        (a change takes a restart; ``--listen`` is kept, as serve keeps its overrides);
        milter.quarantine and milter.timeout apply to the next message."""
        listen = self.config.milter.listen
        if not super().reload():
            return False
        config = self.config
        if config.milter.listen != listen:
            log.info("reload: milter.listen is %s in the config; listening on %s until a "
                     "restart", config.milter.listen, listen)
            config = replace(config, milter=replace(config.milter, listen=listen))
            self.runtime.swap(config, self.runtime.ruleset)
        return True

    async def shutdown(self, deadline: float = 30.0) -> None:
        await super().shutdown(deadline)
        bound = getattr(self, "_bound_path", None)
        if bound is not None:
            path, inode = bound
            try:
                if os.stat(path).st_ino == inode:  # ours, not a successor's
                    os.unlink(path)
            except FileNotFoundError:
                pass
