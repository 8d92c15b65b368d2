"""The core contract, proven from the wire: client → filter → recording 10026 sink."""

from __future__ import annotations

import re
import time

import pytest

from smtpfilter.engine import checks
from tests.support import loglines
from tests.support.client import Client, send_message
from tests.support.messages import date_header, message
from tests.support.sink import Close, Hang, wait_until


# --- delivery ------------------------------------------------------------------------------
async def test_clean_message_arrives_byte_identical_and_queue_id_is_relayed(start_filter, sink):
    server = await start_filter()
    long_line = b"x" * 998
    body = (
        "Grüße aus Köln, 8-bit UTF-8 body.\n".encode()
        + b"\xe9\xe8 latin-1 bytes too\n"
        + b".a line starting with a dot\n"
        + b"..two dots\n"
        + b".\n"
        + long_line
        + b"\n"
        + b"last line"
    )
    wire = message("Subject: byte exact", "X-Mailer: Thunderbird 115", body=body)
    assert b"\r\n..a line" in wire and b"\r\n...two" in wire and b"\r\n..\r\n" in wire

    reply = await send_message(server.port, wire)

    assert reply.code == 250
    assert reply.text == "2.0.0 Ok: queued as Q1"  # 10026's own reply, relayed
    [delivered] = sink.messages
    assert delivered.data == wire


async def test_pipelined_transaction_gets_replies_in_order(start_filter, sink):
    server = await start_filter()
    client = await Client.connect(server.port)
    await client.ehlo()
    wire = message("Subject: pipelined")
    client.send(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
        b"RCPT TO:<c@example.com>\r\nDATA\r\n"
    )
    codes = [(await client.reply()).code for _ in range(4)]
    client.send(wire + b".\r\nQUIT\r\n")  # QUIT pipelined after "." as Postfix may do
    final = await client.reply()
    bye = await client.reply()
    await client.close()
    assert codes == [250, 250, 250, 354]
    assert final.code == 250 and bye.code == 221
    assert sink.messages[0].data == wire
    assert sink.messages[0].accepted_rcpts == [b"RCPT TO:<b@example.com>\r\n", b"RCPT TO:<c@example.com>\r\n"]


async def test_several_transactions_per_session_with_rset(start_filter, sink):
    server = await start_filter()
    client = await Client.connect(server.port)
    await client.ehlo()
    for number in range(3):
        assert (await client.cmd(f"MAIL FROM:<s{number}@example.org>")).code == 250
        assert (await client.cmd("RCPT TO:<r@example.com>")).code == 250
        if number == 1:
            assert (await client.cmd("RSET")).code == 250  # abandoned, never delivered
            continue
        assert (await client.data(message(f"Subject: n{number}"))).code == 250
    await client.cmd("QUIT")
    await client.close()
    assert [m.mail for m in sink.messages] == [
        b"MAIL FROM:<s0@example.org>\r\n",
        b"MAIL FROM:<s2@example.org>\r\n",
    ]
    # One 10026 connection served the whole session.
    assert len(sink.connections) == 1


async def test_ehlo_announces_what_we_can_do_and_nothing_else(start_filter):
    # An explicit size: by default it is Postfix's message_size_limit (test_check_config).
    server = await start_filter(config="limits: {message_size: 10240000}\n")
    client = await Client.connect(server.port)
    assert client.banner.code == 220 and client.banner.text.startswith("filter.test ")
    reply = await client.ehlo()
    await client.close()
    assert reply.code == 250
    assert list(reply.lines) == [
        "filter.test",
        "PIPELINING",
        "SIZE 10240000",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "DSN",
        "SMTPUTF8",
        "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE",
    ]


async def test_we_never_promise_dsn_or_smtputf8_that_10026_lacks(start_filter, sink):
    sink.extensions = ["PIPELINING", "SIZE 10240000", "8BITMIME"]
    server = await start_filter()
    # Once we have talked to 10026, EHLO reflects what it can do.
    assert (await send_message(server.port, message())).code == 250
    client = await Client.connect(server.port)
    reply = await client.ehlo()
    await client.close()
    assert "DSN" not in reply.lines and "SMTPUTF8" not in reply.lines
    assert "8BITMIME" in reply.lines


