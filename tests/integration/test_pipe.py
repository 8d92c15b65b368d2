"""``smtpfilter pipe``: the command pipe(8) runs, as a real process, re-injecting into a recording
10026 sink. What pipe(8) acts on is the exit status and the first output line, so every test
asserts on both. tests/postfix/test_pipe.py runs it under a real pipe(8)."""

from __future__ import annotations

import asyncio
import sys
import textwrap

import pytest

from tests.conftest import ISSUE_RULES
from tests.support.messages import date_header
from tests.support.service import REPO, child_env

CLEAN = f"{date_header()}\nFrom: <a@example.org>\nSubject: hi\n\nHello.\n.\nbye\n".encode()
OLD = f"{date_header(400)}\nFrom: <a@example.org>\nSubject: old\n\nHello.\n".encode()


@pytest.fixture
def write_config(tmp_path, sink):
    def write(rules: str = ISSUE_RULES, extra: str = "", forward: int | None = None):
        (tmp_path / "rules.yaml").write_text(textwrap.dedent(rules))
        path = tmp_path / "smtpfilter.yaml"
        path.write_text(
            f"forward: 127.0.0.1:{forward or sink.port}\nhostname: filter.test\n"
            "rules: [rules.yaml]\n" + textwrap.dedent(extra)
        )
        return path

    return write


