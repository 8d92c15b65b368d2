"""The milter daemon over real sockets, driven by a raw MTA side that sends what Postfix 3.7
sends (tests/support/mta.py), judging with the real engine and real rules. What is asserted is
what crossed the wire: the milter replies, the quarantine on disk, the log line, the metrics.
tests/postfix/test_milter.py does the same through a real Postfix."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
import struct
import textwrap
from pathlib import Path

import pytest

from smtpfilter.config.settings import load_config
from smtpfilter.core.verdict import Finding
from smtpfilter.delivery.quarantine import Quarantine
from smtpfilter.engine import checks
from smtpfilter.engine.rules import rules_for
from smtpfilter.frontdoors.milter import protocol as p
from smtpfilter.frontdoors.milter.server import MilterDaemon
from tests.support.mta import Mta, connect_and_helo, message, raw

RULES = r"""
rules:
  - {name: PROBE, check: probe, score: 0}
  - {name: REJECT_ME, check: header, header: Subject, match: 'reject-me', action: reject,
     text: "5.7.1 No 100% spam here"}
  - {name: TEMPFAIL_ME, check: header, header: Subject, match: 'tempfail-me', action: tempfail}
  - {name: SPAM_MAILER, check: header, header: X-Mailer, match: '^MaxBulk', action: discard}
  - {name: HOLD_ME, check: header, header: Subject, match: 'hold-me', action: quarantine}
  - {name: TAG_ME, check: header, header: Subject, match: 'tag-me', action: tag}
"""


class ProbeCheck:
    """A test rule kind: records what the engine saw; Subject "crash-me" raises (a rule's bug),
    "slow-me" waits until the test lets it go (a check that hangs)."""

    kind = "probe"
    needs_body = False
    seen: list = []
    gate: asyncio.Event | None = None

    @classmethod
    def from_options(cls, opts):
        return cls()

    def describe(self) -> str:
        return "test probe"

    async def observe(self, msg):
        type(self).seen.append(msg)
        subject = msg.headers.get_all("Subject")
        text = subject[0].text if subject else ""
        if "crash-me" in text:
            raise KeyError("a bug in a rule")
        if "slow-me" in text:
            await asyncio.Event().wait() if self.gate is None else await self.gate.wait()
        return None


class BodyProbeCheck(ProbeCheck):
    kind = "body_probe"
    needs_body = True


@pytest.fixture(autouse=True)
def probe(monkeypatch):
    monkeypatch.setitem(checks.CHECK_KINDS, "probe", ProbeCheck)
    monkeypatch.setitem(checks.CHECK_KINDS, "body_probe", BodyProbeCheck)
    monkeypatch.setattr(ProbeCheck, "seen", [])
    monkeypatch.setattr(ProbeCheck, "gate", None)
    return ProbeCheck


@pytest.fixture
async def milter(tmp_path):
    """``await milter(rules=..., config=...)`` → a started MilterDaemon on a free port."""
    daemons: list[MilterDaemon] = []

    async def start(rules: str = RULES, config: str = "") -> MilterDaemon:
        rules_path = tmp_path / f"rules{len(daemons)}.yaml"
        rules_path.write_text(textwrap.dedent(rules))
        config_path = tmp_path / f"config{len(daemons)}.yaml"
        config_text = textwrap.dedent(config)
        if "milter:" not in config_text:
            config_text += "milter: {listen: 'inet:127.0.0.1:0'}\n"
        config_path.write_text(f"rules: [{rules_path.name}]\n" + config_text)
        cfg = load_config(config_path)
        daemon = MilterDaemon(cfg, rules_for(cfg), config_path=config_path)
        await daemon.start()
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        await daemon.shutdown(deadline=2)


async def session(daemon: MilterDaemon) -> Mta:
    mta = await Mta.connect(daemon.port)
    await mta.negotiate()
    return mta


async def test_negotiation_asks_for_what_the_rules_need_and_nothing_more(milter):
    daemon = await milter()
    mta = await Mta.connect(daemon.port)
    cmd, data = await mta.negotiate()
    assert cmd == b"O"
    version, actions, steps = struct.unpack("!LLL", data[:12])
    assert version == 6
    assert actions == (p.Action.ADDHDRS | p.Action.CHGHDRS | p.Action.QUARANTINE
                       | p.Action.SETSYMLIST)
    # No rule reads the body: none is sent. No reply to anything before end of message.
    assert steps & p.Step.NOBODY and steps & p.Step.HDR_LEADSPC
    for flag in (p.Step.NR_CONN, p.Step.NR_HELO, p.Step.NR_MAIL, p.Step.NR_RCPT, p.Step.NR_HDR):
        assert steps & flag, flag
    assert b"{client_addr}" in data[12:] and b"{auth_authen}" in data[12:]
    await mta.close()

    body = await milter(rules="rules: [{name: BODY, check: body_probe, score: 0}]\n")
    mta = await Mta.connect(body.port)
    _, data = await mta.negotiate()
    steps = struct.unpack("!LLL", data[:12])[2]
    assert not steps & p.Step.NOBODY and steps & p.Step.NR_BODY
    await mta.close()


async def test_tag_strips_forged_copies_and_the_engine_sees_the_message_as_received(
    milter, probe, caplog
):
    daemon = await milter()
    mta = await session(daemon)
    headers = ((b"Subject", b" tag-me"), (b"X-Spam-Flag", b" NO"), (b"X-F", b" a\n\tb"),
               (b"x-spam-flag", b" forged"), (b"X-Empty", b""))
    with caplog.at_level(logging.INFO, logger="smtpfilter.engine.judge"):
        await mta.send(connect_and_helo(), message(headers=headers, auth=b"alice"))
        # SMFIP_NR_*: the first reply on the wire is the one to end of message.
        replies = await mta.replies_until_final()
    assert replies == [
        (b"m", b"\x00\x00\x00\x02x-spam-flag\x00\x00"),  # highest index first, name as received
        (b"m", b"\x00\x00\x00\x01X-Spam-Flag\x00\x00"),
        # An upstream flag beside ours is renamed, as in SMTP mode (headers.original_flag).
        (b"h", b"X-Original-Spam-Flag\x00 NO\x00"),
        (b"h", b"X-Original-Spam-Flag\x00 forged\x00"),
        (b"h", b"X-Spam-Flag\x00 YES\x00"),
        (b"h", b"X-Smtpfilter-Status\x00 Yes, score=0, rules=TAG_ME(MATCH)\x00"),
        (b"c", b""),
    ]
    (msg,) = probe.seen
    # One buffer, the header block byte for byte (folding back to CRLF), not dot-stuffed.
    assert msg.data == (b"Subject: tag-me\r\nX-Spam-Flag: NO\r\nX-F: a\r\n\tb\r\n"
                        b"x-spam-flag: forged\r\nX-Empty:\r\n\r\n")
    assert msg.stuffed is False
    assert (msg.mail_from, msg.rcpt_to) == ("s@example", ("r@example",))
    c = msg.client
    assert (c.addr, c.name, c.port, c.helo, c.ident, c.sasl_user) == (
        "192.0.2.7", "mail.example", "4321", "client.example", "ABC123", "alice")
    # The one summary line per message, as in SMTP mode, with Postfix's queue id.
    # The queue id is the milter macro i; the status what Postfix was told (go on).
    [line] = [r.getMessage() for r in caplog.records if r.name == "smtpfilter.engine.judge"]
    assert re.fullmatch(
        r"ABC123: client=mail\.example\[192\.0\.2\.7\], sasl_username=alice, from=<s@example>, "
        r"to=<r@example>, "
        r"size=\d+, action=tag, by=TAG_ME, score=0, rules=TAG_ME\(MATCH\), delay=\d+\.\d\d, "
        r"status=sent \(250 2\.0\.0 Ok: continue\)", line), line
    await mta.close()


@pytest.mark.parametrize("subject,headers,expected", [
    (b" reject-me", (), [(b"y", b"550 5.7.1 No 100%% spam here\x00")]),
    (b" tempfail-me", (), [(b"y", b"451 4.7.1 Message content deferred (TEMPFAIL_ME), try again "
                                 b"later\x00")]),
    (b" hi", ((b"X-Mailer", b" MaxBulk.Mailer 12"),), [(b"d", b"")]),
    # An upstream X-Spam-Flag stays when we add no flag of our own (headers.original_flag).
    (b" hold-me", ((b"X-Spam-Flag", b" YES"),),
     [(b"q", b"smtpfilter: HOLD_ME\x00"), (b"c", b"")]),
    (b" nothing to see", (), [(b"c", b"")]),
], ids=["reject", "tempfail", "discard", "quarantine-hold", "accept"])
async def test_each_decision_as_a_milter_reply(milter, subject, headers, expected):
    daemon = await milter()
    mta = await session(daemon)
    await mta.send(connect_and_helo(), message(headers=((b"Subject", subject), *headers)))
    assert await mta.replies_until_final() == expected
    await mta.close()


async def test_quarantine_store_keeps_the_whole_message_and_discards_it_at_postfix(
    milter, tmp_path
):
    directory = tmp_path / "quarantine"
    daemon = await milter(config=f"milter: {{listen: 'inet:127.0.0.1:0', quarantine: store}}\n"
                                 f"quarantine: {{directory: {directory}}}\n")
    mta = await Mta.connect(daemon.port)
    _, data = await mta.negotiate()
    assert not struct.unpack("!LLL", data[:12])[2] & p.Step.NOBODY  # the copy must be whole
    body = b"line one\r\n.a dot line, not stuffed by Postfix\r\n"
    await mta.send(connect_and_helo(), message(headers=((b"Subject", b" hold-me"),), body=body,
                                               rcpts=(b"<a@example>", b"<b@example> NOTIFY=NEVER")))
    assert await mta.replies_until_final() == [(b"d", b"")]  # 250 to the client, nothing queued
    store = Quarantine(directory)
    [entry] = store.entries()
    assert entry.meta["queue_id"] == "ABC123" and entry.meta["verdict"]["rule"] == "HOLD_ME"
    envelope = entry.meta["envelope"]
    assert envelope["mail_from"] == "s@example" and envelope["mail_params"] == {"SIZE": "SIZE=10"}
    assert [r["params"] for r in envelope["recipients"]] == [[], ["NOTIFY=NEVER"]]
    assert envelope["xforward"]["ADDR"] == "192.0.2.7"
    # Stored as SMTP mode stores it: the release sends exactly the wire form of what came.
    assert store.wire_bytes(entry) == b"Subject: hold-me\r\n\r\nline one\r\n..a dot line, not " \
                                      b"stuffed by Postfix\r\n"
    await mta.close()


async def test_quarantine_store_failure_is_a_451(milter, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    daemon = await milter(config=f"milter: {{listen: 'inet:127.0.0.1:0', quarantine: store}}\n"
                                 f"quarantine: {{directory: {blocker}}}\n")
    mta = await session(daemon)
    await mta.send(connect_and_helo(), message(headers=((b"Subject", b" hold-me"),)))
    [(cmd, data)] = await mta.replies_until_final()
    assert (cmd, data[:10]) == (b"y", b"451 4.3.0 ")
    await mta.close()


@pytest.mark.parametrize("subject,config,reply", [
    (b" crash-me", "", b"451 4.3.0 Error: content filter failure, try again later\x00"),
    (b" slow-me", "limits: {scan_timeout: 0.3s, shutdown_timeout: 1s}\ndns: {message_timeout: 0.2s, "
                  "timeout: 0.1s}\n", b"451 4.4.7 Error: content filter timed out, try again later\x00"),
    (b" slow-me", "milter: {listen: 'inet:127.0.0.1:0', timeout: 0.3s}\n",
     b"451 4.4.7 Error: content filter timed out, try again later\x00"),
], ids=["rule-raises", "scan_timeout", "milter.timeout"])
async def test_a_fault_is_a_451_and_the_next_message_on_the_connection_works(
    milter, probe, subject, config, reply
):
    daemon = await milter(config=config)
    mta = await session(daemon)
    await mta.send(connect_and_helo(), message(headers=((b"Subject", subject),), queue_id=b"Q1"))
    assert await mta.replies_until_final() == [(b"y", reply)]
    await mta.send(raw(b"A"), message(headers=((b"Subject", b" tag-me"),), queue_id=b"Q2"))
    assert (await mta.replies_until_final())[-1] == (b"c", b"")
    assert [m.client.ident for m in probe.seen] == ["Q1", "Q2"]
    await mta.close()


async def test_abort_forgets_the_transaction_but_not_the_connection(milter, probe):
    daemon = await milter()
    mta = await session(daemon)
    await mta.send(
        connect_and_helo(),
        raw(b"M", b"<first@example>\x00"), raw(b"R", b"<lost@example>\x00"), raw(b"A"),  # RSET
        message(sender=b"<second@example>", rcpts=(b"<kept@example>",)),
        raw(b"A"), raw(b"A"),  # after every transaction; twice at the end
        message(sender=b"<third@example>", queue_id=b"Q3"),
    )
    assert await mta.replies_until_final() == [(b"c", b"")]
    assert await mta.replies_until_final() == [(b"c", b"")]
    first, second = probe.seen
    assert (first.mail_from, first.rcpt_to, first.client.helo) == (
        "second@example", ("kept@example",), "client.example")
    assert (second.mail_from, second.client.ident, second.client.addr) == (
        "third@example", "Q3", "192.0.2.7")
    await mta.close()


async def test_the_body_is_one_buffer_as_postfix_streams_it(milter, probe):
    daemon = await milter(rules="rules: [{name: BODY, check: body_probe, score: 0}]\n")
    mta = await session(daemon)
    chunk1, chunk2 = b"x" * 65533 + b"\r\n", b".not stuffed\r\n"
    await mta.send(connect_and_helo(), message(body=chunk1, end=False))
    await mta.send(raw(b"B", chunk2), raw(b"E"))
    assert await mta.replies_until_final() == [(b"c", b"")]
    (msg,) = probe.seen
    assert msg.data == b"Subject: hello\r\n\r\n" + chunk1 + chunk2
    assert msg.stuffed is False and msg.size == len(msg.data)
    await mta.close()


async def test_a_message_over_limits_message_size_is_a_451(milter):
    daemon = await milter(rules="rules: [{name: BODY, check: body_probe, score: 0}]\n",
                          config="limits: {message_size: 1000}\n")
    mta = await session(daemon)
    await mta.send(connect_and_helo(), message(body=b"y" * 2000 + b"\r\n", queue_id=b"BIG"))
    [(cmd, data)] = await mta.replies_until_final()
    assert (cmd, data[:4]) == (b"y", b"451 ")
    await mta.send(raw(b"A"), message(body=b"small\r\n"))
    assert await mta.replies_until_final() == [(b"c", b"")]
    await mta.close()


@pytest.mark.parametrize("garbage", [
    struct.pack("!L", 0) + b"Q",
    b"\xff\xff\xff\xff",
    raw(b"Z"),
    raw(b"H", b"no terminator"),
], ids=["zero length", "huge length", "unknown command", "missing NUL"])
async def test_a_malformed_packet_closes_that_connection_only(milter, garbage):
    daemon = await milter()
    bad, good = await session(daemon), await session(daemon)
    await bad.send(connect_and_helo(), garbage)
    assert await bad.closed()
    await good.send(connect_and_helo(), message())
    assert await good.replies_until_final() == [(b"c", b"")]
    assert daemon.door.protocol_errors == 1
    await good.close()
    await bad.close()


async def test_peers_vanishing_mid_packet_and_mid_decision(milter, probe):
    probe.gate = asyncio.Event()
    daemon = await milter()
    a = await session(daemon)
    await a.send(connect_and_helo(), raw(b"H", b"client.example\x00")[:-4])
    await a.close()
    b = await session(daemon)
    await b.send(connect_and_helo(), message(headers=((b"Subject", b" slow-me"),)))
    await b.close()  # Postfix gave up (milter_content_timeout) while we were deciding
    probe.gate.set()
    c = await session(daemon)
    await c.send(connect_and_helo(), message())
    assert await c.replies_until_final() == [(b"c", b"")]
    await c.close()


async def test_quit_closes_and_quit_nc_starts_over_on_the_same_socket(milter, probe):
    daemon = await milter()
    mta = await session(daemon)
    await mta.send(connect_and_helo(4321), raw(b"K"), connect_and_helo(5555), message())
    assert await mta.replies_until_final() == [(b"c", b"")]
    assert probe.seen[0].client.port == "5555"
    await mta.send(raw(b"Q"))
    assert await mta.closed()
    await mta.close()


async def test_unix_socket_is_for_the_owner_and_group_and_goes_at_shutdown(milter, tmp_path):
    path = Path(os.path.realpath(tmp_path)) / "m.sock"
    daemon = await milter(config=f"milter: {{listen: 'unix:{path}'}}\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    mta = await Mta.connect(path=str(path))
    await mta.negotiate()
    await mta.send(connect_and_helo(), message())
    assert await mta.replies_until_final() == [(b"c", b"")]
    await mta.close()
    await daemon.shutdown(deadline=2)
    assert not path.exists()


async def test_drain_answers_the_message_under_way_and_closes_idle_connections(milter, probe):
    probe.gate = asyncio.Event()
    daemon = await milter(config="limits: {shutdown_timeout: 5s}\n")
    idle, busy = await session(daemon), await session(daemon)
    await idle.send(connect_and_helo())
    await busy.send(connect_and_helo(), message(headers=((b"Subject", b" slow-me"),)))
    await asyncio.wait_for(_until(lambda: probe.seen), 5)
    shutdown = asyncio.create_task(daemon.shutdown(deadline=5))
    assert await idle.closed()  # between messages: Postfix applies milter_default_action
    with pytest.raises(OSError):  # no new connections
        await asyncio.wait_for(_refused(daemon.port), 5)
    probe.gate.set()
    assert await busy.replies_until_final() == [(b"c", b"")]
    assert await busy.closed()
    await shutdown
    await idle.close()
    await busy.close()


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


async def _refused(port: int) -> None:
    """Connect, negotiate: raises when the connection is refused or closed at once."""
    mta = await Mta.connect(port)
    try:
        await mta.negotiate()
    except asyncio.IncompleteReadError as error:
        raise ConnectionResetError("closed") from error
    finally:
        await mta.close()


async def test_metrics_are_labelled_with_the_front_door(milter):
    from tests.integration.test_metrics import http, samples

    daemon = await milter(config="metrics: {listen: 127.0.0.1:0}\n")
    mta = await session(daemon)
    await mta.send(connect_and_helo(), message(headers=((b"Subject", b" reject-me"),)),
                   raw(b"A"), message())
    await mta.replies_until_final()
    await mta.replies_until_final()
    await mta.close()
    got = samples((await http(daemon.metrics.port, b"GET /metrics HTTP/1.0\r\n\r\n"))[2])
    assert got['smtpfilter_messages_total{action="reject",frontdoor="milter"}'] == 1
    assert got['smtpfilter_messages_total{action="accept",frontdoor="milter"}'] == 1
    assert got['smtpfilter_replies_total{code="550",frontdoor="milter"}'] == 1
    assert got['smtpfilter_message_seconds_count{frontdoor="milter"}'] == 2


def test_check_kinds_are_restored():
    """The probe kinds exist for these tests only (monkeypatch)."""
    assert "probe" not in checks.CHECK_KINDS or checks.CHECK_KINDS["probe"] is ProbeCheck


_ = Finding  # the probe finds nothing; the other rules make the findings


async def test_a_rate_limit_counts_what_the_milter_lets_postfix_keep(milter):
    """Rate limits count a message once it is otherwise accepted (Engine.settle with the
    judged message): through the milter as through SMTP mode, the third message of a client
    allowed two is deferred, and a message the rules reject does not use up the budget."""
    rules = (RULES + "  - {name: CLIENT_RATE, check: ratelimit, key: client_ip, rate: 2/1h,"
             " action: tempfail}\n")
    daemon = await milter(rules=rules)
    mta = await session(daemon)
    outcomes = []
    for subject in (b" one", b" reject-me", b" two", b" three"):
        await mta.send(connect_and_helo(), message(headers=((b"Subject", subject),)))
        [(cmd, data)] = (await mta.replies_until_final())[-1:]
        outcomes.append((cmd, data[:3]))
    assert outcomes == [(b"c", b""), (b"y", b"550"), (b"c", b""), (b"y", b"451")]
    await mta.close()