# --- XFORWARD and DSN pass-through ---------------------------------------------------------
async def test_xforward_reaches_10026_before_mail_and_is_reset_per_transaction(start_filter, sink):
    server = await start_filter()
    client = await Client.connect(server.port)
    await client.ehlo()
    assert (await client.cmd("XFORWARD NAME=mail.example.net ADDR=192.0.2.7 PORT=40123")).code == 250
    assert (await client.cmd("XFORWARD PROTO=ESMTP HELO=mail.example.net IDENT=4F2B1C SOURCE=REMOTE")).code == 250
    await client.cmd("MAIL FROM:<a@example.org>")
    await client.cmd("RCPT TO:<b@example.com>")
    assert (await client.data(message())).code == 250
    # Second transaction on the same session: no XFORWARD sent, none forwarded.
    await client.cmd("MAIL FROM:<c@example.org>")
    await client.cmd("RCPT TO:<b@example.com>")
    assert (await client.data(message())).code == 250
    await client.close()

    first, second = sink.messages
    assert first.xforward == [
        b"XFORWARD NAME=mail.example.net ADDR=192.0.2.7 PORT=40123\r\n",
        b"XFORWARD PROTO=ESMTP HELO=mail.example.net IDENT=4F2B1C SOURCE=REMOTE\r\n",
    ]
    assert second.xforward == []
    lines = sink.connections[0].lines
    assert lines.index(first.xforward[1]) < lines.index(first.mail)


async def test_xforward_values_are_xtext_and_neutered_ipv6_kept(start_filter, sink):
    server = await start_filter()
    client = await Client.connect(server.port)
    await client.ehlo()
    # HELO with characters Postfix would neuter; an IPv6 client address.
    assert (await client.cmd("XFORWARD ADDR=IPv6:2001:db8::1 HELO=evil+3Cx+3E+20y")).code == 250
    await client.cmd("MAIL FROM:<a@example.org>")
    await client.cmd("RCPT TO:<b@example.com>")
    assert (await client.data(message())).code == 250
    await client.close()
    assert sink.messages[0].xforward == [
        b"XFORWARD ADDR=IPv6:2001:db8::1\r\n",
        b"XFORWARD HELO=evil?x??y\r\n",
    ]


async def test_dsn_parameters_arrive_exactly_as_received(start_filter, sink):
    server = await start_filter()
    client = await Client.connect(server.port)
    await client.ehlo()
    mail = "MAIL FROM:<Bounce@Example.org> SIZE=1234 BODY=8BITMIME RET=hdrs ENVID=Qx+2BId.Case"
    rcpt = "RCPT TO:<User@example.com> NOTIFY=success,FAILURE ORCPT=rfc822;User+40Example.COM"
    assert (await client.cmd(mail)).code == 250
    assert (await client.cmd(rcpt)).code == 250
    assert (await client.data(message())).code == 250
    await client.close()
    delivered = sink.messages[0]
    assert delivered.mail == (mail + "\r\n").encode()
    assert delivered.rcpts == [(rcpt + "\r\n").encode()]


async def test_before_queue_parameters_are_accepted_and_passed_only_if_10026_does_them(
    start_filter, sink
):
    # Postfix's smtpd_proxy_filter forwards the remote client's MAIL line verbatim (smtpd.c):
    # AUTH=<> from an MTA or XVERP must not turn into a 555 that Postfix relays to the client.
    server = await start_filter()
    client = await Client.connect(server.port)
    await client.ehlo()
    assert (await client.cmd("MAIL FROM:<a@example.org> AUTH=<> XVERP SIZE=10")).code == 250
    await client.cmd("RCPT TO:<b@example.com>")
    assert (await client.data(message())).code == 250
    await client.close()
    assert sink.messages[0].mail == b"MAIL FROM:<a@example.org> SIZE=10\r\n"


