"""Never out of step with 10026: a client hanging up at any point of the dialogue.

The filter passes MAIL, RCPT and DATA to 10026 in lockstep and reuses 10026 connections across
sessions. If a connection went back to the pool with a reply still on its way, the next session
on it would read every reply one step late: against Postfix's smtpd its RCPT gets "503 5.5.1
Error: nested MAIL command" (a 5xx: Postfix bounces the mail), and against a slower server a
stale "250 2.1.5" can be taken for the reply to "." (Postfix is told "queued" for a message
10026 never got). The sink here is as strict about command order as Postfix's smtpd, and its
reply at one point of the dialogue is held back until client A has gone; then client B's
ordinary transaction must see exactly the replies it would see on a fresh connection, and every
250 to "." must have a message at the sink.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.client import Client, send_message
from tests.support.messages import message
from tests.support.sink import Hang, wait_until

# Postfix's smtp client sends XFORWARD in two commands (XFORWARD_README; smtp_proto.c).
XFORWARD = (
    "XFORWARD NAME=mx.example.net ADDR=192.0.2.7 PORT=4711",
    "XFORWARD PROTO=ESMTP HELO=mx.example.net IDENT=4F2B1 SOURCE=REMOTE",
)

# Where client A hangs up: the sink holds its reply to this command (the filter's command to
# 10026, "DOT" being its reply to the final "."), and the number of that command on the
# connection (the second XFORWARD line is "XFOR" #2).
POINTS = {
    "xforward-1": ("XFOR", 1),
    "xforward-2": ("XFOR", 2),
    "mail": ("MAIL", 1),
    "rcpt-1": ("RCPT", 1),
    "rcpt-2": ("RCPT", 2),
    "data": ("DATA", 1),
    "dot": ("DOT", 1),
    "rset": ("RSET", 1),
}
# How A hangs up, and when the held reply is finally written:
# - "reset": A's connection is reset (a killed Postfix smtp process with unread input): the
#   filter's session ends at once while 10026 still owes it a reply. The reply is written as
#   soon as that session is over ("late": it reaches an idle connection), or only when more
#   input comes on that 10026 connection ("next": it would be read as the answer to the next
#   session's first command).
# - "close": A closes normally (end of input): the filter finishes the step in hand first.
HANGUPS = ["reset-late", "reset-next", "close"]


async def _client_a(port: int, point: str) -> Client:
    """Client A's dialogue up to ``point``: everything is sent, nothing more is read."""
    client = await Client.connect(port)
    await client.ehlo("a.example.net")
    for line in XFORWARD:
        assert (await client.cmd(line)).code == 250
    client.send("MAIL FROM:<a@example.org>\r\n")
    if point in ("xforward-1", "xforward-2", "mail"):
        return client
    assert (await client.reply()).code == 250
    client.send("RCPT TO:<a1@example.com>\r\n")
    if point == "rcpt-1":
        return client
    assert (await client.reply()).code == 250
    client.send("RCPT TO:<a2@example.com>\r\n")
    if point == "rcpt-2":
        return client
    assert (await client.reply()).code == 250
    if point == "rset":
        client.send("RSET\r\n")
        return client
    assert (await client.cmd("DATA")).code == 354
    client.send(message("Subject: from A") + b".\r\n")
    return client


async def _client_b(port: int) -> tuple[list[int], str, bytes]:
    """An ordinary transaction, the way Postfix's smtp client makes it."""
    wire = message("Subject: from B")
    client = await Client.connect(port)
    try:
        await client.ehlo("b.example.net")
        codes = [(await client.cmd(line)).code for line in XFORWARD]
        codes.append((await client.cmd("MAIL FROM:<b@example.org>")).code)
        codes.append((await client.cmd("RCPT TO:<b1@example.com>")).code)
        codes.append((await client.cmd("RCPT TO:<b2@example.com>")).code)
        final = await client.data(wire)
        codes.append(final.code)
        await client.cmd("QUIT")
    finally:
        await client.close()
    return codes, final.text, wire