async def run_pipe(*args: str, stdin: bytes = CLEAN) -> tuple[int, list[str], str]:
    """(exit status, stdout lines, stderr) of ``smtpfilter pipe ARGS``."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smtpfilter", "pipe", *args,
        cwd=REPO, env=child_env(),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    return process.returncode, out.decode().splitlines(), err.decode()


async def test_clean_message_is_reinjected_with_xforward(write_config, sink):
    config = write_config()
    status, out, _ = await run_pipe(
        f"--config={config}", "--client-address=192.0.2.7", "--client-name=mail.example.net",
        "--client-helo=helo.example.net", "--queue-id=4F2B1", "--sender=a@example.org",
        "--", "b@example.com", "c@example.com",
    )
    assert (status, out) == (0, ["2.0.0 Ok: queued as Q1"])  # 10026's reply, for Postfix's log
    [txn] = sink.messages
    assert txn.xforward == [
        b"XFORWARD NAME=mail.example.net ADDR=192.0.2.7\r\n",
        b"XFORWARD HELO=helo.example.net IDENT=4F2B1\r\n",
    ]
    assert txn.mail == f"MAIL FROM:<a@example.org> SIZE={len(txn.data)}\r\n".encode()
    assert txn.accepted_rcpts == [b"RCPT TO:<b@example.com>\r\n", b"RCPT TO:<c@example.com>\r\n"]
    # pipe(8)'s LF lines became CRLF, and the lone "." line was dot-stuffed.
    assert txn.data == CLEAN.replace(b"\n", b"\r\n").replace(b"\r\n.\r\n", b"\r\n..\r\n")


async def test_old_message_is_rejected_with_69_and_never_reaches_10026(write_config, sink):
    status, out, _ = await run_pipe(f"--config={write_config()}", "-f", "a@example.org", "--", "b@example.com", stdin=OLD)
    assert status == 69  # EX_UNAVAILABLE: Postfix bounces
    assert out == ["5.7.1 Message content rejected (OLD_DATE)"]  # the code pipe(8) uses
    assert sink.connections == []


async def test_discard_is_success_without_delivery(write_config, sink):
    message = CLEAN.replace(b"Subject: hi\n", b"Subject: hi\nX-Mailer: MaxBulk.Mailer 1\n")
    status, out, _ = await run_pipe(f"--config={write_config()}", "--sender=a@example.org", "--", "b@example.com", stdin=message)
    assert (status, out) == (0, ["2.0.0 Ok: discarded by content filter (SPAM_MAILER)"])
    assert sink.messages == []


async def test_tag_adds_headers_and_8bit_mail_is_declared(write_config, sink):
    rules = "rules:\n  - {name: OLD_DATE, check: date, older_than: 30d, action: tag}\n"
    message = OLD.replace(b"Hello.", "Grüße.".encode())
    status, out, _ = await run_pipe(f"--config={write_config(rules)}", "--sender=", "--", "b@example.com", stdin=message)
    assert status == 0, out
    [txn] = sink.messages
    assert txn.mail.startswith(b"MAIL FROM:<> SIZE=") and txn.mail.endswith(b" BODY=8BITMIME\r\n")
    assert txn.data.startswith(b"X-Spam-Flag: YES\r\nX-Smtpfilter-Status: Yes, score=0, rules=OLD_DATE(IN_PAST)\r\n")


async def test_ipv6_client_address_is_forwarded_with_its_prefix(write_config, sink):
    status, _, _ = await run_pipe(
        f"--config={write_config()}", "--client-address=2001:db8::7", "--client-name=",
        "--client-helo=", "--queue-id=", "--sender=a@example.org", "--", "b@example.com",
    )
    assert status == 0
    assert sink.messages[0].xforward == [b"XFORWARD ADDR=IPv6:2001:db8::7\r\n"]


@pytest.mark.parametrize(
    "refusals, status, prefix",
    [
        ({b"RCPT TO:<c@example.com>\r\n": "550 5.1.1 <c@example.com>: unknown"}, 69, "5.1.1 "),
        ({b"RCPT TO:<c@example.com>\r\n": "450 4.2.0 <c@example.com>: try later"}, 75, "4.2.0 "),
        # One temporary refusal makes the whole message temporary, and its text must carry a
        # 4.X.X code: pipe(8) lets the text's code override the exit status.
        ({b"RCPT TO:<b@example.com>\r\n": "550 5.1.1 <b@example.com>: unknown",
          b"RCPT TO:<c@example.com>\r\n": "450 4.2.0 <c@example.com>: try later"}, 75, "4.2.0 "),
    ],
    ids=["permanent", "temporary", "mixed"],
)
async def test_a_refused_recipient_stops_the_whole_delivery(write_config, sink, refusals, status, prefix):
    sink.script = lambda verb, line, txn: refusals.get(line) if verb == "RCPT" else None
    got, out, _ = await run_pipe(f"--config={write_config()}", "--sender=a@example.org", "--", "b@example.com", "c@example.com")
    assert got == status and out[0].startswith(prefix), out
    assert sink.messages == []  # RSET, never DATA: no recipient gets it, none is lost silently
    assert sink.connections[0].lines[-2:] == [b"RSET\r\n", b"QUIT\r\n"]


async def test_10026_refusing_the_message_permanently_is_a_bounce(write_config, sink):
    sink.data_reply = lambda txn: "554 5.7.1 Rejected by policy"
    status, out, err = await run_pipe(f"--config={write_config()}", "--queue-id=4F2B1",
                                      "--sender=a@example.org", "--", "b@example.com")
    assert (status, out) == (69, ["5.7.1 Rejected by policy"])
    # Our reason, queue id first, for pipe(8)'s log line (it appends our stderr).
    assert err == (f"WARNING smtpfilter.frontdoors.pipe: 4F2B1: 127.0.0.1:{sink.port} refused end "
                   "of DATA: 554 5.7.1 Rejected by policy; from=<a@example.org>; bounced (554 "
                   "5.7.1 Rejected by policy)\n")


@pytest.mark.parametrize(
    "setup, expected",
    [
        ("down", "4.4.1 Error: after-filter server failed at connect, try again later"),
        ("bad-config", "4.3.5 smtpfilter configuration error: "),
        ("bad-usage", "4.3.5 smtpfilter pipe: the following arguments are required: --sender/-f"),
    ],
)
async def test_every_failure_of_ours_is_75_never_a_bounce(write_config, tmp_path, setup, expected):
    args = [f"--config={write_config(forward=1)}" if setup == "down" else f"--config={write_config()}"]
    if setup == "bad-config":
        (tmp_path / "rules.yaml").write_text("rules:\n  - {name: X, check: date, older_than: soon, action: reject}\n")
    if setup != "bad-usage":
        args += ["--sender=a@example.org"]
    status, out, err = await run_pipe(*args, "--", "b@example.com")
    assert status == 75  # EX_TEMPFAIL: Postfix keeps the mail
    assert out[0].startswith(expected), (out, err)


async def test_an_oversized_message_is_refused_like_postfix_does(write_config, sink):
    config = write_config(extra="limits: {message_size: 100}\n")
    status, out, _ = await run_pipe(f"--config={config}", "--sender=a@example.org", "--", "b@example.com", stdin=CLEAN * 3)
    assert (status, out) == (69, ["5.3.4 Error: message file too big"])


async def test_help_is_for_humans():
    status, out, _ = await run_pipe("--help", stdin=b"")
    assert status == 0 and out[0].startswith("usage: smtpfilter pipe")


async def test_a_client_address_that_is_not_one_is_left_out(write_config, sink):
    status, _, err = await run_pipe(
        f"--config={write_config()}", "--client-address=unknown", "--client-name=x.example",
        "--sender=a@example.org", "--", "b@example.com",
    )
    assert status == 0
    assert sink.messages[0].xforward == [b"XFORWARD NAME=x.example\r\n"]
    assert '--client-address "unknown" is not an IP address: ignored' in err  # no Python repr


async def test_dns_lists_use_the_configured_nameservers(write_config, sink):
    from tests.integration.test_dnsbl import DNSBL_REJECT, dns_config
    from tests.support.dnsserver import DnsServer, serve_test_lists

    dns = await DnsServer().start()
    serve_test_lists(dns)
    try:
        config = write_config(rules=DNSBL_REJECT, extra=dns_config(dns))
        status, out, _ = await run_pipe(
            f"--config={config}", "--client-address=1.2.3.4", "--sender=a@example.org",
            "--", "b@example.com",
        )
    finally:
        await dns.stop()
    assert status == 69  # EX_UNAVAILABLE: listed, rejected
    assert out[0].startswith("5.7.1 Service unavailable; client [1.2.3.4] blocked using zen.dnsbl.test")
    assert sink.messages == []


async def test_quarantine_exits_0_only_once_stored_and_releases(write_config, sink, tmp_path):
    rules = "rules:\n  - {name: HELD, check: header, header: Subject, match: hi, action: quarantine}\n"
    config = write_config(rules, extra="quarantine: {directory: q}\n")
    status, out, _ = await run_pipe(
        f"--config={config}", "--client-address=2001:db8::7", "--queue-id=4F2B1",
        "--sender=a@example.org", "--", "b@example.com",
    )
    assert status == 0 and out[0].startswith("2.0.0 Ok: quarantined as ")
    assert sink.connections == []  # nothing reached 10026
    entry_id = out[0].split(" as ", 1)[1].split(" ", 1)[0]
    assert (tmp_path / "q" / "new" / entry_id).is_file()

    from smtpfilter.cli import main

    assert await asyncio.to_thread(main, ["quarantine", "release", "--config", str(config), entry_id]) == 0
    [txn] = sink.messages
    assert txn.mail.startswith(b"MAIL FROM:<a@example.org>")
    assert b"ADDR=IPv6:2001:db8::7" in txn.xforward[0] and b"IDENT=4F2B1" in txn.xforward[1]
    assert txn.data == CLEAN.replace(b"\n", b"\r\n").replace(b"\r\n.\r\n", b"\r\n..\r\n")

    # A quarantine that cannot store is 75: Postfix keeps the message, never 0.
    (tmp_path / "blocker").write_text("a file")
    config = write_config(rules, extra="quarantine: {directory: blocker/q}\n")
    status, out, _ = await run_pipe(f"--config={config}", "--sender=a@example.org", "--", "b@example.com")
    assert status == 75 and "quarantine" in out[0]


async def test_a_header_section_past_header_size_is_logged_and_tagged(write_config, sink):
    # Issue 10 item 4 in pipe mode: what the rules could not read is logged (on stderr, which
    # pipe(8) adds to its log line) and a limits rule tags it.
    rules = "rules:\n  - {name: PARSE_LIMIT, check: limits, action: tag, score: 5}\n"
    config = write_config(rules, "limits: {header_size: 4k}\n")
    filler = b"".join(b"X-Filler-%03d: %s\n" % (n, b"v" * 60) for n in range(80))
    hidden = CLEAN.replace(b"Subject: hi\n", filler + b"X-Mailer: MaxBulk.Mailer 1\n")
    status, out, err = await run_pipe(
        f"--config={config}", "--queue-id=4F2B1", "--sender=a@example.org", "--", "b@example.com",
        stdin=hidden,
    )
    assert (status, out) == (0, ["2.0.0 Ok: queued as Q1"])
    assert (
        "WARNING smtpfilter.engine.judge: 4F2B1: from=<a@example.org>: header section longer "
        "than limits.header_size (4096 bytes): the rules did not read the rest"
    ) in err
    [txn] = sink.messages
    assert txn.data.startswith(b"X-Spam-Flag: YES\r\n")