async def test_smtputf8_mail_passes_with_its_parameter(start_filter, sink):
    server = await start_filter()
    client = await Client.connect(server.port)
    await client.ehlo()
    assert (await client.cmd("MAIL FROM:<jörg@bücher.example> SMTPUTF8")).code == 250
    assert (await client.cmd("RCPT TO:<用户@例子.example>")).code == 250
    wire = message("Subject: Grüße", "To: 用户@例子.example")
    assert (await client.data(wire)).code == 250
    await client.close()
    delivered = sink.messages[0]
    assert delivered.mail == "MAIL FROM:<jörg@bücher.example> SMTPUTF8\r\n".encode()
    assert delivered.rcpts == ["RCPT TO:<用户@例子.example>\r\n".encode()]
    assert delivered.data == wire


# --- recipients ------------------------------------------------------------------------------
async def test_recipient_refused_by_10026_is_refused_alone(start_filter, sink):
    def script(verb, line, txn):
        if verb == "RCPT" and b"<nobody@" in line:
            return "550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown"
        return None

    sink.script = script
    server = await start_filter()
    client = await Client.connect(server.port)
    await client.ehlo()
    await client.cmd("MAIL FROM:<a@example.org>")
    ok = await client.cmd("RCPT TO:<b@example.com>")
    refused = await client.cmd("RCPT TO:<nobody@example.com>")
    result = await client.data(message())
    await client.close()
    assert ok.code == 250
    assert refused.code == 550
    assert refused.text == "5.1.1 <nobody@example.com>: Recipient address rejected: User unknown"
    assert result.code == 250
    assert sink.messages[0].accepted_rcpts == [b"RCPT TO:<b@example.com>\r\n"]


async def test_all_recipients_refused_gives_554_at_data(start_filter, sink):
    sink.script = lambda verb, line, txn: "550 5.1.1 no such user" if verb == "RCPT" else None
    server = await start_filter()
    client = await Client.connect(server.port)
    await client.ehlo()
    await client.cmd("MAIL FROM:<a@example.org>")
    assert (await client.cmd("RCPT TO:<x@example.com>")).code == 550
    reply = await client.cmd("DATA")
    await client.close()
    assert reply.code == 554
    assert sink.messages == []


# --- decisions ------------------------------------------------------------------------------
async def test_old_date_is_rejected_and_10026_never_sees_the_data(start_filter, sink):
    server = await start_filter()
    wire = message(date_header(days_ago=45), "Subject: old news")
    reply = await send_message(server.port, wire)
    assert reply.code == 550
    assert reply.text.startswith("5.7.1 ") and "OLD_DATE" in reply.text
    assert sink.messages == []
    commands = [line.split()[0] for line in sink.connections[0].lines]
    assert b"DATA" not in commands  # aborted without "." (FILTER_README)
    assert b"RSET" in commands


async def test_missing_date_is_rejected(start_filter, sink):
    server = await start_filter()
    reply = await send_message(server.port, message("Subject: no date", date=False))
    assert reply.code == 550 and "NO_DATE" in reply.text
    assert sink.messages == []


async def test_spam_mailer_is_discarded_with_250_and_nothing_reaches_10026(start_filter, sink):
    server = await start_filter()
    reply = await send_message(server.port, message("X-Mailer: MaxBulk.Mailer 7.2"))
    assert reply.code == 250 and "discarded" in reply.text
    assert sink.messages == []


BULK_TAG = """
rules:
  - name: BULK
    check: header
    header: Precedence
    match: '^bulk$'
    action: tag
    score: 4
"""


async def test_tag_adds_our_headers_first_strips_forged_status_and_renames_their_flag(
    start_filter, sink
):
    server = await start_filter(rules=BULK_TAG)
    wire = message(
        "Subject: tagged",
        "X-Spam-Flag: NO",
        "X-Smtpfilter-Status: No, forged",
        "Precedence: bulk",
        body="body\n",
    )
    reply = await send_message(server.port, wire)
    assert reply.code == 250
    delivered = sink.messages[0].data
    # Our status header is ours alone: a copy from upstream is a forgery, removed. Their
    # X-Spam-Flag stays readable under another name, so the message has one flag, ours.
    expected_rest = wire.replace(b"X-Spam-Flag: NO\r\n", b"X-Original-Spam-Flag: NO\r\n").replace(
        b"X-Smtpfilter-Status: No, forged\r\n", b""
    )
    assert delivered == (
        b"X-Spam-Flag: YES\r\n"
        b"X-Smtpfilter-Status: Yes, score=4, rules=BULK(MATCH)\r\n" + expected_rest
    )


async def test_an_upstream_spam_flag_is_kept_when_we_add_none(start_filter, sink):
    # Issue 12: SpamAssassin's own sample spam carries a DKIM signature over X-Spam-Flag;
    # removing the header broke it. Untagged mail now passes byte for byte.
    server = await start_filter(rules=BULK_TAG)
    wire = message("Subject: not bulk", "X-Spam-Flag: YES", "X-Spam-Status: Yes, score=9.1",
                   "DKIM-Signature: v=1; h=from:subject:x-spam-flag; b=...", body="body\n")
    assert (await send_message(server.port, wire)).code == 250
    assert sink.messages[0].data == wire


async def test_the_stripped_headers_are_configurable(start_filter, sink):
    server = await start_filter(
        rules=BULK_TAG,
        config="headers: {strip: [X-Spam-Flag, X-Spam-Status], original_flag: ''}\n",
    )
    wire = message("Subject: s", "X-Spam-Flag: NO", "X-Spam-Status: No",
                   "X-Smtpfilter-Status: No, forged", body="body\n")
    assert (await send_message(server.port, wire)).code == 250
    # Exactly what the list names goes; our status header is not in it any more.
    assert sink.messages[0].data == wire.replace(b"X-Spam-Flag: NO\r\n", b"").replace(
        b"X-Spam-Status: No\r\n", b"")


async def test_accept_rule_stops_evaluation(start_filter, sink):
    rules = """
    rules:
      - name: TRUSTED_LIST
        check: header
        header: List-Id
        match: '<announce\\.example\\.org>'
        action: accept
      - name: OLD_DATE
        check: date
        older_than: 30d
        action: reject
    """
    server = await start_filter(rules=rules)
    wire = message(date_header(days_ago=90), "List-Id: Announcements <announce.example.org>")
    assert (await send_message(server.port, wire)).code == 250
    assert sink.messages[0].data == wire


async def test_score_policy_rejects_when_threshold_reached(start_filter, sink):
    rules = """
    rules:
      - name: ODD_SUBJECT
        check: header
        header: Subject
        match: 'viagra'
        score: 8
      - name: OLDISH
        check: date
        older_than: 7d
        score: 8
    """
    server = await start_filter(rules=rules, config="policy: {tag: 5, reject: 15}\n")
    one = await send_message(server.port, message("Subject: cheap viagra"))
    both = await send_message(server.port, message(date_header(10), "Subject: viagra"))
    assert one.code == 250  # 8: tagged
    assert both.code == 550 and "score" in both.text  # 16: rejected
    assert sink.messages[0].data.startswith(b"X-Spam-Flag: YES\r\n")
    assert len(sink.messages) == 1


async def test_dry_run_delivers_untouched(start_filter, sink):
    server = await start_filter(config="dry_run: true\n")
    wire = message(date_header(days_ago=400), "X-Mailer: Avalanche 3")
    assert (await send_message(server.port, wire)).code == 250
    assert sink.messages[0].data == wire