@pytest.mark.parametrize("hangup", HANGUPS)
@pytest.mark.parametrize("point", list(POINTS))
async def test_hangup_while_10026_answers_never_shifts_the_next_session(
    start_filter, sink, point, hangup
):
    server = await start_filter(config="limits:\n  pool_size: 5\n")
    # One normal transaction first, so that a pooled 10026 connection exists.
    codes, _, _ = await _client_b(server.port)
    assert codes[-1] == 250
    await wait_until(lambda: server.runtime.pool.idle == 1)

    verb, nth = POINTS[point]
    held, released = asyncio.Event(), asyncio.Event()

    async def gate(command: str, txn, more_input) -> None:
        count = {"XFOR": len(txn.xforward), "RCPT": len(txn.rcpts)}.get(command, 1)
        if command != verb or count != nth or held.is_set():
            return
        held.set()
        await released.wait()
        if hangup == "reset-next":
            await asyncio.wait_for(more_input(), 10)

    sink.gate = gate
    client_a = await _client_a(server.port, point)
    await asyncio.wait_for(held.wait(), 10)
    if hangup == "close":
        await client_a.close()
        released.set()
        await wait_until(lambda: server.runtime.sessions == 0)
    else:
        client_a.abort()  # A is gone while 10026 still owes the filter a reply
        await wait_until(lambda: server.runtime.sessions == 0)
        released.set()

    codes, text, wire = await _client_b(server.port)

    assert codes == [250, 250, 250, 250, 250, 250], (point, hangup, codes)
    assert text.startswith("2.0.0 Ok: queued as")
    assert any(m.data == wire and m.reply.endswith(text.rsplit(" ", 1)[-1]) for m in sink.messages)
    # Every 250 to "." has its message at the sink; A's never had one unless it got that far.
    subjects = [m.data.split(b"Subject: ")[1].split(b"\r\n")[0] for m in sink.messages]
    assert subjects.count(b"from B") == 2
    assert subjects.count(b"from A") <= 1


@pytest.mark.parametrize("point", ["mail", "rcpt-1", "dot"])
async def test_half_close_still_gets_every_reply(start_filter, sink, point):
    """A client that shuts its sending side after its last command and waits (a half-close,
    RFC 9293 §3.6) still gets its replies; after "." that means the message is delivered and
    the 250 written, not dropped."""
    server = await start_filter()
    verb, nth = POINTS[point]
    held, released = asyncio.Event(), asyncio.Event()

    async def gate(command: str, txn, more_input) -> None:
        if command == verb and not held.is_set():
            held.set()
            await released.wait()

    sink.gate = gate
    client = await _client_a(server.port, point)
    await asyncio.wait_for(held.wait(), 10)
    client.shutdown_write()
    released.set()
    reply = await client.reply()
    if point == "dot":
        assert reply.code == 250 and reply.text.startswith("2.0.0 Ok: queued as")
        assert [m.data.split(b"Subject: ")[1][:6] for m in sink.messages] == [b"from A"]
    else:
        assert reply.code == 250
    assert await client.closed_by_peer()


async def test_reply_that_cannot_answer_the_final_dot_is_451(start_filter, sink):
    """A 2.1.x reply (an address status: what MAIL and RCPT get) cannot be 10026's answer to
    ".": whatever the cause, the connection is out of step, and the message must not be
    reported as queued."""
    server = await start_filter()
    sink.data_reply = lambda txn: "250 2.1.5 Ok"
    client = await Client.connect(server.port)
    await client.ehlo()
    assert (await client.cmd("MAIL FROM:<a@example.org>")).code == 250
    assert (await client.cmd("RCPT TO:<b@example.com>")).code == 250
    reply = await client.data(message("Subject: stale"))
    assert reply.code == 451, reply
    sink.data_reply = None
    # The next transaction on the same session gets a fresh, in-step 10026 connection.
    assert (await client.cmd("MAIL FROM:<a@example.org>")).code == 250
    assert (await client.cmd("RCPT TO:<b@example.com>")).code == 250
    assert (await client.data(message("Subject: fresh"))).code == 250
    await client.close()


