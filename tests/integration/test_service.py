"""``smtpfilter serve`` as systemd runs it: a child process with a NOTIFY_SOCKET, driven by
signals (SIGHUP reloads, SIGTERM drains), logging to stderr or to a syslog socket."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.conftest import start
from tests.support import loglines
from tests.support.client import Client, send_message
from tests.support.messages import message
from tests.support.service import REPO, child_env
from tests.support.sink import Hang

OLD = message("Subject: old", "Date: Mon, 1 Jan 2024 10:00:00 +0000")
FORBIDDEN = message("Subject: a forbidden offer")

RELOADED_RULES = r"""
rules:
  - name: BAD_SUBJECT
    check: header
    header: Subject
    match: ['forbidden']
    action: reject
"""


async def test_ready_only_when_listening_with_rules_loaded(service):
    process = await start(service())
    ready = process.notifications[0]
    assert ready.split("\n") == ["READY=1", "STATUS=0 sessions, 3 rules; delivered 0, rejected 0, discarded 0, deferred 0"]
    assert f"smtpfilter listening on 127.0.0.1:{process.port}" in process.log()
    # READY=1 means the port is open: a client is served at once.
    assert (await send_message(process.port, message("Subject: hi"))).code == 250


async def test_a_configuration_error_exits_78_so_systemd_does_not_restart(service):
    process = service(config="limits: {sessions: many}\n")
    process.start(wait_ready=False)
    assert await asyncio.to_thread(process.wait) == 78  # RestartPreventExitStatus=78
    assert f"smtpfilter: {process.config_path}:5: limits.sessions: " in process.log()
    assert process.log().endswith("problem(s); not starting\n")
    assert process.drain() == []  # never READY


async def test_sighup_swaps_the_rules_and_open_sessions_carry_on(service, sink):
    process = await start(service())
    assert (await send_message(process.port, OLD)).code == 550  # OLD_DATE, the first rules

    client = await Client.connect(process.port)
    await client.ehlo()
    assert (await client.cmd("MAIL FROM:<a@example.org>")).code == 250
    assert (await client.cmd("RCPT TO:<b@example.com>")).code == 250

    process.rules.write_text(RELOADED_RULES)
    seen = len(process.notifications)
    process.send_signal(signal.SIGHUP)
    await asyncio.to_thread(process.wait_log, r"reloaded: 1 rules from 1 files")
    # systemd's reload protocol: RELOADING=1, then READY=1 with the new status.
    reloading = await asyncio.to_thread(process.wait_notification, "RELOADING=1", after=seen)
    assert "MONOTONIC_USEC=" in reloading
    ready = await asyncio.to_thread(process.wait_notification, "READY=1", after=seen)
    assert "1 rules" in ready

    # The session opened before the reload goes on undisturbed, judged by the new rules.
    assert (await client.data(OLD)).code == 250
    assert (await client.cmd("QUIT")).code == 221
    await client.close()
    reply = await send_message(process.port, FORBIDDEN)
    assert (reply.code, reply.text) == (550, "5.7.1 Message content rejected (BAD_SUBJECT)")
    assert [m.data for m in sink.messages] == [OLD]


@pytest.mark.parametrize("broken", ["rules", "config"])
async def test_a_broken_file_on_sighup_keeps_the_old_rules_and_says_why(service, broken):
    process = await start(service())
    if broken == "rules":
        process.rules.write_text(
            "rules:\n"
            "  - {name: OLD_DATE, check: date, older_than: soon, action: reject}\n"
            "  - {name: NO_MAILER, check: header, header: X-Mailer, missing: true, action: rejekt}\n"
        )
        problems = [
            rf"{process.rules}:2: rule OLD_DATE: older_than: 'soon' is not a duration",
            rf"{process.rules}:3: rule NO_MAILER: action: ",
        ]
    else:
        process.config_path.write_text(process.config_path.read_text() + "limits: {idle_timeout: soon}\n")
        problems = [rf"{process.config_path}:5: .*idle_timeout"]
    seen = len(process.notifications)
    process.send_signal(signal.SIGHUP)

    await asyncio.to_thread(process.wait_log, r"reload failed: keeping the previous configuration and rules")
    log = process.log()
    for problem in problems:  # every problem, each with file:line (and the rule)
        assert any(line.startswith("ERROR smtpfilter.service.lifecycle: reload: ") and __import__("re").search(problem, line)
                   for line in log.splitlines()), (problem, log)
    ready = await asyncio.to_thread(process.wait_notification, "READY=1", after=seen)
    assert "STATUS=reload failed; " in ready
    # Still serving, with the old rules.
    reply = await send_message(process.port, OLD)
    assert (reply.code, reply.text) == (550, "5.7.1 Message content rejected (OLD_DATE)")
    assert process.process.poll() is None


async def test_a_table_with_nothing_usable_is_a_warning_in_the_log_at_start_and_reload(service):
    # Issue 10 item 11: such a table was accepted silently ("0 lines"). Postfix logs each line
    # it skips and goes on; so do we, in the log (not on a stderr nobody reads), and say that
    # the rule will never match. The filter serves all the same.
    process = service(
        rules="rules:\n  - name: PASSWORDS\n    check: header_checks\n    table: [pcre:passwd]\n"
    )
    table = process.rules.parent / "passwd"
    table.write_text("root:x:0:0:root:/root:/bin/bash\n")
    await start(process)
    never = (rf"^WARNING smtpfilter\.serve: {process.rules}:4: rule PASSWORDS: table: "
             rf"pcre:{table} has no usable line \(1 skipped, above\): this rule will never match$")
    assert process.wait_log(never)
    assert f"WARNING smtpfilter.serve: {table}:1: rule PASSWORDS: not a pattern" in process.log()
    assert (await send_message(process.port, message("Subject: hi"))).code == 250

    process.send_signal(signal.SIGHUP)
    await asyncio.to_thread(process.wait_log, r"reloaded: 1 rules from 1 files")
    assert process.wait_log(never.replace(r"smtpfilter\.serve: ", r"smtpfilter\.service\.lifecycle: reload: "))


async def test_sigterm_lets_the_message_in_flight_finish_and_closes_idle_sessions(service, sink):
    dot = asyncio.Event()
    sink.script = lambda verb, line, txn: dot.set() if verb == "DOT" else None
    sink.byte_delay = 0.02  # 10026 answers "." slowly: the message is in flight for ~0.6 s
    process = await start(service())

    busy = await Client.connect(process.port)
    await busy.ehlo()
    await busy.cmd("MAIL FROM:<a@example.org>")
    await busy.cmd("RCPT TO:<b@example.com>")
    assert (await busy.cmd("DATA")).code == 354
    busy.send(message("Subject: in flight") + b".\r\n")
    idle = await Client.connect(process.port)
    await idle.ehlo()
    await asyncio.wait_for(dot.wait(), 10)  # 10026 has the message; its reply is on the way

    process.send_signal(signal.SIGTERM)
    # The idle session is told at once (RFC 5321 §3.8), and so is a connection that arrives
    # while the message in flight finishes: 421, never a bare end of file.
    bye = await idle.reply()
    # A reload now (logrotate) must not kill the process while the message is in flight.
    process.send_signal(signal.SIGHUP)
    await asyncio.to_thread(process.wait_log, r"SIGHUP ignored: shutting down")
    assert (bye.code, bye.text) == (421, "4.3.2 Service shutting down, closing transmission channel")
    assert await idle.closed_by_peer()

    late = await Client.connect(process.port, banner=False)
    greeting = await late.reply()
    assert (greeting.code, greeting.text) == (
        421, "4.3.2 Service shutting down, closing transmission channel"
    )
    assert await late.closed_by_peer()
    # The message in flight still gets 10026's reply: Postfix forgets it exactly once.
    final = await busy.reply(timeout=20)
    assert (final.code, final.text) == (250, "2.0.0 Ok: queued as Q1")
    assert (await busy.reply()).code == 421  # idle now: closed like the other one
    assert await busy.closed_by_peer()
    assert await asyncio.to_thread(process.wait) == 0
    assert process.log().endswith("INFO smtpfilter.service.lifecycle: smtpfilter stopped\n")
    await asyncio.to_thread(process.wait_notification, "STOPPING=1")


async def test_sigterm_deadline_closes_a_transaction_that_does_not_finish(service, sink):
    dot = asyncio.Event()

    def script(verb, line, txn):
        if verb == "DOT":
            dot.set()
            return Hang  # 10026 never answers "."
        return None

    sink.script = script
    process = await start(service(config="limits: {shutdown_timeout: 500ms}\n"))
    client = await Client.connect(process.port)
    await client.ehlo()
    await client.cmd("MAIL FROM:<a@example.org>")
    await client.cmd("RCPT TO:<b@example.com>")
    await client.cmd("DATA")
    client.send(message("Subject: stuck") + b".\r\n")
    await asyncio.wait_for(dot.wait(), 10)

    process.send_signal(signal.SIGTERM)
    # No reply at all: Postfix sees a lost connection and keeps the message (deferred).
    assert await client.closed_by_peer(timeout=10)
    assert await asyncio.to_thread(process.wait) == 0
    assert "shutdown deadline: closing a session still in a transaction" in process.log()


async def test_syslog_target_logs_to_facility_mail_with_ident_smtpfilter(service, syslog):
    process = await start(service(config=syslog.config))
    # <22>: facility mail (2) * 8 + severity info (6), RFC 3164; the tag as Postfix's.
    assert (await syslog.until("listening on")).startswith(
        f"<22>smtpfilter[{process.pid}]: smtpfilter listening on 127.0.0.1:{process.port}"
    )
    await send_message(process.port, OLD)
    line = await syslog.until("from=<")
    # Postfix's shape through the real SysLogHandler: TAG[PID]: QUEUEID: fields; NOQUEUE
    # and no client= for a message without XFORWARD (README "Log format").
    assert line.startswith(f"<22>smtpfilter[{process.pid}]: NOQUEUE: from=<"), line
    [summary] = loglines.summaries([line])
    assert (summary["action"], summary["by"], summary["rules"]) == (
        "reject", "OLD_DATE", "OLD_DATE(IN_PAST)")
    assert summary["status"].startswith("bounced (550 5.7.1 "), line
    assert summary.names[-2:] == ["delay", "status"]
    assert process.log() == ""  # nothing on stderr


async def test_rule_warnings_go_to_syslog_with_the_log(service, syslog):
    # Issue 12 asked that a header_checks rule's warnings at load go where the log goes, not
    # to stderr, with log.target: syslog (done in issue 10; this pins it down).
    process = service(
        rules="rules:\n  - name: PASSWORDS\n    check: header_checks\n    table: [pcre:passwd]\n",
        config=syslog.config,
    )
    table = process.rules.parent / "passwd"
    table.write_text("root:x:0:0:root:/root:/bin/bash\n")
    await start(process)
    await syslog.until("listening on")
    lines = syslog.seen
    # <20>: facility mail, severity warning; Postfix's "warning: " prefix.
    prefix = f"<20>smtpfilter[{process.pid}]: warning: "
    assert f"{prefix}{table}:1: rule PASSWORDS: not a pattern, if or endif (Postfix ignores this line too)" in lines
    assert any(line.startswith(f"{prefix}{process.rules}:4: rule PASSWORDS: table: ")
               and line.endswith("this rule will never match") for line in lines), lines
    assert process.log() == ""  # nothing on stderr


def _listening_sockets(port: int) -> int:
    """How many TCP sockets listen on 127.0.0.1:``port`` now (the kernel's own table)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return sum(1 for row in table.read().splitlines()[1:]
                   if row.split()[1] == wanted and row.split()[3] == "0A")