# --- size ----------------------------------------------------------------------------------
async def test_size_limit_at_mail_and_at_end_of_data(start_filter, sink):
    server = await start_filter(config="limits: {message_size: 2000}\n")
    client = await Client.connect(server.port)
    await client.ehlo()
    assert (await client.cmd("MAIL FROM:<a@example.org> SIZE=5000")).code == 552
    assert (await client.cmd("MAIL FROM:<a@example.org> SIZE=100")).code == 250
    assert (await client.cmd("RCPT TO:<b@example.com>")).code == 250
    big = message(body=b"y" * 70 + b"\n" + (b"z" * 76 + b"\n") * 60)
    reply = await client.data(big)
    assert reply.code == 552
    # The session goes on; a message that fits is delivered.
    await client.cmd("MAIL FROM:<a@example.org>")
    await client.cmd("RCPT TO:<b@example.com>")
    assert (await client.data(message())).code == 250
    await client.close()
    assert len(sink.messages) == 1


# --- faults: always 4xx, and the session stays usable -----------------------------------------
async def test_10026_down_means_451_never_5xx(start_filter, sink):
    port = sink.port
    await sink.stop()
    server = await start_filter(forward_port=port)
    client = await Client.connect(server.port)
    await client.ehlo()
    reply = await client.cmd("MAIL FROM:<a@example.org>")
    await client.close()
    assert reply.code == 451 and reply.text.startswith("4.4.1")


@pytest.mark.parametrize(
    ("stage", "script_reply", "expected"),
    [
        ("MAIL", "451 4.3.0 Error: queue file write error", 451),
        ("MAIL", "553 5.7.1 <a@example.org>: Sender address rejected", 553),
        ("DOT", "452 4.3.1 Insufficient system storage", 452),
        ("DOT", "554 5.7.1 content rejected downstream", 554),
        ("DOT", "421 4.3.0 shutting down", 451),
    ],
    ids=["mail-4xx", "mail-5xx", "dot-4xx", "dot-5xx", "dot-421"],
)
async def test_10026_replies_are_relayed(start_filter, sink, stage, script_reply, expected):
    sink.script = lambda verb, line, txn: script_reply if verb == stage else None
    server = await start_filter()
    reply = await send_message(server.port, message())
    assert reply.code == expected
    if expected != 451 or stage == "MAIL":
        assert reply.text == script_reply[4:]


async def test_10026_closing_mid_transaction_gives_451_and_the_next_message_flows(start_filter, sink):
    calls = {"n": 0}

    def script(verb, line, txn):
        if verb == "DOT":
            calls["n"] += 1
            if calls["n"] == 1:
                return Close
        return None

    sink.script = script
    server = await start_filter()
    client = await Client.connect(server.port)
    await client.ehlo()
    await client.cmd("MAIL FROM:<a@example.org>")
    await client.cmd("RCPT TO:<b@example.com>")
    first = await client.data(message("Subject: one"))
    await client.cmd("MAIL FROM:<a@example.org>")
    await client.cmd("RCPT TO:<b@example.com>")
    second = await client.data(message("Subject: two"))
    await client.close()
    assert first.code == 451
    assert second.code == 250
    assert len(sink.messages) == 1 and b"Subject: two" in sink.messages[0].data


async def test_10026_silent_after_dot_times_out_with_451(start_filter, sink):
    sink.script = lambda verb, line, txn: Hang if verb == "DOT" else None
    server = await start_filter(config="limits: {data_timeout: 0.5s}\n")
    reply = await send_message(server.port, message())
    assert reply.code == 451


async def test_10026_answering_byte_by_byte_is_still_relayed(start_filter, sink):
    sink.byte_delay = 0.01
    server = await start_filter()
    reply = await send_message(server.port, message())
    assert reply.code == 250 and reply.text == "2.0.0 Ok: queued as Q1"


