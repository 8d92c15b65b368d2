"""A hostile or broken SMTP client: every abuse has a defined answer and loses nothing."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.client import Client, send_message
from tests.support.messages import message


async def session(server, *, ehlo=True) -> Client:
    client = await Client.connect(server.port)
    if ehlo:
        await client.ehlo()
    return client


async def test_command_line_over_the_limit_is_refused_and_session_continues(start_filter):
    server = await start_filter()
    client = await session(server)
    too_long = await client.cmd("NOOP " + "x" * 600)
    mail_too_long = await client.cmd("MAIL FROM:<" + "a" * 3000 + "@example.org>")
    ok = await client.cmd("NOOP")
    await client.close()
    assert too_long.code == 500 and mail_too_long.code == 500
    assert ok.code == 250


async def test_data_lines_longer_than_998_pass_through_unchanged(start_filter, sink):
    server = await start_filter()
    wire = message(body=b"A" * 5000 + b"\n" + b"B" * 70000 + b"\nend\n")
    reply = await send_message(server.port, wire)
    assert reply.code == 250
    assert sink.messages[0].data == wire


async def test_nul_bytes_in_data_pass_through(start_filter, sink):
    server = await start_filter()
    wire = message("X-Odd: a\x00b", body=b"nul \x00 in body\n")
    assert (await send_message(server.port, wire)).code == 250
    assert sink.messages[0].data == wire


async def test_pipelined_garbage_gets_answers_then_a_goodbye(start_filter):
    server = await start_filter()
    client = await session(server)
    client.send(b"".join(b"GARBAGE%d\r\n" % i for i in range(8)))
    codes = [(await client.reply()).code for _ in range(5)]
    assert codes == [500, 500, 500, 500, 502]
    assert await client.closed_by_peer()


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("XFORWARD NAME=" + "n" * 300, 501),  # value over 255 characters
        ("XFORWARD COLOR=blue", 501),  # unknown attribute
        ("XFORWARD ADDR=not-an-address", 501),
        ("XFORWARD ADDR=999.1.1.1", 501),
        ("XFORWARD NAME=bad+zzescape", 501),
        ("XFORWARD", 501),
        ("XFORWARD NAME", 501),
        ("XFORWARD ADDR=[UNAVAILABLE] NAME=[UNAVAILABLE]", 250),
        ("XFORWARD ADDR=IPv6:2001:db8::5", 250),
    ],
)
async def test_xforward_syntax(start_filter, command, code):
    server = await start_filter()
    client = await session(server)
    reply = await client.cmd(command)
    await client.close()
    assert reply.code == code


async def test_xforward_inside_a_transaction_is_refused(start_filter, sink):
    server = await start_filter()
    client = await session(server)
    await client.cmd("MAIL FROM:<a@example.org>")
    reply = await client.cmd("XFORWARD ADDR=192.0.2.1")
    await client.cmd("RCPT TO:<b@example.com>")
    assert (await client.data(message())).code == 250
    await client.close()
    assert reply.code == 503
    assert sink.messages[0].xforward == []


async def test_too_many_recipients(start_filter, sink):
    server = await start_filter(config="limits: {recipients: 3}\n")
    client = await session(server)
    await client.cmd("MAIL FROM:<a@example.org>")
    codes = [(await client.cmd(f"RCPT TO:<r{i}@example.com>")).code for i in range(5)]
    assert (await client.data(message())).code == 250
    await client.close()
    assert codes == [250, 250, 250, 452, 452]
    assert len(sink.messages[0].accepted_rcpts) == 3


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("MAIL FROM:<a@example.org> AUTH", 501),
        ("MAIL FROM:<a@example.org> REQUIRETLS", 555),  # not an extension we can honour
        ("MAIL FROM:<a@example.org> BODY=BINARYMIME", 501),
        ("MAIL FROM:<a@example.org> SIZE=big", 501),
        ("MAIL FROM:<a@example.org> RET=NEVER", 501),
        ("MAIL FROM:<a@example.org> ENVID=has space", 555),
        ("MAIL FROM:<a@example.org> SIZE=1 SIZE=2", 501),
        ("MAIL FROM:<a@example.org> SMTPUTF8=yes", 501),
        ("MAIL FROM:<a@example.org", 501),
        ("MAIL TO:<a@example.org>", 501),
        ("RCPT TO:<b@example.com>", 503),
        ("DATA", 503),
    ],
)
async def test_envelope_syntax_errors(start_filter, command, code):
    server = await start_filter()
    client = await session(server)
    reply = await client.cmd(command)
    await client.close()
    assert reply.code == code


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("RCPT TO:<b@example.com> NOTIFY=SOMETIMES", 501),
        ("RCPT TO:<b@example.com> ORCPT=nosemicolon", 501),
        ("RCPT TO:<b@example.com> XYZ=1", 555),
        ("RCPT TO:<>", 501),
        ("RCPT TO:<b@example.com> NOTIFY=NEVER NOTIFY=NEVER", 501),
    ],
)
async def test_recipient_syntax_errors(start_filter, command, code):
    server = await start_filter()
    client = await session(server)
    await client.cmd("MAIL FROM:<a@example.org>")
    reply = await client.cmd(command)
    await client.close()
    assert reply.code == code


async def test_commands_before_ehlo(start_filter):
    server = await start_filter()
    client = await session(server, ehlo=False)
    reply = await client.cmd("MAIL FROM:<a@example.org>")
    await client.close()
    assert reply.code == 503


async def test_helo_client_may_not_use_parameters(start_filter, sink):
    server = await start_filter()
    client = await session(server, ehlo=False)
    assert (await client.cmd("HELO old.example")).code == 250
    assert (await client.cmd("MAIL FROM:<a@example.org> SIZE=10")).code == 501
    assert (await client.cmd("MAIL FROM:<a@example.org>")).code == 250
    await client.cmd("RCPT TO:<b@example.com>")
    assert (await client.data(message())).code == 250
    await client.close()


async def test_silent_client_is_dropped_with_421(start_filter):
    server = await start_filter(config="limits: {idle_timeout: 0.3s}\n")
    client = await session(server)
    reply = await client.reply(timeout=5)
    assert reply.code == 421
    assert await client.closed_by_peer()


async def test_slow_but_steady_data_is_not_cut_off(start_filter, sink):
    server = await start_filter(config="limits: {idle_timeout: 0.4s}\n")
    client = await session(server)
    await client.cmd("MAIL FROM:<a@example.org>")
    await client.cmd("RCPT TO:<b@example.com>")
    assert (await client.cmd("DATA")).code == 354
    wire = message(body=b"slow\n" * 8)
    pieces = [wire[i : i + 12] for i in range(0, len(wire), 12)]
    assert len(pieces) >= 10
    started = time.monotonic()
    for piece in pieces:
        client.send(piece)
        await client.writer.drain()
        await asyncio.sleep(0.1)  # each gap < idle_timeout, the total far above it
    client.send(b".\r\n")
    reply = await client.reply()
    await client.close()
    assert time.monotonic() - started > 2 * 0.4
    assert reply.code == 250
    assert sink.messages[0].data == wire


async def test_pathological_regex_does_not_stall_other_sessions(start_filter, sink):
    rules = """
    rules:
      - name: EVIL_REGEX
        check: header
        header: Subject
        match: '^(a|aa)+(a|aa)+(a|aa)+$'
        action: reject
    """
    server = await start_filter(rules=rules)
    hostile = message("Subject: " + "a" * 200_000 + "!")
    calm = message("Subject: hello")
    started = time.monotonic()
    results = await asyncio.gather(
        send_message(server.port, hostile), send_message(server.port, calm)
    )
    elapsed = time.monotonic() - started
    assert [r.code for r in results] == [250, 250]
    # A backtracking engine would need longer than the universe has; RE2 needs milliseconds.
    assert elapsed < 5


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_client_hanging_up_between_commands_is_not_an_error(start_filter, caplog, how):
    from tests.support.sink import wait_until

    server = await start_filter()
    client = await Client.connect(server.port)
    await client.ehlo()
    await client.cmd("MAIL FROM:<a@example.org>")
    if how == "reset":
        import socket
        import struct

        sock = client.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.close()
    await wait_until(lambda: server.runtime.sessions == 0)
    assert [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []
