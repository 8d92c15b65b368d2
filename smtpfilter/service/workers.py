"""``smtpfilter serve --workers N``: N processes sharing one listening socket.

One Python process uses one core. Rule evaluation and SMTP parsing are CPU-bound, so on a busy
host a single process is the ceiling; N worker processes raise it nearly N-fold.

Design (the pre-fork model of Postfix's master(8) and of gunicorn):
- The supervisor (this module) loads config and rules once, checks that the port can be bound,
  then forks the workers. Each binds its own socket with SO_REUSEPORT and the kernel spreads new
  connections evenly over them. A single shared socket would not: asyncio accepts every pending
  connection at each wake-up, so one worker took 19 of 20 Postfix sessions in our measurements.
  The price of SO_REUSEPORT: connections queued at a worker that dies are reset. Postfix then
  defers those messages and retries; nothing is lost, and the other workers take new ones.
- The supervisor has no event loop and no threads, so fork() is safe. It blocks its signals and
  waits for them with sigwaitinfo(): SIGHUP is passed to every worker (each reloads itself, with
  the same validation as a single process) and re-read by the supervisor for the workers it
  starts later; SIGTERM/SIGINT are passed on and the supervisor waits for the workers to drain;
  a worker that dies unexpectedly is logged and replaced.
- Only the supervisor talks to systemd (NotifyAccess=main): READY=1 once the rules load and
  every worker has bound its socket (each says so on a pipe; a kernel queue then holds new
  connections until that worker accepts them), STATUS= with the worker count. READY=1 before
  that left a window where a client, or Postfix, got "connection refused".
- Each worker's log lines carry its number (service/logs.py: ``smtpfilter/w2[PID]:``).
- Metrics (when ``metrics.listen`` is set): ONE port with the totals of all workers, through
  prometheus_client's multiprocess mode. Before forking, the supervisor makes a private
  directory (mode 0700, empty: a new one each start, under ``$RUNTIME_DIRECTORY`` when systemd
  gives one, else the temporary directory) and names it in PROMETHEUS_MULTIPROC_DIR; each
  worker writes its values there, worker 0 serves the sum. When a worker dies its live gauges'
  files are removed (what the library's mark_process_dead does, done here without importing it:
  the supervisor stays small); its counters stay, so totals never go backwards. The directory
  is removed when the supervisor ends.
"""

from __future__ import annotations

import glob
import logging
import os
import select
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from smtpfilter.config.settings import Config, ConfigError, load_config
from smtpfilter.engine.rules import RuleSet, rules_for
from smtpfilter.service import sdnotify
from smtpfilter.service.logs import set_worker

if TYPE_CHECKING:  # pragma: no cover
    from smtpfilter.service.lifecycle import Daemon

__all__ = ["bind", "run_workers"]

log = logging.getLogger(__name__)

_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
_RESPAWN_DELAY = 1.0  # a worker that dies at once must not turn into a fork loop
_BIND_TIMEOUT = 30.0  # how long READY=1 waits for the workers to listen