async def test_internal_exception_is_451_and_next_transaction_works(start_filter, sink, monkeypatch):
    class Boom:
        kind = "boom"

        @classmethod
        def from_options(cls, opts):
            opts.str("trigger", required=True)
            return cls()

        def describe(self):
            return "raises on 'boom' in Subject"

        def observe(self, msg):
            subject = msg.headers.get_all("subject")
            if subject and "boom" in subject[0].text:
                raise RuntimeError("injected fault")
            return None

    # An internal bug is the one fault no local server can produce: a test-only rule kind.
    monkeypatch.setitem(checks.CHECK_KINDS, "boom", Boom)
    server = await start_filter(
        rules="rules:\n  - {name: BOOM, check: boom, trigger: x, action: reject}\n"
    )
    client = await Client.connect(server.port)
    await client.ehlo()
    await client.cmd("MAIL FROM:<a@example.org>")
    await client.cmd("RCPT TO:<b@example.com>")
    failed = await client.data(message("Subject: boom"))
    assert (await client.cmd("MAIL FROM:<a@example.org>")).code == 250
    await client.cmd("RCPT TO:<b@example.com>")
    fine = await client.data(message("Subject: calm"))
    await client.close()
    assert failed.code == 451
    assert fine.code == 250
    assert len(sink.messages) == 1 and b"Subject: calm" in sink.messages[0].data
    # The aborted transaction was never finished at 10026.
    assert [t.reply for t in sink.connections[0].transactions] == ["250 2.0.0 Ok: queued as Q1"]


async def test_client_gone_mid_data_sends_no_dot_to_10026(start_filter, sink):
    server = await start_filter()
    client = await Client.connect(server.port)
    await client.ehlo()
    assert (await client.cmd("MAIL FROM:<a@example.org>")).code == 250
    assert (await client.cmd("RCPT TO:<b@example.com>")).code == 250
    assert (await client.cmd("DATA")).code == 354
    after_354 = time.monotonic()
    client.send(b"Subject: half\r\n\r\npart of a message\r\n")
    # The filter has the part (its session heard from the client after the 354) and its DATA
    # reader took it (nothing left unread): the client now leaves in the middle of DATA.
    [session] = list(server.door._protocols)
    await wait_until(lambda: session._last_input > after_354 and not session._reader._buffer)
    await client.close()
    await wait_until(lambda: server.runtime.sessions == 0)
    # The filter dropped that 10026 connection without "." and takes the next message on a
    # new one: the sink saw the transaction begin and never end.
    reply = await send_message(server.port, message())
    assert reply.code == 250
    assert len(sink.messages) == 1 and len(sink.connections) == 2
    verbs = [line.split()[0].upper() for line in sink.connections[0].lines]
    assert verbs[-2:] == [b"MAIL", b"RCPT"]  # and then the filter hung up: no DATA, no "."
    assert all(t.data is None or b"half" not in t.data for c in sink.connections for t in c.transactions)


# --- access ----------------------------------------------------------------------------------
async def test_xforward_from_unauthorised_client_is_refused(start_filter):
    server = await start_filter(config="xforward_clients: [192.0.2.0/24]\n")
    client = await Client.connect(server.port)
    ehlo = await client.ehlo()
    reply = await client.cmd("XFORWARD ADDR=192.0.2.1")
    await client.close()
    assert not any(line.startswith("XFORWARD") for line in ehlo.lines)
    assert reply.code == 550


async def test_client_outside_allow_clients_gets_554(start_filter):
    server = await start_filter(config="allow_clients: [192.0.2.0/24]\n")
    client = await Client.connect(server.port)
    assert client.banner.code == 554
    assert await client.closed_by_peer()


async def test_sessions_beyond_the_limit_get_421(start_filter, sink):
    """Only while every session is busy (in a transaction): idle ones make room instead,
    see test_session_limit.py."""
    server = await start_filter(config="limits: {sessions: 2}\n")
    first = await Client.connect(server.port)
    second = await Client.connect(server.port)
    for client in (first, second):
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<a@example.org>")).code == 250
    third = await Client.connect(server.port)
    assert (first.banner.code, second.banner.code, third.banner.code) == (220, 220, 421)
    assert await third.closed_by_peer()
    await first.close()
    await wait_until(lambda: server.runtime.sessions == 1)
    fourth = await Client.connect(server.port)
    assert fourth.banner.code == 220
    await second.close()
    await fourth.close()


