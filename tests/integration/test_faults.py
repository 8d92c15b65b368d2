"""Faults at 10026: each gets the documented reply (4xx unless 10026 itself said 5xx), nothing
is lost, and the next transaction on the same session with Postfix works."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.client import Client
from tests.support.messages import message
from tests.support.sink import Close, Hang, Sink

TIMEOUTS = "limits: {connect_timeout: 0.5s, command_timeout: 0.5s, data_timeout: 0.5s}\n"


def once(stage: str, action):
    """A script that misbehaves at ``stage`` the first time only."""
    state = {"done": False}

    def script(verb, line, txn):
        if verb == stage and not state["done"]:
            state["done"] = True
            return action
        return None

    return script


FAULTS = {
    # name: (stage, what 10026 does, expected reply code to Postfix, at which command)
    "greeting-never-sent": ("CONNECT", Hang, 451, "MAIL"),
    "greeting-554": ("CONNECT", "554 5.3.2 sink.test busy", 451, "MAIL"),
    "closes-at-connect": ("CONNECT", Close, 451, "MAIL"),
    "ehlo-hangs": ("EHLO", Hang, 451, "MAIL"),
    "mail-hangs": ("MAIL", Hang, 451, "MAIL"),
    "mail-closes": ("MAIL", Close, 451, "MAIL"),
    "mail-4xx": ("MAIL", "451 4.3.0 Error: queue file write error", 451, "MAIL"),
    "mail-5xx": ("MAIL", "550 5.1.8 sender rejected", 550, "MAIL"),
    "rcpt-hangs": ("RCPT", Hang, 451, "RCPT"),
    "rcpt-closes": ("RCPT", Close, 451, "RCPT"),
    "rcpt-4xx": ("RCPT", "450 4.2.0 try later", 450, "RCPT"),
    "rcpt-5xx": ("RCPT", "550 5.1.1 unknown user", 550, "RCPT"),
    "data-cmd-hangs": ("DATA", Hang, 451, "DOT"),
    "data-cmd-5xx": ("DATA", "554 5.5.1 Error: no valid recipients", 554, "DOT"),
    "closes-mid-data": ("MIDDATA", Close, 451, "DOT"),
    "dot-hangs": ("DOT", Hang, 451, "DOT"),
    "dot-closes": ("DOT", Close, 451, "DOT"),
    "dot-4xx": ("DOT", "451 4.3.0 Error: queue file write error", 451, "DOT"),
    "dot-5xx": ("DOT", "554 5.7.1 rejected downstream", 554, "DOT"),
    "dot-421": ("DOT", "421 4.3.2 shutting down", 451, "DOT"),
    "xforward-refused": ("XFOR", "550 5.7.0 Error: insufficient authorization", 250, "DOT"),
}


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
async def test_fault_then_next_transaction_works(start_filter, sink, fault):
    stage, action, expected, at = FAULTS[fault]
    sink.script = once(stage, action)
    server = await start_filter(config=TIMEOUTS)
    client = await Client.connect(server.port)
    await client.ehlo()

    async def transaction(subject: str) -> dict[str, int]:
        codes = {}
        assert (await client.cmd("XFORWARD ADDR=192.0.2.9 IDENT=ABC")).code == 250
        codes["MAIL"] = (await client.cmd("MAIL FROM:<a@example.org>")).code
        if codes["MAIL"] != 250:
            return codes
        codes["RCPT"] = (await client.cmd("RCPT TO:<b@example.com>")).code
        if codes["RCPT"] != 250:
            await client.cmd("RSET")
            return codes
        codes["DOT"] = (await client.data(message(f"Subject: {subject}"))).code
        return codes

    first = await transaction("first")
    second = await transaction("second")
    await client.close()

    assert first[at] == expected, first
    assert not (500 <= first[at] < 600) or (isinstance(action, str) and action.startswith("5"))
    assert second == {"MAIL": 250, "RCPT": 250, "DOT": 250}
    subjects = [m.data.split(b"Subject: ")[1].split(b"\r\n")[0] for m in sink.messages]
    if expected == 250:
        assert subjects == [b"first", b"second"]
    else:
        assert subjects == [b"second"]


async def test_10026_down_then_back(start_filter):
    sink = await Sink().start()
    port = sink.port
    await sink.stop()
    server = await start_filter(config=TIMEOUTS, forward_port=port)
    client = await Client.connect(server.port)
    await client.ehlo()
    down = await client.cmd("MAIL FROM:<a@example.org>")
    revived = Sink()
    revived._server = await asyncio.start_server(revived._serve, "127.0.0.1", port)
    try:
        assert (await client.cmd("MAIL FROM:<a@example.org>")).code == 250
        await client.cmd("RCPT TO:<b@example.com>")
        assert (await client.data(message())).code == 250
    finally:
        await client.close()
        await revived.stop()
    assert down.code == 451
    assert len(revived.messages) == 1


# --- DNS faults: the message still gets its decision within the per-message limit ------------
DNS_FAULTS = ["down", "silent", "slow", "servfail", "refused", "truncated"]


@pytest.mark.parametrize("fault", DNS_FAULTS)
@pytest.mark.parametrize("on_error", ["ignore", "tempfail"])
async def test_dns_fault_decision_within_the_message_limit(start_filter, sink, fault, on_error):
    import time

    from tests.integration.test_dnsbl import DNSBL_REJECT, xforward
    from tests.support.client import send_message
    from tests.support.dnsserver import DnsServer, Fault, serve_test_lists

    dns = await DnsServer().start()
    serve_test_lists(dns)
    port = dns.port
    if fault == "down":
        await dns.stop()  # nothing listens: UDP gets no answer at all
    else:
        kind = {"silent": Fault.DROP, "slow": None, "servfail": Fault.SERVFAIL,
                "refused": Fault.REFUSED, "truncated": Fault.TRUNCATE}[fault]
        for zone in ("dnsbl.test", "dnswl.test"):
            dns.fault(zone, kind, delay=2.0 if fault == "slow" else 0.0)
    config = (
        f'dns: {{nameservers: ["127.0.0.1:{port}"], timeout: 300ms, message_timeout: 600ms, '
        f"on_error: {on_error}}}\n"
    )
    try:
        server = await start_filter(rules=DNSBL_REJECT, config=config)
        started = time.monotonic()
        reply = await send_message(server.port, message(), xforward=xforward("1.2.3.4"))
        elapsed = time.monotonic() - started
    finally:
        if fault != "down":
            await dns.stop()
    assert elapsed < 0.6 + 1.0  # the message limit, plus SMTP on loopback
    if fault == "truncated":
        # TC set: the resolver retries over TCP, which the test server answers in full.
        assert reply.code == 550
        return
    if on_error == "ignore":
        assert reply.code == 250, reply  # a DNS failure is "not listed"
    else:
        # 451 while the failure is a lookup error; 250 once the zone's health probe (started
        # with the server) has disabled the failing list, which then counts as not listed
        # rather than holding all mail (smtpfilter/engine/resolver.py, ZoneHealth).
        assert reply.code in (250, 451), reply
    assert len(sink.messages) == (1 if reply.code == 250 else 0)


async def test_status_counts_what_postfix_was_told(start_filter, sink):
    # A message the rules accepted but 10026 refused was deferred, not delivered.
    from tests.support.client import send_message

    sink.script = once("DOT", "451 4.3.0 Error: queue file write error")
    server = await start_filter()
    assert (await send_message(server.port, message())).code == 451
    assert (await send_message(server.port, message())).code == 250
    assert (await send_message(server.port, message("X-Mailer: Avalanche"))).code == 250
    assert server.status().endswith("delivered 1, rejected 0, discarded 1, deferred 1")
