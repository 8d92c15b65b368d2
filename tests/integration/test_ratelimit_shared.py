"""Two ``smtpfilter serve`` processes sharing one real redis-server enforce ONE limit together:
the 31st message in the window from one client is limited whichever process takes it, and
messages arriving at once at both processes pass exactly N (the reservation made by one
process counts for the other at once). What is asserted crossed the wire: the replies, and
the messages the recording sink (10026) received."""

from __future__ import annotations

import asyncio

from tests.integration.conftest import start
from tests.support.client import send_message
from tests.support.messages import message
from tests.support.redisserver import redis_server  # noqa: F401  (fixture)

RULES = """
rules:
  - name: CLIENT_RATE
    check: ratelimit
    key: client_ip
    rate: 30/1m
    action: tempfail
"""


async def two_filters(service, url):
    config = f"state: {{redis: '{url}'}}\n"
    first = await start(service(rules=RULES, config=config))
    second = await start(service(rules=RULES, config=config))
    return first, second


async def send(port: int, addr: str) -> int:
    reply = await send_message(port, message("Subject: hi"), xforward=(f"XFORWARD ADDR={addr}",))
    return reply.code


async def test_the_31st_is_limited_whichever_process_takes_it(service, sink, redis_server):  # noqa: F811
    a, b = await two_filters(service, redis_server.url)
    codes = [await send((a, b)[i % 2].port, "81.2.69.10") for i in range(30)]
    assert codes == [250] * 30
    assert await send(a.port, "81.2.69.10") == 451
    assert await send(b.port, "81.2.69.10") == 451
    assert await send(b.port, "81.2.69.11") == 250  # another client has its own count
    assert len(sink.messages) == 31
    a.wait_log(r"rules=CLIENT_RATE\(81\.2\.69\.10 31/30 per 1m\)")
    b.wait_log(r"rules=CLIENT_RATE\(81\.2\.69\.10 31/30 per 1m\)")


async def test_messages_at_once_on_both_processes_pass_exactly_n(service, sink, redis_server):  # noqa: F811
    a, b = await two_filters(service, redis_server.url)
    codes = await asyncio.gather(*(send((a, b)[i % 2].port, "81.2.69.10") for i in range(40)))
    assert sorted(codes) == [250] * 30 + [451] * 10
    assert len(sink.messages) == 30
