"""Clients that hang up mid-dialogue, against a real Postfix 10026: no message pays for it.

The adversarial run of issue 10 found it with exactly this load: 300 clients that send EHLO,
XFORWARD and MAIL and hang up within 0-3 ms (a Postfix smtp process killed or timing out does
that), among ordinary transactions. A 10026 connection pooled with MAIL's reply still on its
way shifted the next session by one reply, and Postfix's smtpd answered its RCPT "503 5.5.1
Error: nested MAIL command": 29 of 1,000 messages bounced. Here the filter talks to the private
instance's real reinject smtpd (master.cf.example), and every ordinary message must be queued
and reach the final destination.
"""

from __future__ import annotations

import asyncio
import random
import re

import pytest

from tests.postfix.conftest import FILTERED_DOMAIN
from tests.support.client import Client
from tests.support.messages import message
from tests.support.service import poll

pytestmark = pytest.mark.postfix

HANGUPS = 300
ORDINARY = 100
XFORWARD = (
    "XFORWARD NAME=mx.example.net ADDR=192.0.2.7 PORT=4711",
    "XFORWARD PROTO=ESMTP HELO=mx.example.net IDENT=4F2B1 SOURCE=REMOTE",
)


async def _hang_up(port: int, rng: random.Random) -> None:
    client = await Client.connect(port)
    try:
        await client.ehlo("killed.example.net")
        client.send("".join(line + "\r\n" for line in XFORWARD) + "MAIL FROM:<gone@example.org>\r\n")
        await asyncio.sleep(rng.random() * 0.003)  # the load's own shape: hang up within 0-3 ms
    finally:
        client.abort()


async def _ordinary(port: int, number: int) -> tuple[str, object]:
    message_id = f"<hangup-{number}@sender.test>"
    client = await Client.connect(port)
    try:
        await client.ehlo("postfix.example.test")
        for line in XFORWARD:
            assert (await client.cmd(line)).code == 250
        replies = [await client.cmd("MAIL FROM:<sender@sender.test>")]
        replies.append(await client.cmd(f"RCPT TO:<rcpt@{FILTERED_DOMAIN}>"))
        replies.append(await client.data(message(f"Message-ID: {message_id}", f"Subject: n{number}")))
        await client.cmd("QUIT")
    finally:
        await client.close()
    return message_id, replies


async def test_hangups_at_mail_never_shift_another_transaction(mail_system):
    system = mail_system("after-queue")
    port = system.ports.filter
    rng = random.Random(7)
    jobs = [_hang_up(port, rng) for _ in range(HANGUPS)] + [_ordinary(port, n) for n in range(ORDINARY)]
    rng.shuffle(jobs)
    limit = asyncio.Semaphore(40)

    async def bounded(job):
        async with limit:
            return await job

    results = [r for r in await asyncio.gather(*(bounded(j) for j in jobs)) if r is not None]

    assert len(results) == ORDINARY
    bad = [(mid, [str(r) for r in replies]) for mid, replies in results
           if [r.code for r in replies] != [250, 250, 250]]
    assert bad == []
    assert all(re.match(r"2\.0\.0 Ok: queued as \w+", replies[-1].text) for _, replies in results)

    def arrived() -> bool:
        # Raw dump files (one may be half written): their Message-IDs.
        found = set()
        for path in system.destination.dump_dir.iterdir():
            found.update(m.decode() for m in re.findall(rb"(?mi)^Message-Id: (<[^>]+>)", path.read_bytes()))
        return {mid for mid, _ in results} <= found

    poll(arrived, 60, "every ordinary message at the final destination")
