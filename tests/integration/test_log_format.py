"""The log as a Postfix admin reads it (README "Log format", issue 13): lines of a real
``smtpfilter serve`` process, received on a syslog socket through the real SysLogHandler and
formatter, or read from its stderr."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import start
from tests.support import loglines
from tests.support.client import Client, send_message
from tests.support.messages import message
from tests.support.readme import shell_block, substitute
from tests.support.service import free_port

XFORWARD = ("XFORWARD NAME=mx.example.net ADDR=192.0.2.7 PORT=4000",
            "XFORWARD PROTO=ESMTP HELO=mx.example.net IDENT=918CF20C401 SOURCE=REMOTE")

HELD_RULES = r"""
rules:
  - name: HELD
    check: header
    header: Subject
    match: 'hold me'
    action: quarantine
"""


async def transaction(port: int, wire: bytes, *, mail_from: str = "a@example.org"):
    """One Postfix-like transaction with XFORWARD; the replies to MAIL and to the final "."
    (None when MAIL is refused)."""
    client = await Client.connect(port)
    await client.ehlo()
    for line in XFORWARD:
        assert (await client.cmd(line)).code == 250
    mail = await client.cmd(f"MAIL FROM:<{mail_from}>")
    final = None
    if mail.code == 250:
        assert (await client.cmd("RCPT TO:<b@example.com>")).code == 250
        final = await client.data(wire)
    await client.close()
    return mail, final


async def test_cannot_reach_forward_names_it_with_queue_id_and_client(service, syslog):
    # Issue 13: `grep 918CF20C401 /var/log/mail.log` must find our reason beside Postfix's.
    closed = free_port()
    process = service(config=syslog.config)
    process.args = ("--forward", f"127.0.0.1:{closed}")
    await start(process)
    mail, _ = await transaction(process.port, message("Subject: hi"))
    assert (mail.code, mail.text[:5]) == (451, "4.4.1")
    line = await syslog.until("cannot reach")
    # <20>: facility mail, severity warning; the queue id before Postfix's "warning:".
    assert line == (
        f"<20>smtpfilter[{process.pid}]: 918CF20C401: warning: cannot reach 127.0.0.1:{closed} "
        f"(Connection refused); client=mx.example.net[192.0.2.7], from=<a@example.org>; "
        f"deferred ({mail.code} {mail.text})"
    )


async def test_a_failed_quarantine_is_logged_as_the_451_postfix_got(service, syslog, tmp_path):
    not_a_directory = tmp_path / "q"
    not_a_directory.write_text("a file where the quarantine directory should be\n")
    process = service(rules=HELD_RULES, config=syslog.config + f"quarantine: {{directory: {not_a_directory}}}\n")
    await start(process)
    _, final = await transaction(process.port, message("Subject: hold me"))
    assert final.code == 451
    error = await syslog.until("quarantine failed")
    assert error.startswith(f"<19>smtpfilter[{process.pid}]: 918CF20C401: error: quarantine failed (")
    assert error.endswith(f"; deferred (451 {final.text})")
    [summary] = loglines.summaries([await syslog.until(r"action=quarantine")])
    assert summary.queue_id == "918CF20C401"
    assert (summary["action"], summary["by"]) == ("quarantine", "HELD")
    # What Postfix was told, never "quarantined"
    assert summary["status"] == f"deferred (451 {final.text})"


async def test_a_parse_limit_warning_starts_with_the_queue_id(service, syslog):
    process = service(config=syslog.config + "limits: {header_size: 4k}\n")
    await start(process)
    filler = "".join(f"X-Filler-{n:03d}: {'v' * 60}\n" for n in range(80))
    _, final = await transaction(process.port, message("Subject: long", filler.rstrip("\n")))
    assert final.code == 250
    line = await syslog.until("header section longer")
    assert line.startswith(
        f"<20>smtpfilter[{process.pid}]: 918CF20C401: warning: from=<a@example.org>: header "
        "section longer than limits.header_size (4096 bytes): "), line


async def test_workers_name_themselves_in_the_syslog_tag_and_on_stderr(service, syslog):
    process = service(config=syslog.config)
    process.args = ("--workers", "2")
    await start(process)
    supervisor = await syslog.until(r"supervisor \d+: 2 workers")
    assert supervisor.startswith(f"<22>smtpfilter[{process.pid}]: ")  # the supervisor: plain
    # Each worker's own lines carry its number (READY=1 comes from the supervisor, before the
    # workers listen: wait for both).
    started = await syslog.count(r"smtpfilter/w\d\[\d+\]: smtpfilter listening on", 2)
    assert sorted(re.match(r"<22>smtpfilter/(w\d)\[", line).group(1) for line in started) == [
        "w0", "w1"]
    for _ in range(4):
        assert (await send_message(process.port, message("Subject: hi"))).code == 250
    line = await syslog.until(r"action=accept")
    match = re.match(r"<22>smtpfilter/w([01])\[(\d+)\]: NOQUEUE: from=<", line)
    assert match and int(match.group(2)) != process.pid, line
    assert loglines.summaries([line])[0]["status"].startswith("sent (250 ")


async def test_workers_on_stderr_carry_a_worker_prefix(service):
    process = service()
    process.args = ("--workers", "2")
    await start(process)
    await asyncio.to_thread(process.wait_log, r"^w\d INFO .*smtpfilter listening on", count=2)
    assert (await send_message(process.port, message("Subject: hi"))).code == 250
    await asyncio.to_thread(process.wait_log, r"action=accept")
    [line] = [line for line in process.log().splitlines() if "action=accept" in line]
    assert re.match(r"w[01] INFO smtpfilter\.engine\.judge: NOQUEUE: from=<", line), line


COUNTED_RULES = r"""
rules:
  - name: BAD_SUBJECT
    check: header
    header: Subject
    match: 'forbidden'
    action: reject
  - name: SPAM_MAILER
    check: header
    header: X-Mailer
    match: '^MaxBulk'
    action: reject
  - name: PRICEY
    check: header
    header: Subject
    match: 'offer'
    score: 20