# A supervisor whose workers take a second to bind (the binder runs in each worker): READY=1
# must still mean "every worker listens".
_SLOW_WORKERS = """\
import os, sys, time
from pathlib import Path
from smtpfilter.cli import _smtp_daemon
from smtpfilter.config.settings import load_config
from smtpfilter.engine.rules import rules_for
from smtpfilter.service.workers import bind, run_workers

supervisor = os.getpid()

def slow(config, reuse_port=False):
    if os.getpid() != supervisor:
        time.sleep(1)
    return bind(config, reuse_port=reuse_port)

config = load_config(Path(sys.argv[1]))
sys.exit(run_workers(config, rules_for(config), 2, daemon=_smtp_daemon, binder=slow))
"""


async def test_ready_with_workers_only_once_every_worker_listens(service, tmp_path):
    # READY=1 came right after the fork: until a worker had bound its SO_REUSEPORT socket a
    # client got "connection refused" (seen as a flaky test_workers_share_an_inet_port).
    process = service()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = Path(tempfile.mkdtemp(prefix="sf-n-")) / "notify"
    notify.bind(str(notify_path))
    notify.setblocking(False)
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WORKERS, str(process.config_path)], cwd=REPO,
        env=child_env(NOTIFY_SOCKET=str(notify_path)), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        loop = asyncio.get_running_loop()
        while True:
            datagram = await asyncio.wait_for(loop.sock_recv(notify, 4096), 20)
            if datagram.startswith(b"READY=1"):
                break
        assert _listening_sockets(process.port) == 2
        assert (await send_message(process.port, message("Subject: hi"))).code == 250
    finally:
        child.send_signal(signal.SIGTERM)
        await asyncio.to_thread(child.wait, 20)
        notify.close()
        notify_path.unlink()
        notify_path.parent.rmdir()
