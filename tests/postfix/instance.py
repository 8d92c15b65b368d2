"""A private Postfix instance, and the final destination it delivers to, for end-to-end tests.

Everything follows shared/TRAPS.md "Real Postfix in tests": the instance runs as root with its
own config_directory, queue_directory and data_directory under a temporary directory, on high
loopback ports chosen free at run time; every daemon has chroot "n"; Postfix logs to a
``maillog_file`` the tests read (its commands print errors only to a terminal otherwise);
``local_header_rewrite_clients`` is empty so that Postfix does not repair test messages. The
final destination is Postfix's own ``smtp-sink`` writing one dump file per message, reached
through ``relayhost``: what arrives there is what a real next hop would receive.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.service import free_port, poll

__all__ = ["Delivered", "Postfix", "SmtpSink", "backdate", "free_port", "program", "wait_port"]

_SEARCH = os.pathsep.join(["/usr/sbin", "/usr/bin", "/sbin", "/bin", os.environ.get("PATH", "")])
# Debian ships the master.cf that `postfix` installs by default here (dpkg -L postfix).
MASTER_CF_DIST = Path("/usr/share/postfix/master.cf.dist")


def program(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH)


def wait_port(port: int, timeout: float = 10.0) -> None:
    def accepts() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    poll(accepts, timeout, f"127.0.0.1:{port} to accept connections", interval=0.02)


def backdate(path: Path) -> None:
    """Make a configuration file a minute old. Postfix programs reading a main.cf (or a table)
    modified within the last second sleep until it is older (dict_load_file: it may still be
    being edited), which costs about 2 s per command on a file a test has just written."""
    old = path.stat().st_mtime - 60
    os.utime(path, (old, old))


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, **kwargs)


class Postfix:
    """``Postfix(root, main_cf=..., master_cf=...)``, then ``start()``; ``stop()`` always."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_dir = root / "etc"
        self.queue_dir = root / "queue"
        self.data_dir = root / "data"
        self.log_file = root / "log" / "maillog"
        self.started = False
        # Log lines of problems the harness already handled, and of the machine rather than the
        # mail: when it closes a queue file, cleanup(8) (libpostfix-global) compares the file's
        # time stamp with its own clock and warns, then resets the stamps, when the file system
        # runs a second ahead, as CI's did under load. It changes no byte of any message.
        self.tolerated: list[str] = [
            r"cleanup\[\d+\]: warning: file system clock is \d+ seconds? ahead of local clock",
            r"cleanup\[\d+\]: warning: resetting file time stamps - this hurts performance",
        ]
        for directory in (self.config_dir, self.queue_dir, self.log_file.parent):
            directory.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        # master(8) creates its lock file here as the mail_owner.
        shutil.chown(self.data_dir, "postfix")

    def base_main_cf(self, *, relay_port: int) -> str:
        return f"""\
# A private test instance (tests/postfix/instance.py); the example blocks follow.
compatibility_level = 3.6
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
# Postfix logs here instead of syslog: tests read this file (maillog_file must match a prefix).
maillog_file = {self.log_file}
maillog_file_prefixes = {self.root}
myhostname = mx.example.test
mydomain = example.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
# Nothing is delivered locally: every domain, bounces included, goes to the final
# destination, a recording smtp-sink playing the next hop.
mydestination =
relayhost = [127.0.0.1]:{relay_port}
smtp_dns_support_level = disabled
# No DNS anywhere: client names are "unknown", as for a client without reverse DNS.
smtpd_peername_lookup = no
alias_maps =
alias_database =
# Do not repair test messages from 127.0.0.1 (shared/TRAPS.md): a missing Date stays missing.
local_header_rewrite_clients =
biff = no
"""

    def write(self, main_cf: str, master_cf: str, files: dict[str, str] | None = None) -> None:
        (self.config_dir / "main.cf").write_text(main_cf)
        (self.config_dir / "master.cf").write_text(master_cf)
        for name, text in (files or {}).items():
            (self.config_dir / name).write_text(text)
        for path in self.config_dir.iterdir():
            backdate(path)

    # --- commands ------------------------------------------------------------------------
    def command(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Postfix command against this instance (``-c`` is its config directory)."""
        result = _run([args[0], "-c", str(self.config_dir), *args[1:]])
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode}: {result.stdout}{result.stderr}"
                f"\nmaillog:\n{self.log()[-3000:]}"
            )
        return result

    def postmap(self, name: str) -> None:
        self.command(program("postmap") or "postmap", str(self.config_dir / name))

    def check(self) -> str:
        """``postfix check`` and ``postconf -n``: everything they complain about.

        Postfix commands print to a terminal or to syslog only (shared/TRAPS.md), so the check
        runs under script(1), which gives it a terminal whose output we read."""
        postfix = program("postfix")
        script = program("script")
        assert postfix and script
        checked = _run([script, "-qec", f"{postfix} -c {self.config_dir} check", "/dev/null"])
        postconf = _run([program("postconf") or "postconf", "-c", str(self.config_dir), "-n"])
        problems = checked.stdout.replace("\r", "") + postconf.stderr
        if checked.returncode != 0:
            problems += f"\npostfix check exited {checked.returncode}"
        return problems.strip()

    def start(self, ports: tuple[int, ...] = ()) -> None:
        """``postfix start``, then wait until ``ports`` accept connections.

        Under script(1): when master(8) cannot start (a port already taken, say), it says why
        only on a terminal; postlogd, which would write the maillog, is not running yet."""
        postfix, script = program("postfix"), program("script")
        assert postfix and script
        failures = []
        for _ in range(2):
            result = _run([script, "-qec", f"{postfix} -c {self.config_dir} start", "/dev/null"])
            if result.returncode == 0:
                break
            # Seen once in ~100 starts on a loaded machine, with nothing in the maillog but
            # "mail system startup failed": try once more, and keep what it said.
            failures.append(f"postfix start exited {result.returncode}: {result.stdout}".replace("\r", ""))
            print(failures[-1], file=sys.stderr)
            self.tolerated.append(r"postfix-script\[\d+\]: fatal: mail system startup failed")
            self.command(postfix, "stop", check=False)
        else:
            raise AssertionError("\n".join(failures) + f"\nmaillog:\n{self.log()[-3000:]}")
        self.started = True
        for port in ports:
            wait_port(port)

    def stop(self) -> None:
        """Stop master(8) and wait until it is gone (it keeps its ports until then)."""
        if not self.started:
            return
        self.started = False
        pid = self._master_pid()
        self.command(program("postfix") or "postfix", "stop", check=False)
        if pid is None:
            return
        try:
            poll(lambda: not _alive(pid), 15, "Postfix master to exit")
        except AssertionError:
            self.command(program("postfix") or "postfix", "abort", check=False)
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass

    def _master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def flush(self) -> None:
        """``postqueue -f``: deliver deferred mail now (and forget that a transport was dead)."""
        self.command(program("postqueue") or "postqueue", "-f")

    def queue(self) -> list[dict]:
        """The queue as ``postqueue -j`` reports it: one dict per message."""
        import json

        out = self.command(program("postqueue") or "postqueue", "-j").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    # --- the log -------------------------------------------------------------------------
    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 30.0) -> list[re.Match]:
        """The first ``count`` matches of ``pattern`` (a regex, multiline) in Postfix's log."""
        regex = re.compile(pattern, re.MULTILINE)

        def found() -> list[re.Match] | None:
            matches = list(regex.finditer(self.log()))
            return matches if len(matches) >= count else None

        try:
            return poll(found, timeout, f"{count} maillog line(s) matching {pattern!r}", 0.05)
        except AssertionError as error:
            raise AssertionError(f"{error}\nmaillog:\n{self.log()[-6000:]}") from None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; its parent just has not reaped it yet


@dataclass
class Delivered:
    """One message as the final destination received it (an smtp-sink dump file)."""

    path: Path
    mail_from: str
    rcpts: list[str]
    rcpt_args: list[str]  # as the next hop received them: "<addr> NOTIFY=... ORCPT=..."
    client: str
    helo: str
    data: bytes

    @property
    def message(self) -> email.message.Message:
        return email.message_from_bytes(self.data, policy=email.policy.compat32)

    def header(self, name: str) -> str | None:
        return self.message.get(name)


class SmtpSink:
    """Postfix's ``smtp-sink -d``: accepts everything, dumps each message to a file."""

    def __init__(self, root: Path, port: int) -> None:
        self.port = port
        self.dump_dir = root / "delivered"
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        # smtp-sink drops root privileges (-u, required when run as root) before writing dumps.
        shutil.chown(self.dump_dir, "nobody")
        self.process: subprocess.Popen | None = None

    def start(self) -> "SmtpSink":
        sink = program("smtp-sink")
        assert sink
        self.process = subprocess.Popen(
            # An explicit 127.0.0.1 (else every interface), -u (TRAPS.md), backlog 100.
            [sink, "-u", "nobody", "-d", f"{self.dump_dir}/%Y%m%d%H%M%S.", f"127.0.0.1:{self.port}", "100"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def delivered(self) -> list[Delivered]:
        return [_parse_dump(path) for path in sorted(self.dump_dir.iterdir()) if path.is_file()]


def _parse_dump(path: Path) -> Delivered:
    """smtp-sink's dump: X-Client-Addr, X-Client-Proto, X-Helo-Args, X-Mail-Args, one
    X-Rcpt-Args per recipient, its own Received: header, then the message as received (CRLF
    turned into LF; smtp-sink adds blank lines at the end)."""
    raw = path.read_bytes()
    fields: dict[str, list[str]] = {}
    position = 0
    while True:
        end = raw.index(b"\n", position)
        line = raw[position:end].decode("utf-8", "replace")
        name, sep, value = line.partition(": ")
        if not sep or not name.startswith("X-") or name not in (
            "X-Client-Addr", "X-Client-Proto", "X-Helo-Args", "X-Mail-Args", "X-Rcpt-Args"
        ):
            break
        fields.setdefault(name, []).append(value)
        position = end + 1
    data = raw[position:]
    if data.startswith(b"Received: ") and b"by smtp-sink (smtp-sink)" in data[:200]:
        # The sink's own trace header, two or three lines: not part of what was sent.
        end = data.index(b"\n", data.index(b"by smtp-sink"))
        while data[end + 1 : end + 2] in (b" ", b"\t"):
            end = data.index(b"\n", end + 1)
        data = data[end + 1 :]
    first = lambda name: fields.get(name, [""])[0]  # noqa: E731
    path_of = lambda args: args.split(" ")[0].strip("<>")  # noqa: E731
    return Delivered(
        path=path,
        mail_from=path_of(first("X-Mail-Args")),
        rcpts=[path_of(value) for value in fields.get("X-Rcpt-Args", [])],
        rcpt_args=fields.get("X-Rcpt-Args", []),
        client=first("X-Client-Addr"),
        helo=first("X-Helo-Args"),
        data=data,
    )
