"""Against Postfix's own smtp-sink as 10026: a C server in another process answers within
microseconds, which exposes orderings an in-process Python sink never produces (on uvloop the
reply to "." once arrived before we listened for it, and every message hung)."""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.support.client import Client
from tests.support.messages import message
from tests.support.service import free_port
from tests.support.tools import require


@pytest.fixture
async def smtp_sink(tmp_path):
    require("smtp-sink")
    port = free_port()
    user = "nobody" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    counter = open(tmp_path / "sink.out", "wb")
    process = await asyncio.create_subprocess_exec(
        "smtp-sink", "-u", user, "-c", f"127.0.0.1:{port}", "64",
        stdout=counter, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                break
            except OSError:
                await asyncio.sleep(0.02)
        yield port, tmp_path / "sink.out"
    finally:
        process.terminate()
        await process.wait()
        counter.close()


async def test_many_messages_on_one_session_through_smtp_sink(start_filter, smtp_sink):
    port, counter = smtp_sink
    server = await start_filter(forward_port=port, config="limits: {data_timeout: 5s}\n")
    client = await Client.connect(server.port)
    await client.ehlo()
    codes = []
    for number in range(30):
        await client.cmd("MAIL FROM:<a@example.org>")
        await client.cmd("RCPT TO:<b@example.com>")
        codes.append((await client.data(message(f"Subject: {number}"), timeout=10)).code)
        if codes[-1] != 250:
            break
    await client.cmd("QUIT")
    await client.close()
    assert codes == [250] * 30
