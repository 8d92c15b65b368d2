"""limits.sessions: idle sessions make room, busy ones do not (issue 10, item 9).

100 idle local sessions (the default limit) made every new Postfix connection get 421 for up to
idle_timeout (300 s). At the limit, the session idle longest (greeted or between transactions,
waiting for a command) is now closed with 421 4.4.2 and the newcomer is served; only when every
session is busy does the newcomer get 421.
"""

from __future__ import annotations

import asyncio

from tests.support.client import Client, send_message
from tests.support.messages import message
from tests.support.sink import Hang


async def idle_client(port: int) -> Client:
    client = await Client.connect(port)
    assert client.banner.code == 220
    assert (await client.ehlo()).code == 250
    return client


async def test_idle_sessions_make_room_for_a_transaction(start_filter, sink):
    """The issue's case: the default limit (100) filled with idle local sessions."""
    server = await start_filter()
    limit = server.config.limits.sessions
    assert limit == 100
    oldest = await idle_client(server.port)
    others = await asyncio.gather(*(idle_client(server.port) for _ in range(limit - 1)))
    assert server.runtime.sessions == limit

    reply = await send_message(server.port, message("Subject: gets through"))

    assert reply.code == 250
    [received] = sink.messages
    assert b"Subject: gets through" in received.data
    # The session idle longest was told why, then closed.
    closed = await oldest.reply()
    assert (closed.code, closed.text) == (421, "4.4.2 Error: idle session closed, too many connections")
    assert await oldest.closed_by_peer()
    # The others were left alone and still work.
    for client in others:
        assert (await client.cmd("NOOP")).code == 250
        await client.close()
    assert server.runtime.counters.get("idle_closed") == 1
    assert "refused_busy" not in server.runtime.counters


async def test_newcomer_gets_421_when_every_session_is_busy(start_filter, sink):
    """Mid-DATA (10026 scripted to hang after "."), and inside a transaction (MAIL accepted,
    nothing since): neither is idle, neither is closed."""
    at_dot = asyncio.Event()

    def script(verb, line, txn):
        if verb == "DOT":
            at_dot.set()
            return Hang
        return None

    sink.script = script
    server = await start_filter(config="limits: {sessions: 2}\n")
    in_data = await idle_client(server.port)
    assert (await in_data.cmd("MAIL FROM:<a@example.org>")).code == 250
    assert (await in_data.cmd("RCPT TO:<b@example.com>")).code == 250
    assert (await in_data.cmd("DATA")).code == 354
    in_data.send(message("Subject: stuck") + b".\r\n")
    await asyncio.wait_for(at_dot.wait(), 10)
    in_mail = await idle_client(server.port)
    assert (await in_mail.cmd("MAIL FROM:<c@example.org>")).code == 250

    newcomer = await Client.connect(server.port)

    assert newcomer.banner.code == 421
    assert newcomer.banner.text.startswith("4.7.0 Error: too many connections")
    assert await newcomer.closed_by_peer()
    assert server.runtime.counters.get("refused_busy") == 1
    assert "idle_closed" not in server.runtime.counters
    # The transaction in progress goes on.
    assert (await in_mail.cmd("RCPT TO:<d@example.com>")).code == 250
    for client in (in_data, in_mail):
        await client.close()


async def test_a_session_between_transactions_is_idle_again(start_filter, sink):
    """After "." (the state Postfix's connection cache leaves a session in) a session is idle,
    and the one idle longest goes first, whatever its age."""
    server = await start_filter(config="limits: {sessions: 2}\n")
    first = await idle_client(server.port)
    reused = await idle_client(server.port)
    assert (await first.cmd("NOOP")).code == 250  # now `reused` has been idle longest
    assert (await reused.cmd("MAIL FROM:<a@example.org>")).code == 250
    assert (await reused.cmd("RCPT TO:<b@example.com>")).code == 250
    assert (await reused.data(message("Subject: one"))).code == 250
    assert (await first.cmd("NOOP")).code == 250  # `reused`, after its ".", is idle longest

    assert (await send_message(server.port, message("Subject: two"))).code == 250

    assert (await reused.reply()).code == 421
    assert await reused.closed_by_peer()
    assert (await first.cmd("NOOP")).code == 250
    await first.close()
    assert len(sink.messages) == 2