async def test_10026_that_stops_reading_the_message_costs_only_data_timeout(start_filter, sink):
    """Every wait on 10026 is bounded by its configured timeout: a 10026 that accepts DATA and
    then reads nothing more used to hold the session until the idle timer (minutes)."""
    server = await start_filter(config="limits: {data_timeout: 1s, command_timeout: 1s}\n")
    sink.script = lambda verb, line, txn: Hang if verb == "MIDDATA" else None
    client = await Client.connect(server.port)
    await client.ehlo()
    assert (await client.cmd("MAIL FROM:<a@example.org>")).code == 250
    assert (await client.cmd("RCPT TO:<b@example.com>")).code == 250
    # Larger than every socket buffer on the way, so the filter's writes must block.
    big = message("Subject: big", body=(b"y" * 76 + b"\n") * 120_000)
    reply = await client.data(big, timeout=20)
    assert reply.code == 451 and "failed at DATA" in reply.text, reply
    assert sink.messages == []
    await client.close()


async def test_a_reload_applies_the_10026_timeouts_and_pool_settings(start_filter, sink):
    """SIGHUP's reload applies limits.command_timeout (and connect/data timeouts, pool_size,
    pool_idle) to what starts after it; it used to log "reloaded" and keep the old ones."""
    server = await start_filter(config="limits: {command_timeout: 60s}\n")
    assert (await send_message(server.port, message("Subject: before"))).code == 250
    assert len(sink.connections) == 1
    server.config_path.write_text(
        server.config_path.read_text().replace(
            "limits: {command_timeout: 60s}", "limits: {command_timeout: 300ms, pool_size: 0}"
        )
    )
    assert server.reload()
    # pool_size 0: the connection kept from before is not reused, and none is kept after.
    assert (await send_message(server.port, message("Subject: after"))).code == 250
    assert (await send_message(server.port, message("Subject: again"))).code == 250
    assert len(sink.connections) == 3
    # command_timeout 300ms: a 10026 that never answers MAIL costs 0.3 s, not 60.
    sink.script = lambda verb, line, txn: Hang if verb == "MAIL" else None
    started = asyncio.get_running_loop().time()
    reply = await asyncio.wait_for(send_message(server.port, message("Subject: x")), 10)
    assert reply.code == 451 and "failed at MAIL" in reply.text
    assert asyncio.get_running_loop().time() - started < 5


async def test_commands_pipelined_after_the_dot_are_answered_after_a_half_close(
    start_filter, sink
):
    """The whole transaction, the end of the message and a QUIT after it, then a half-close,
    all before the filter has read DATA (it is waiting for 10026's reply to MAIL): the DATA
    reader finds the end of input already seen when it hands the bytes after "." back to the
    command reader. They are still owed their replies (FilterSMTP.eof_received): the QUIT gets
    its 221. Handing them back raised AssertionError in StreamReader.feed_data, caught as
    control flow, so the QUIT was dropped (and under python -O nothing would raise)."""
    server = await start_filter()
    released = asyncio.Event()

    async def gate(command: str, txn, more_input) -> None:
        if command == "MAIL":
            await released.wait()

    sink.gate = gate
    client = await Client.connect(server.port)
    await client.ehlo()
    client.send(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
        + message("Subject: pipelined") + b".\r\nQUIT\r\n"
    )
    client.shutdown_write()
    # 10026 answers MAIL only once the filter's reader has seen the end of input.
    await wait_until(lambda: any(p._reader._eof for p in server.door._protocols))
    released.set()
    try:
        codes = [(await client.reply()).code for _ in range(5)]
    finally:
        await client.close()
    assert codes == [250, 250, 354, 250, 221]
    assert [m.data.split(b"Subject: ")[1][:9] for m in sink.messages] == [b"pipelined"]


async def test_a_10026_that_hangs_on_a_pooled_connection_is_not_asked_twice(start_filter, sink):
    """A reused connection that 10026 had closed is retried on a new one (nothing of the
    transaction reached it); one on which 10026 hangs is not: the retry would make Postfix
    wait two command_timeouts for its 451."""
    server = await start_filter(config="limits: {command_timeout: 1s}\n")
    codes, _, _ = await _client_b(server.port)
    assert codes[-1] == 250
    await wait_until(lambda: server.runtime.pool.idle == 1)
    sink.script = lambda verb, line, txn: Hang if verb == "MAIL" else None
    client = await Client.connect(server.port)
    await client.ehlo()
    reply = await client.cmd("MAIL FROM:<a@example.org>")
    assert reply.code == 451, reply
    assert len(sink.connections) == 1  # no second connection was opened to ask again
    await client.close()