"""


async def test_the_readme_counts_rejections_per_rule_from_real_log_lines(service, syslog, tmp_path):
    """README "Log format": its one grep | awk line, run as printed on mail.log lines written
    by a real filter (the syslog datagrams, as rsyslog writes them to /var/log/mail.log)."""
    process = service(rules=COUNTED_RULES, config=syslog.config + "policy: {reject: 15}\n")
    await start(process)
    sent = [
        message("Subject: forbidden fruit"),
        message("Subject: forbidden, again"),
        message("Subject: forbidden 3"),
        message("Subject: hi", "X-Mailer: MaxBulk 2"),
        message("Subject: an offer"),  # rejected by the score: no by=
        # accepted; its Message-ID tries to pass for a rejection (escaped: ",\x2c" in the log)
        message("Subject: hello", "Message-ID: <x, action=reject, by=FORGED@example>"),
    ]
    for wire in sent:
        await send_message(process.port, wire)
    await syslog.count(r"status=", len(sent))
    mail_log = tmp_path / "mail.log"
    # rsyslog's file format: "Mmm dd hh:mm:ss host " then the message without <PRI>.
    mail_log.write_text("".join(
        "Dec  2 12:00:00 mx " + re.sub(r"^<\d+>", "", line) + "\n" for line in syslog.seen
    ) + "Dec  2 12:00:01 mx postfix/smtpd[6890]: NOQUEUE: reject: RCPT from x[192.0.2.1]: 554\n")
    script = substitute(shell_block("action=reject"), {"/var/log/mail.log": str(mail_log)})
    done = await asyncio.to_thread(
        subprocess.run, ["bash", "-euo", "pipefail", "-c", script], capture_output=True,
        text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    counts = done.stdout.splitlines()
    # Most first (the order of ties is the locale's)
    assert counts[0] == "3 BAD_SUBJECT", (done.stdout, mail_log.read_text())
    assert sorted(counts[1:]) == ["1 (score)", "1 SPAM_MAILER"], (done.stdout, mail_log.read_text())


async def test_pipe_mode_writes_the_same_line_and_its_cannot_reach_warning(sink, syslog, tmp_path):
    """pipe(8) mode (FILTER_README's simple filter): the same summary line, with pipe's exit
    status, and the same queue-id-first warning when 10026 is down."""
    from tests.integration.test_pipe import run_pipe

    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")

    def config(forward: int) -> Path:
        path = tmp_path / f"pipe-{forward}.yaml"
        path.write_text(f"forward: 127.0.0.1:{forward}\nrules: [{rules}]\n{syslog.config}")
        return path

    args = ("--client-address=192.0.2.7", "--client-name=mx.example.net", "--queue-id=4F2B1",
            "--sender=a@example.org", "--", "b@example.com", "c@example.com")
    status, out, _ = await run_pipe(f"--config={config(sink.port)}", *args)
    assert (status, out) == (0, ["2.0.0 Ok: queued as Q1"])
    [line] = loglines.summaries([await syslog.until(r"status=sent")])
    assert line.queue_id == "4F2B1"
    assert line.names == ["client", "from", "to", "to", "size", "action", "score", "rules",
                          "exit", "delay", "status"]
    assert (line["client"], line.all("to")) == ("mx.example.net[192.0.2.7]",
                                                ["<b@example.com>", "<c@example.com>"])
    assert (line["exit"], line["status"]) == ("0", "sent (2.0.0 Ok: queued as Q1)")

    closed = free_port()
    status, out, _ = await run_pipe(f"--config={config(closed)}", *args)
    assert status == 75
    warning = await syslog.until("cannot reach")
    assert re.fullmatch(
        rf"<20>smtpfilter\[\d+\]: 4F2B1: warning: cannot reach 127\.0\.0\.1:{closed} \(Connection "
        r"refused\); client=mx\.example\.net\[192\.0\.2\.7\], from=<a@example\.org>; deferred "
        r"\(451 4\.4\.1 [^)]*\)", warning), warning
    [deferred] = loglines.summaries([await syslog.until(r"status=deferred")])
    assert (deferred["action"], deferred["exit"]) == ("accept", "75")


async def test_a_refusal_by_10026_is_logged_with_queue_id_forward_and_client(service, sink, syslog):
    """10026's own 4xx to a RCPT is relayed as it is (lockstep); our line says who refused it,
    for which message and client, and what Postfix was told."""
    sink.script = lambda verb, line, txn: (
        "450 4.2.0 <full@example.com>: Recipient address rejected: mailbox full"
        if verb == "RCPT" and b"full@" in line else None)
    process = service(config=syslog.config)
    await start(process)
    client = await Client.connect(process.port)
    await client.ehlo()
    for line in XFORWARD:
        await client.cmd(line)
    assert (await client.cmd("MAIL FROM:<a@example.org>")).code == 250
    refused = await client.cmd("RCPT TO:<full@example.com>")
    assert refused.code == 450
    await client.close()
    line = await syslog.until("refused RCPT")
    assert line == (
        f"<20>smtpfilter[{process.pid}]: 918CF20C401: warning: 127.0.0.1:{sink.port} refused "
        "RCPT TO: 450 4.2.0 <full@example.com>: Recipient address rejected: mailbox full; "
        "client=mx.example.net[192.0.2.7], from=<a@example.org>, to=<full@example.com>; deferred "
        "(450 4.2.0 <full@example.com>: Recipient address rejected: mailbox full)"
    )
