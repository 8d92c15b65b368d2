"""The listening socket and its accept loop: out of file descriptors, new connections wait.

``loop.create_server`` accepts on its own, and neither event loop behaves well when the process
runs out of file descriptors (EMFILE), measured with ``RLIMIT_NOFILE`` 64 and 120 clients:

- asyncio (3.11, ``selector_events._accept_connection``) reports every failed ``accept()`` to
  the loop's exception handler, which logs a full traceback; it then pauses the socket for 1 s
  but goes on looping over its backlog, so one wake-up logs up to ``backlog`` tracebacks
  (1,901 in 4 s in issue 10; 6,720 in 5 s here);
- uvloop (libuv's ``uv__emfile_trick``) accepts the waiting connections with a reserve
  descriptor and closes them at once, and logs nothing: 71 of the 120 clients saw the
  connection close before any greeting.

So the filter accepts itself: ``accept()`` until the queue is empty; when it fails for want of
descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), wait and try again, 100 ms doubling up
to 1 s (Go's net/http ``Server.Serve`` backs off the same way, from 5 ms), leaving the
connections in the kernel's listen queue, where Postfix's smtp client waits for our greeting (smtp_helo_timeout, 300 s) instead of
being cut off; and one WARNING a minute says so, with how often it happened meanwhile.

:class:`Listener` offers what the lifecycle uses of ``asyncio.Server``: ``sockets``, ``close()``,
``wait_closed()``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from typing import Callable

__all__ = ["Listener"]

log = logging.getLogger(__name__)

# accept() failures that mean "not now": the process or the system is out of descriptors or
# buffer memory. Anything else (EBADF, EINVAL) means the socket itself is gone.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# A client that connected and went away before we accepted it (RST in the queue): not ours.
_CLIENT_GONE = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
_FIRST_DELAY = 0.1
_MAX_DELAY = 1.0
_WARN_EVERY = 60.0


class Listener:
    """Accepts connections on ``sock`` and gives each to ``protocol_factory``'s protocol.

    A reader callback on the listening socket accepts what is queued, as asyncio's own accept
    does (``loop.sock_accept`` per connection would register and unregister the socket with
    epoll every time: about 13 µs more CPU per connection on uvloop). When accepting
    fails for want of resources, the callback is removed and put back after the back-off."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        *,
        backlog: int = 128,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._factory = protocol_factory
        self._backlog = backlog  # connections accepted per wake-up at most, as asyncio does
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._retry: asyncio.TimerHandle | None = None
        self._delay = 0.0  # the current back-off, 0 while accepting works
        self._connecting: set[asyncio.Task] = set()  # strong references until connected
        self._closed = False
        self._warned_at: float | None = None
        self._unreported = 0  # failed accepts since the last warning
        self._episode_reported = False  # this run of failures got its warning
        self.exhausted = 0  # failed accepts in all

    @classmethod
    def bind(cls, host: str, port: int, protocol_factory, *, backlog: int = 128) -> "Listener":
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # As loop.create_server(reuse_address=True): restart while old connections linger
            # in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return cls(sock, protocol_factory, backlog=backlog)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._resume()

    # --- what the lifecycle uses of asyncio.Server ----------------------------------------------
    @property
    def sockets(self) -> list[socket.socket]:
        return [] if self._closed else [self._sock]

    def is_serving(self) -> bool:
        return self._loop is not None and not self._closed

    def close(self) -> None:
        """Stop accepting and close the socket; connections already accepted go on."""
        if self._closed:
            return
        self._closed = True
        self._stop_reading()
        if self._retry is not None:
            self._retry.cancel()
        self._sock.close()

    async def wait_closed(self) -> None:
        """Nothing to wait for: close() is immediate (asyncio.Server's API)."""

    # --- accepting -----------------------------------------------------------------------------
    def _resume(self) -> None:
        self._retry = None
        if not self._closed and not self._reading:
            self._loop.add_reader(self._fd, self._accept_ready)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _accept_ready(self) -> None:
        for _ in range(self._backlog):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _CLIENT_GONE:
                    continue
                self._stop_reading()
                if error.errno not in _EXHAUSTED:
                    log.error("cannot accept connections on %s: %s; no longer listening",
                              self._address(), error)
                    return
                self._delay = min(self._delay * 2, _MAX_DELAY) if self._delay else _FIRST_DELAY
                self._report(error)
                self._retry = self._loop.call_later(self._delay, self._resume)
                return
            if self._delay:
                self._delay = 0.0
                self._recovered()
            task = self._loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(False)
            # Replies leave as soon as they are written: we batch pipelined ones ourselves.
            # (TCP only: the milter may listen on a unix socket.)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError as error:
            conn.close()
            log.warning("could not set up an accepted connection: %s", error)

    def _report(self, error: OSError) -> None:
        """One WARNING a minute while accepting fails, with how often it failed meanwhile."""
        self.exhausted += 1
        self._unreported += 1
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < _WARN_EVERY:
            return
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.warning(
            "cannot accept connections on %s: %s (open files limit %d); they wait in the "
            "listen queue, retrying every %gs at most%s",
            self._address(),
            error.strerror or error,
            soft,
            _MAX_DELAY,
            "" if self._warned_at is None
            else f" ({self._unreported} failed attempts since the last warning)",
        )
        self._warned_at = now
        self._unreported = 0
        self._episode_reported = True

    def _recovered(self) -> None:
        """Say when a reported run of failures ends (never more often than it was reported)."""
        if self._episode_reported:
            self._episode_reported = False
            log.info("accepting connections on %s again", self._address())

    def _address(self) -> str:
        try:
            host, port = self._sock.getsockname()[:2]
        except OSError:
            return "the listening socket"
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