# --- line ends --------------------------------------------------------------------------------
async def test_bare_lf_is_never_passed_on(start_filter, sink):
    server = await start_filter()
    client = await Client.connect(server.port)
    await client.ehlo()
    await client.cmd("MAIL FROM:<a@example.org>")
    await client.cmd("RCPT TO:<b@example.com>")
    await client.cmd("DATA")
    head = message("Subject: bare").split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    client.send(
        head
        + b"line one\n.\nMAIL FROM:<smuggled@evil.example>\nRCPT TO:<victim@example.com>\n"
        + b"DATA\nsmuggled\n.\n"
        + b"real end\r\n.\r\n"
        + b"MAIL FROM:<next@example.org>\r\n"  # pipelined after the real end of data
    )
    reply = await client.reply()
    after = await client.reply()
    await client.close()
    assert reply.code == 250
    assert after.code == 250  # the pipelined MAIL is a command of this session, in order
    [delivered] = sink.messages
    data = delivered.data
    assert data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")
    assert b"\r\n..\r\nMAIL FROM:<smuggled" in data  # stuffed: part of the one message
    assert delivered.mail == b"MAIL FROM:<a@example.org>\r\n"


# --- the one log line per message ---------------------------------------------------------------
async def test_one_log_line_per_message_with_every_field(start_filter, sink, caplog):
    caplog.set_level("INFO", logger="smtpfilter.engine.judge")
    server = await start_filter()
    client = await Client.connect(server.port)
    await client.ehlo()
    await client.cmd("XFORWARD NAME=mail.example.net ADDR=192.0.2.7 PORT=4000")
    await client.cmd("XFORWARD PROTO=ESMTP HELO=mail.example.net IDENT=4F2B1C SOURCE=REMOTE")
    await client.cmd("MAIL FROM:<a@example.org>")
    await client.cmd("RCPT TO:<b@example.com>")
    await client.cmd("RCPT TO:<c@example.com>")
    wire = message("X-Mailer: Avalanche 2")
    assert (await client.data(wire)).code == 250
    await client.cmd("MAIL FROM:<d@example.org>")
    await client.cmd("RCPT TO:<b@example.com>")
    assert (await client.data(message("Message-ID: <m1, two@example.org>"))).code == 250
    await client.close()
    records = [r.getMessage() for r in caplog.records if r.name == "smtpfilter.engine.judge"]
    assert len(records) == 2
    first, second = loglines.summaries(records)
    # Postfix's shape (README "Log format"): the queue id, then fields in the documented order,
    # the recipients as repeated to= when they share the outcome, status= last.
    assert records[0].startswith("4F2B1C: client=mail.example.net[192.0.2.7], from=<a@example.org>, "
                                 "to=<b@example.com>, to=<c@example.com>, "), records[0]
    assert first.queue_id == "4F2B1C"
    assert first.names == ["client", "from", "to", "to", "size", "action", "by", "score",
                           "rules", "delay", "status"]
    assert first["size"] == str(len(wire))
    assert (first["action"], first["by"], first["score"]) == ("discard", "SPAM_MAILER", "0")
    assert first["rules"] == "SPAM_MAILER(MATCH)"
    assert re.fullmatch(r"\d+\.\d\d", first["delay"]), first["delay"]
    assert first["status"] == "discarded (250 2.0.0 Ok: discarded by content filter (SPAM_MAILER))"
    # No XFORWARD in the second transaction: Postfix's NOQUEUE, and no client= (unknown).
    assert second.queue_id == "NOQUEUE" and "client" not in second.names
    assert second["status"] == "sent (250 2.0.0 Ok: queued as Q1)"
    assert second["rules"] == "-" and "by" not in second.names
    # message-id= after size= (as Postfix's cleanup logs it), its comma escaped: no value but
    # status's may contain ", " (a forged field would follow it otherwise).
    assert second.names[:4] == ["from", "to", "size", "message-id"]
    assert second["message-id"] == "<m1\\x2c two@example.org>"
