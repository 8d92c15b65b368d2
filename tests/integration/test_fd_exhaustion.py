"""Out of file descriptors: one warning, connections wait, mail flows again (issue 10, item 10).

Every EMFILE on accept logged a full traceback under asyncio (1,901 in 4 s with ulimit -n 64),
and under uvloop libuv closed the waiting connections before any greeting, silently. The
filter now accepts itself (smtpfilter/listener.py): connections wait in the listen queue, and
one warning a minute says so.
"""

from __future__ import annotations

import asyncio
import os
import resource

import pytest

from tests.integration.conftest import start
from tests.support.client import Client, send_message
from tests.support.messages import message

CLIENTS = 40
HEADROOM = 8  # descriptors left for client connections once the limit is lowered


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
async def test_fd_exhaustion_is_one_warning_and_nobody_is_cut_off(service, sink, event_loop):
    process = await start(service(config=f"event_loop: {event_loop}\n"))
    # RLIMIT_NOFILE of the running filter, just above what it holds now (prlimit(2)).
    limit = open_files(process.pid) + HEADROOM
    resource.prlimit(process.pid, resource.RLIMIT_NOFILE, (limit, limit))

    clients = [await Client.connect(process.port, banner=False) for _ in range(CLIENTS)]
    await asyncio.to_thread(process.wait_log, r"cannot accept connections on 127\.0\.0\.1:\d+: "
                            r"Too many open files \(open files limit \d+\)")

    # Each client in turn gets its greeting once those before it have gone: none was closed
    # unanswered (what libuv's EMFILE trick did), none waits for long (back-off at most 1 s).
    for index, client in enumerate(clients):
        banner = await client.reply(timeout=10)
        assert banner.code == 220, (index, banner)
        await client.close()

    assert (await send_message(process.port, message("Subject: after"))).code == 250
    assert b"Subject: after" in sink.messages[-1].data

    log = process.log()
    assert "Traceback" not in log and "ERROR" not in log, log
    warnings = [line for line in log.splitlines() if line.startswith("WARNING")]
    assert 1 <= len(warnings) <= 2, log
    assert "accepting connections on 127.0.0.1:" in log  # and when it ended
