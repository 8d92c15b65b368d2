"""The golden corpus through the milter front door and through the SMTP front door: the same
rules make the same Decision of every message.

The milter side gets each message as Postfix hands it to a milter (one HEADER event per field,
its value with the leading space and folded lines joined by LF; the body, when asked for, in
65,535-byte chunks, not dot-stuffed); the SMTP side gets the DATA bytes (dot-stuffed). Both go
through the one engine call (Engine.judge); the DNS lists are the test server's.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest

from smtpfilter.config.settings import Config, Limits
from smtpfilter.core.envelope import Client, Envelope, Recipient
from smtpfilter.core.message import parse_header_block
from smtpfilter.core.wire import from_wire, has_bare_line_ends, normalise
from smtpfilter.delivery.downstream import DownstreamPool
from smtpfilter.frontdoors.milter import protocol as p
from smtpfilter.frontdoors.milter import session as session_module
from smtpfilter.frontdoors.milter.session import MilterSession
from smtpfilter.service.runtime import Runtime
from tests.support import corpus


def milter_events(name: str) -> tuple[list[p.Header], bytes]:
    """The HEADER events and the body of a corpus message, as Postfix would send them."""
    data = corpus.wire(name)
    if has_bare_line_ends(data):
        data = normalise(data)  # Postfix reads bare LF as a line end, as our SMTP side does
    content = from_wire(data)
    block = parse_header_block(content, len(content) + 1, stuffed=False)
    headers = [p.Header(h.name.encode("ascii"), h.raw.replace(b"\r\n", b"\n")) for h in block]
    body = content[block.end:]
    if body.startswith(b"\r\n") and block.malformed_at is None:
        body = body[2:]  # the empty line: Postfix does not send it
    return headers, body


class _Clock(datetime):
    """The corpus's receipt time for the milter session, which takes the time of the end of
    the message (date rules compare with it)."""

    @classmethod
    def now(cls, tz=None):
        return corpus.RECEIVED_AT


@pytest.mark.parametrize("name", corpus.MESSAGES)
async def test_the_milter_decides_as_the_smtp_front_door(dns_server, name, monkeypatch):
    monkeypatch.setattr(session_module, "datetime", _Clock)
    rules = corpus.ruleset(dns_port=dns_server.port)
    config = replace(Config(), policy=corpus.POLICY,
                     limits=replace(Limits(), header_size=corpus.HEADER_LIMIT))
    runtime = Runtime(config, rules, DownstreamPool.for_config(config))
    decided = []
    runtime.engine.observer = lambda decision, reply, elapsed: decided.append(decision)
    env = corpus.envelope(name)
    client = Client(addr=env["client"], name="unknown") if env["client"] else Client()

    # SMTP: the DATA bytes.
    envelope = Envelope(mail_from=env["mail_from"], mail_path=env["mail_from"],
                        recipients=[Recipient(r, r) for r in env["rcpts"]])
    data = corpus.wire(name)
    if has_bare_line_ends(data):
        data = normalise(data)
    _, smtp, _ = await runtime.engine.judge(envelope, client, data,
                                            received_at=corpus.RECEIVED_AT)

    # Milter: the events.
    session = MilterSession(runtime, peer="corpus")
    await session.handle(p.OptNeg(6, 0x1FF, 0x1FFFFF))
    if env["client"]:
        await session.handle(p.Macros(ord("C"), {"client_addr": env["client"],
                                                 "client_name": "unknown"}))
        await session.handle(p.Connect("[" + env["client"] + "]", "4", 25, env["client"]))
    await session.handle(p.Mail((f"<{env['mail_from']}>",)))
    for rcpt in env["rcpts"]:
        await session.handle(p.Rcpt((f"<{rcpt}>",)))
    headers, body = milter_events(name)
    for header in headers:
        await session.handle(header)
    if not session.agreed.steps & p.Step.NOBODY:
        for start in range(0, len(body), 65535):
            await session.handle(p.Body(body[start:start + 65535]))
    await session.handle(p.EndOfMessage(b""))
    [milter] = decided

    assert smtp is not None and milter is not None
    assert (milter.action, milter.rules_hit, milter.score) == (smtp.action, smtp.rules_hit,
                                                               smtp.score)
    assert milter.action.value == corpus.EXPECTED[name]["action"]
    await rules.env.dns.aclose()
