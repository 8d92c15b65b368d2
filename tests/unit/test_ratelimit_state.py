"""engine/state.py: the limiter's semantics, the same for the memory and the Redis store.

Time is a FakeClock both stores read (the Redis script takes ``now`` from the caller when a
clock is given), so the window slides without sleeping. The oracle for "at most N in any
PERIOD" and "at most B at once" is a brute-force count over the admitted timestamps, written
independently of the limiter; the memory store is the differential reference for the Lua one.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter

import pytest

from smtpfilter.config.settings import StateConfig
from smtpfilter.engine.state import Limit, MemoryStore, RedisStore, StateService, new_ticket
from tests.support.redisserver import redis_server  # noqa: F401  (fixture)


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now = round(self.now + seconds, 6)


@pytest.fixture(params=["memory", "redis"])
async def make_store(request):
    stores = []

    def make(clock: FakeClock, hold: float = 600.0):
        if request.param == "memory":
            store = MemoryStore(clock=clock, hold=hold)
        else:
            server = request.getfixturevalue("redis_server")
            store = RedisStore(server.url, clock=clock, hold=hold)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


async def admit(store, key, limit, weight=1):
    ticket = new_ticket(key, weight)
    outcome = await store.reserve(ticket, limit)
    if outcome.allowed:
        await store.confirm([ticket])
    return outcome


async def test_n_at_once_pass_and_the_next_is_limited(make_store):
    clock = FakeClock()
    store = make_store(clock)
    limit = Limit(30, 60.0)
    outcomes = [await admit(store, "CLIENT_RATE:81.2.69.10", limit) for _ in range(31)]
    assert [o.allowed for o in outcomes] == [True] * 30 + [False]
    assert outcomes[-1].count == 31  # "31/30" in the finding
    assert outcomes[-1].retry_after == pytest.approx(60.0)
    assert (await admit(store, "CLIENT_RATE:81.2.69.11", limit)).allowed  # keys are independent


async def test_the_window_slides(make_store):
    clock = FakeClock()
    store = make_store(clock)
    limit = Limit(3, 60.0)
    for _ in range(3):
        assert (await admit(store, "k", limit)).allowed
        clock.advance(10)
    assert not (await admit(store, "k", limit)).allowed  # t=30: entries at 0, 10, 20
    clock.advance(29.999)  # t=59.999: the first is 59.999 s old, still in
    refused = await admit(store, "k", limit)
    assert not refused.allowed and refused.retry_after == pytest.approx(0.001, abs=1e-5)
    clock.advance(0.001)  # t=60: the first is exactly PERIOD old: out
    assert (await admit(store, "k", limit)).allowed
    assert not (await admit(store, "k", limit)).allowed


async def test_burst_then_spread_evenly(make_store):
    clock = FakeClock()
    store = make_store(clock)
    limit = Limit(10, 100.0, burst=3)  # 3 at once, then one per 10 s, at most 10 per 100 s
    assert [(await admit(store, "k", limit)).allowed for _ in range(5)] == [True] * 3 + [False] * 2
    clock.advance(9.9)
    assert not (await admit(store, "k", limit)).allowed
    clock.advance(0.1)
    assert (await admit(store, "k", limit)).allowed
    assert not (await admit(store, "k", limit)).allowed


async def test_release_gives_the_slot_back_and_confirm_keeps_it(make_store):
    clock = FakeClock()
    store = make_store(clock)
    limit = Limit(2, 60.0)
    first, second = new_ticket("k"), new_ticket("k")
    assert (await store.reserve(first, limit)).allowed and (await store.reserve(second, limit)).allowed
    # both pending: they already count for everyone else
    assert not (await store.reserve(new_ticket("k"), limit)).allowed
    await store.release([second])  # that message was rejected by another rule
    await store.confirm([first])
    assert (await store.reserve(new_ticket("k"), limit)).allowed
    usage = await store.show("k", 60.0)
    assert sorted(e.pending for e in usage.entries) == [False, True]  # same time: any order


async def test_a_reservation_never_settled_expires_after_hold(make_store):
    clock = FakeClock()
    store = make_store(clock, hold=30.0)
    limit = Limit(1, 3600.0)
    assert (await store.reserve(new_ticket("k"), limit)).allowed  # the process "dies" here
    clock.advance(29.9)
    assert not (await store.reserve(new_ticket("k"), limit)).allowed
    clock.advance(0.1)
    assert (await store.reserve(new_ticket("k"), limit)).allowed


async def test_weight_counts_each_recipient(make_store):
    clock = FakeClock()
    store = make_store(clock)
    limit = Limit(5, 60.0)
    assert (await admit(store, "RCPT_DOMAIN:example.org", limit, weight=3)).allowed
    refused = await admit(store, "RCPT_DOMAIN:example.org", limit, weight=3)
    assert not refused.allowed and refused.count == 6
    assert (await admit(store, "RCPT_DOMAIN:example.org", limit, weight=2)).allowed
    never = await store.reserve(new_ticket("other", 6), limit)
    assert not never.allowed and math.isinf(never.retry_after)


async def test_show_and_reset(make_store):
    clock = FakeClock()
    store = make_store(clock)
    limit = Limit(5, 60.0)
    await admit(store, "k", limit)
    clock.advance(5)
    await store.reserve(new_ticket("k"), limit)
    usage = await store.show("k", 60.0)
    assert [(round(e.age, 3), e.pending) for e in usage.entries] == [(0.0, True), (5.0, False)]
    assert await store.reset("k")
    assert (await store.show("k", 60.0)).count == 0


# --- the oracle -------------------------------------------------------------------------------
def max_in_window(times: list[float], period: float) -> int:
    times = sorted(times)
    return max((i - bisect.bisect_right(times, t - period) + 1 for i, t in enumerate(times)), default=0)


def conforms_to_burst(times: list[float], limit: Limit) -> bool:
    """Any k+1 admitted within a window span at least (k+1-B)*PERIOD/N (GCRA spacing)."""
    times = sorted(times)
    for j in range(len(times)):
        for i in range(j):
            if times[j] - times[i] >= limit.period:
                continue
            n = j - i + 1
            if times[j] - times[i] < (n - limit.effective_burst) * limit.interval - 1e-6:
                return False
    return True


@pytest.mark.parametrize("limit", [Limit(5, 60.0), Limit(8, 60.0, burst=3)], ids=str)
async def test_random_traffic_never_exceeds_the_limit(make_store, limit):
    rnd = random.Random(17)
    clock = FakeClock()
    store = make_store(clock, hold=5.0)
    admitted: list[float] = []
    reference = MemoryStore(clock=clock, hold=5.0)  # differential: both stores agree
    for _ in range(400):
        clock.advance(round(rnd.expovariate(4 * limit.count / limit.period), 3))
        for _ in range(rnd.choice([1, 1, 1, 4])):
            ticket = new_ticket("k")
            outcome = await store.reserve(ticket, limit)
            assert outcome.allowed == (await reference.reserve(ticket, limit)).allowed
            if outcome.allowed:
                if rnd.random() < 0.3:  # refused by another rule: not counted
                    await store.release([ticket])
                    await reference.release([ticket])
                else:
                    await store.confirm([ticket])
                    await reference.confirm([ticket])
                    admitted.append(clock.now)
    assert max_in_window(admitted, limit.period) == limit.count  # reached, never exceeded
    assert max(Counter(admitted).values()) <= limit.effective_burst
    assert conforms_to_burst(admitted, limit)


async def test_redis_time_is_the_default_clock(redis_server):  # noqa: F811
    """Without a clock the script reads Redis TIME: hosts with skewed clocks share one timeline."""
    import redis.asyncio as redis

    store = RedisStore(redis_server.url)
    probe = redis.Redis.from_url(redis_server.url)
    try:
        await store.reserve(new_ticket("k"), Limit(5, 60.0))
        seconds, micros = await probe.time()
        [(_, score)] = await probe.zrange("smtpfilter:rl:{k}:log", 0, -1, withscores=True)
        assert 0 <= seconds + micros / 1e6 - score < 1.0
    finally:
        await store.close()
        await probe.aclose()


async def test_flushed_script_cache_is_reloaded(redis_server):  # noqa: F811
    import redis.asyncio as redis

    store = RedisStore(redis_server.url)
    probe = redis.Redis.from_url(redis_server.url)
    try:
        assert (await store.reserve(new_ticket("k"), Limit(5, 60.0))).allowed
        await probe.script_flush()  # what a Redis restart or failover does
        assert (await store.reserve(new_ticket("k"), Limit(5, 60.0))).allowed  # NOSCRIPT -> LOAD
        assert store.errors == 0
    finally:
        await store.close()
        await probe.aclose()


async def test_calls_of_one_loop_turn_share_one_script_call(redis_server):  # noqa: F811
    """Two rules of one message (and other messages judged meanwhile): one round trip."""
    import asyncio

    store = RedisStore(redis_server.url)
    try:
        limit = Limit(5, 60.0)
        await asyncio.gather(*(store.reserve(new_ticket(f"k{i}"), limit) for i in range(10)))
        assert store.calls == 1
    finally:
        await store.close()


async def test_memory_forgets_idle_keys():
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    limit = Limit(5, 60.0)
    for i in range(MemoryStore.SWEEP_EVERY - 1):
        await admit(store, f"k{i}", limit)
    clock.advance(60)
    await admit(store, "last", limit)  # the 1000th reserve sweeps
    assert len(store) == 1


async def test_the_service_builds_no_store_until_asked():
    service = StateService(StateConfig(redis="redis://127.0.0.1:9/0"))
    assert service.shared and service._store is None
    assert not StateService(StateConfig(redis="redis://127.0.0.1:9/0"), private=True).shared
    await service.aclose()