def bind(config: Config, *, reuse_port: bool = False, backlog: int = 128) -> socket.socket:
    listen = config.listen
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((listen.host, listen.port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


# Returns the Daemon class to run in each worker; called in the child, so that the supervisor
# never imports the front door (nor creates an event loop): it stays small and thread-free.
DaemonLoader = Callable[[], "type[Daemon]"]


# Binds a worker's own listening socket (SO_REUSEPORT): ``bind`` for SMTP, the milter's own.
Binder = Callable[..., socket.socket]


def _worker(config: Config, ruleset: RuleSet, config_path: Path | None,
            overrides: dict[str, str], number: int, inherited: socket.socket | None,
            daemon: DaemonLoader, binder: Binder, bound: int | None = None) -> int:
    from smtpfilter.service.lifecycle import run  # in the child: no event loop in the parent

    set_worker(number)  # every line of this worker names it (service/logs.py)
    server_class = daemon()

    os.environ.pop("NOTIFY_SOCKET", None)  # only the supervisor speaks to systemd
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    sock = inherited if inherited is not None else binder(config, reuse_port=True)
    if bound is not None:  # listening (bind() listens): the supervisor may say READY=1
        os.write(bound, b"1")
        os.close(bound)
    server = server_class(
        config, ruleset, config_path=config_path, overrides=overrides, sock=sock,
        handed_over=inherited is not None,
    )
    server.worker = number  # worker 0 serves the metrics of all
    try:
        run(server.serve(notify=False), config.event_loop)
    except Exception:
        log.exception("worker %d failed", number)
        return 1
    return 0


def run_workers(
    config: Config,
    ruleset: RuleSet,
    count: int,
    *,
    daemon: DaemonLoader,
    config_path: Path | None = None,
    overrides: dict[str, str] | None = None,
    sock: socket.socket | None = None,
    binder: Binder = bind,
) -> int:
    """Run ``count`` workers until SIGTERM. ``sock``: a listening socket systemd passed
    (smtpfilter.socket); the workers then share it instead of binding their own, else each
    binds its own with ``binder`` (``bind``: the config's ``listen``)."""
    overrides = overrides or {}
    metrics_dir = _metrics_dir(config)
    if sock is None:
        # Fail here, with a clear error, if the port is taken; the probe must not stay bound,
        # or the kernel would route a share of the connections to a socket nobody accepts on.
        binder(config, reuse_port=True).close()
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    workers: dict[int, int] = {}  # pid → worker number
    stopping = False
    # Each first worker writes one byte once it listens; closed (None) once all did, before
    # any respawn, so that a later child never closes an fd number reused since.
    bound_pipe: list[int | None] = list(os.pipe())

    def spawn(number: int, bound: int | None = None) -> None:
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                for fd in bound_pipe:
                    if fd is not None and fd != bound:
                        os.close(fd)
                code = _worker(config, ruleset, config_path, overrides, number, sock, daemon,
                               binder, bound)
            finally:
                logging.shutdown()
                os._exit(code)
        workers[pid] = number

    bound_r, bound_w = bound_pipe
    for number in range(count):
        spawn(number, bound_w)
    assert bound_r is not None and bound_w is not None
    os.close(bound_w)
    bound_pipe[1] = None
    _wait_bound(bound_r, count)
    os.close(bound_r)
    bound_pipe[0] = None
    where = config.listen if binder is bind else config.milter.listen
    log.info("supervisor %d: %d workers on %s", os.getpid(), count, where)
    sdnotify.notify(f"READY=1\nSTATUS={count} workers, {len(ruleset)} rules")

    while workers:
        info = signal.sigwaitinfo(_SIGNALS)
        if info.si_signo in (signal.SIGTERM, signal.SIGINT):
            if not stopping:
                stopping = True
                sdnotify.notify("STOPPING=1")
                log.info("supervisor: stopping %d workers", len(workers))
            for pid in workers:
                _kill(pid, signal.SIGTERM)
        elif info.si_signo == signal.SIGHUP:
            try:
                fresh = load_config(config_path).with_overrides(**overrides)
                ruleset = rules_for(fresh)
                config = fresh
            except ConfigError:
                pass  # each worker logs the problems itself and keeps its rules
            for pid in workers:
                _kill(pid, signal.SIGHUP)
        # SIGCHLD (or any wake-up): reap every worker that ended.
        while workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                workers.clear()
                break
            if pid == 0:
                break
            number = workers.pop(pid, None)
            if number is None:
                continue
            if metrics_dir is not None:
                # prometheus_client.multiprocess.mark_process_dead: its live gauges go.
                for path in glob.glob(os.path.join(metrics_dir, f"gauge_live*_{pid}.db")):
                    os.remove(path)
            if not stopping:
                log.error(
                    "worker %d (pid %d) died (%s); starting a new one",
                    number,
                    pid,
                    _describe(status),
                )
                time.sleep(_RESPAWN_DELAY)
                spawn(number)
    log.info("supervisor: all workers stopped")
    if metrics_dir is not None:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _wait_bound(fd: int, count: int, timeout: float = _BIND_TIMEOUT) -> None:
    """Until ``count`` workers said they listen, or all that will have (a worker that fails
    first closes its end: EOF), or ``timeout``: READY=1 is never withheld for good."""
    deadline = time.monotonic() + timeout
    seen = 0
    while seen < count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            log.warning("supervisor: %d of %d workers listening after %gs; going on",
                        seen, count, timeout)
            return
        data = os.read(fd, count)
        if not data:
            return  # every worker has written or died
        seen += len(data)


def _metrics_dir(config: Config) -> str | None:
    """The private directory of the workers' metrics (module docstring), or None without
    metrics. Set in the environment before any fork: prometheus_client reads it at import."""
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if config.metrics.listen is None:
        return None
    path = tempfile.mkdtemp(prefix="smtpfilter-metrics-", dir=os.environ.get("RUNTIME_DIRECTORY"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.WEXITSTATUS(status)}"
