"""Reload and graceful stop while sessions are busy: no transaction fails.

A real ``smtpfilter serve`` process takes mail from 10 concurrent sessions (each sending one
message after another, as Postfix's scan transport does) while it is reloaded with SIGHUP
(valid and broken rule files) or stopped with SIGTERM. Outcomes per transaction:

- delivered: 250 to ".", and the message is at the sink;
- deferred before it began: 421 at connect or at MAIL, or the port already closed. Postfix
  keeps such a message and retries; nothing of it was accepted;
- failed: anything else (a 4xx/5xx or a dropped connection once MAIL was accepted). Must be 0.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

from tests.integration.conftest import start
from tests.support.client import Client
from tests.support.messages import message
from tests.support.sink import wait_until

SESSIONS = 10

RULES_A = """
rules:
  - {name: OLD_DATE, check: date, older_than: 30d, action: reject}
"""
RULES_B = """
rules:
  - {name: OLD_DATE, check: date, older_than: 60d, action: reject}
  - {name: NO_DATE, check: date, missing: true, action: reject}
"""
BROKEN = "rules:\n  - {name: OLD_DATE, check: date, older_than: soon, action: reject}\n"


async def session(port: int, number: int, stop: asyncio.Event, outcomes: Counter) -> None:
    try:
        client = await Client.connect(port)
    except OSError:
        outcomes["deferred"] += 1  # the listener is closed: Postfix would retry
        return
    try:
        if client.banner.code != 220:
            outcomes["deferred"] += 1
            return
        await client.ehlo()
        sent = 0
        while not stop.is_set():
            mail = await client.cmd(f"MAIL FROM:<s{number}@example.org>")
            if mail.code == 421:
                outcomes["deferred"] += 1  # shutting down: refused before it began
                return
            if mail.code != 250:
                outcomes[f"failed: MAIL {mail}"] += 1
                return
            rcpt = await client.cmd("RCPT TO:<rcpt@example.com>")
            if rcpt.code != 250:
                outcomes[f"failed: RCPT {rcpt}"] += 1
                return
            reply = await client.data(message(f"Subject: {number}-{sent}"))
            if reply.code != 250:
                outcomes[f"failed: DATA {reply}"] += 1
                return
            outcomes["delivered"] += 1
            sent += 1
        await client.cmd("QUIT")
    except (ConnectionError, asyncio.IncompleteReadError) as error:
        # Closed under us: a failure only if it happened inside a transaction. Between
        # transactions the server sends 421 first, which the MAIL branch above sees.
        outcomes[f"failed: connection {type(error).__name__}"] += 1
    finally:
        await client.close()


async def flowing(outcomes: Counter, more: int = SESSIONS) -> None:
    """Until ``more`` further messages were delivered: mail is flowing (on every session, at
    SESSIONS messages: each session sends one after another)."""
    target = outcomes["delivered"] + more
    await wait_until(lambda: outcomes["delivered"] >= target, timeout=30)


async def test_reloads_under_load_fail_no_transaction(service, sink):
    process = await start(service(rules=RULES_A))
    stop = asyncio.Event()
    outcomes: Counter = Counter()
    workers = [asyncio.create_task(session(process.port, n, stop, outcomes)) for n in range(SESSIONS)]
    reloads = 0
    for rules in (RULES_B, BROKEN, RULES_A, RULES_B):
        await flowing(outcomes)  # mail flows between reloads
        process.rules.write_text(rules)
        process.send_signal(signal.SIGHUP)
        reloads += 1
        await asyncio.to_thread(
            process.wait_log, r"reloaded: |reload failed: keeping", 20, reloads
        )
    await flowing(outcomes)
    stop.set()
    await asyncio.gather(*workers)
    print(f"\nreloads under load: {reloads} SIGHUPs (one broken file), outcomes {dict(outcomes)}")
    assert [k for k in outcomes if k.startswith("failed")] == []
    assert outcomes["delivered"] >= SESSIONS and outcomes["deferred"] == 0
    assert len(sink.messages) == outcomes["delivered"]
    assert "reload failed: keeping the previous configuration and rules" in process.log()


async def test_sigterm_under_load_fails_no_transaction(service, sink):
    process = await start(service(rules=RULES_A))
    stop = asyncio.Event()
    outcomes: Counter = Counter()
    workers = [asyncio.create_task(session(process.port, n, stop, outcomes)) for n in range(SESSIONS)]
    await flowing(outcomes, 2 * SESSIONS)  # mail flowing on every session
    process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(process.wait, 30)
    stop.set()
    await asyncio.gather(*workers)
    print(f"\nSIGTERM under load: outcomes {dict(outcomes)}, exit status {code}")
    assert code == 0
    assert [k for k in outcomes if k.startswith("failed")] == []
    assert outcomes["delivered"] >= SESSIONS
    assert outcomes["deferred"] == SESSIONS  # every session was told 421 between messages
    assert len(sink.messages) == outcomes["delivered"]
