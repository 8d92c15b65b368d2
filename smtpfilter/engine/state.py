"""Rate-limit counters shared by the ratelimit rules: in this process's memory, or in Redis/Valkey.

The limiter (issue 17): ``rate: N/PERIOD`` means at most N counted messages in any PERIOD, so N
messages arriving at once all pass and the N+1st is limited; ``burst: B`` caps how many may come
at once, and the rest are spread evenly (one per PERIOD/N). It is an exact sliding log: each
counted message is one timestamp, kept for PERIOD. A message of weight w at ``now`` passes when

1. at most N - w entries are younger than PERIOD (an entry exactly PERIOD old is out), and
2. with a burst B: for every k > B - w, ``now - t(k) >= (k + w - B) * PERIOD/N``, where t(k) is
   the k-th most recent entry. That is GCRA's conformance rule (emission interval PERIOD/N,
   tolerance (B-1)*PERIOD/N) written over the log instead of a stored "theoretical arrival
   time", so removing an entry (a released reservation) undoes its effect on both rules.

Why not plain GCRA or a two-window counter: GCRA with burst N lets 2N-1 through in one PERIOD,
and GCRA tuned to never exceed N sustains only one message per PERIOD; the two-window counter
estimates and lets N+2 through (simulated on adversarial streams in the prototype's
experiments/algorithms.py, /work/proto/ratelimit/REPORT.md §3).

Counting is two-phase, because only messages that are otherwise accepted count:
``reserve`` checks and, when the message passes, adds a *pending* entry at once (it counts for
every other process from that moment, so two processes cannot both take the last slot: without
it 60 of 60 concurrent requests passed a limit of 30); ``confirm`` makes it final once the
message was delivered; ``release`` removes it when the message was refused, deferred, discarded
or quarantined. A pending entry that is neither confirmed nor released (the process died)
disappears after ``hold`` seconds.

Cost: every Redis call made in one event-loop turn (the ratelimit rules of one message, which
the pipeline starts together, and those of other messages judged at that moment) travels in one
script call (EVALSHA), so a message costs two round trips (reserve, then confirm or release)
whatever the number of rules; redis-py spends ~40 µs of Python per call, the reason to batch.

Time: the Redis store reads the Redis server's clock (``TIME`` inside the script), so hosts
with skewed clocks share one timeline; tests pass a ``clock`` instead and move it without
sleeping. The memory store uses ``time.monotonic`` unless given a clock.

Failure: every Redis call is bounded by ``state.timeout`` (connect included) and never retried
(redis-py's constructor defaults retry 10 times with backoff and a 5 s socket timeout: a dead
server would hold a message for a minute); after a failure Redis is not asked again for
``state.retry`` seconds, so a blackholed server costs one timeout per ``retry``, not one per
message. The caller decides what a failure means (the ratelimit check: skip the rule, or 451).

Exception tree::

    StateError              the store failed or did not answer within state.timeout
     +-- StateUnavailable   it failed less than state.retry ago: not asked (no new timeout)
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from smtpfilter.config.settings import StateConfig

__all__ = [
    "Entry",
    "Limit",
    "MemoryStore",
    "Outcome",
    "RedisStore",
    "StateError",
    "StateService",
    "StateUnavailable",
    "Ticket",
    "Usage",
    "format_period",
    "new_ticket",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class StateError(Exception):
    """The counter store failed or was too slow; the caller decides (fail open or 451)."""


class StateUnavailable(StateError):
    """The store failed recently; not asked again until its retry time (no new timeout)."""


# --- what a rule asks for ----------------------------------------------------------------------
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def format_period(seconds: float) -> str:
    """``60`` -> ``1m``, ``5400`` -> ``90m``, ``86400`` -> ``1d``: how a rule writes it."""
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class Limit:
    count: int  # N
    period: float  # seconds
    burst: int | None = None  # B, or None: all N may come at once

    def __post_init__(self) -> None:
        if self.count < 1 or self.period <= 0:
            raise ValueError("a rate needs a count >= 1 and a period > 0")
        if self.burst is not None and not 1 <= self.burst <= self.count:
            raise ValueError(f"burst must be between 1 and the rate's count ({self.count})")

    @property
    def interval(self) -> float:
        """PERIOD/N: the spacing of what comes after a burst."""
        return self.period / self.count

    @property
    def effective_burst(self) -> int:
        return self.count if self.burst is None else self.burst

    def describe(self) -> str:
        text = f"{self.count}/{format_period(self.period)}"
        return text if self.burst is None else f"{text} burst {self.burst}"


@dataclass(frozen=True, slots=True)
class Ticket:
    """One reservation: what confirm and release need. Made before the store is asked, so a
    reservation whose answer was lost (timeout, cancellation) can still be released."""

    key: str  # RULE:value
    token: str
    weight: int = 1

    def members(self) -> list[str]:
        if self.weight == 1:
            return [self.token]
        return [f"{self.token}.{i}" for i in range(self.weight)]


def new_ticket(key: str, weight: int = 1) -> Ticket:
    # 64 random bits: unique among the at most N entries of one key.
    return Ticket(key, secrets.token_hex(8), weight)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to ``reserve``."""

    allowed: bool
    count: int  # entries in the window with this message's (its would-be count when refused)
    retry_after: float  # seconds until the same request could pass; 0 when allowed, inf: never


@dataclass(frozen=True, slots=True)
class Entry:
    age: float  # seconds since it was counted (or reserved)
    pending: bool  # reserved, its message not yet delivered


@dataclass(frozen=True, slots=True)
class Usage:
    """What ``smtpfilter ratelimit show KEY`` prints: the key's entries, most recent first."""

    key: str
    entries: tuple[Entry, ...]

    @property
    def count(self) -> int:
        return len(self.entries)


class Store(Protocol):
    async def reserve(self, ticket: Ticket, limit: Limit) -> Outcome: ...

    async def confirm(self, tickets: Sequence[Ticket]) -> None: ...

    async def release(self, tickets: Sequence[Ticket]) -> None: ...

    async def show(self, key: str, period: float | None = None) -> Usage: ...

    async def reset(self, key: str) -> bool: ...

    async def close(self) -> None: ...


def _decide(
    scores_desc: Sequence[float], now: float, limit: Limit, weight: int
) -> tuple[bool, float]:
    """Rules 1 and 2 of the module docstring over the window's entries (most recent first):
    (allowed, retry_after). The retry time is a hint for logs and reply texts."""
    count = len(scores_desc)
    if weight > limit.count or weight > limit.effective_burst:
        return False, math.inf
    if count + weight > limit.count:
        # The (count + weight - N) oldest entries must leave the window first.
        oldest_needed = scores_desc[limit.count - weight]
        return False, oldest_needed + limit.period - now
    if limit.burst is not None:
        interval = limit.interval
        # Entries k <= B - w are free (B at once); the first violation refuses (as the script).
        for slots, score in enumerate(scores_desc[limit.burst - weight :], 1):
            wait = score + slots * interval - now
            if wait > 0:
                return False, wait
    return True, 0.0


# --- in memory ---------------------------------------------------------------------------------
@dataclass(slots=True)
class _Log:
    period: float
    entries: list[tuple[float, str]] = field(default_factory=list)  # ascending (time, member)
    pending: dict[str, float] = field(default_factory=dict)  # member -> deadline


class MemoryStore:
    """The counters in this process: exact for one process, multiplied by ``--workers``.

    Nothing here waits: the ``*_now`` methods do the work, the async ones are the Store
    interface around them."""

    SWEEP_EVERY = 1000  # reserves between sweeps of keys nobody asks about any more

    def __init__(self, *, hold: float = 600.0, clock: Clock = time.monotonic) -> None:
        self.hold = hold
        self.clock = clock
        self._logs: dict[str, _Log] = {}
        self._operations = 0

    def _prune(self, log_: _Log, now: float) -> None:
        stale = [m for m, deadline in log_.pending.items() if deadline <= now]
        if stale:
            gone = set(stale)
            for member in stale:
                del log_.pending[member]
            log_.entries = [e for e in log_.entries if e[1] not in gone]
        # An entry of age >= period is out of the window (the same test as the Lua script).
        cut = bisect.bisect_right(log_.entries, (now - log_.period, "\U0010ffff"))
        if cut:
            del log_.entries[:cut]

    def reserve_now(self, ticket: Ticket, limit: Limit) -> Outcome:
        now = self.clock()
        log_ = self._logs.get(ticket.key)
        if log_ is None:
            log_ = self._logs[ticket.key] = _Log(limit.period)
        log_.period = limit.period  # a reload may have changed the rule
        self._prune(log_, now)
        scores_desc = [score for score, _ in reversed(log_.entries)]
        allowed, retry = _decide(scores_desc, now, limit, ticket.weight)
        if allowed:
            for member in ticket.members():
                bisect.insort(log_.entries, (now, member))
                log_.pending[member] = now + self.hold
        self._operations += 1
        if self._operations % self.SWEEP_EVERY == 0:
            self._sweep(now)
        return Outcome(allowed, len(scores_desc) + ticket.weight, retry)

    def confirm_now(self, tickets: Sequence[Ticket]) -> None:
        for ticket in tickets:
            log_ = self._logs.get(ticket.key)
            if log_ is not None:
                for member in ticket.members():
                    log_.pending.pop(member, None)

    def release_now(self, tickets: Sequence[Ticket]) -> None:
        for ticket in tickets:
            log_ = self._logs.get(ticket.key)
            if log_ is None:
                continue
            members = set(ticket.members())
            for member in members:
                log_.pending.pop(member, None)
            log_.entries = [e for e in log_.entries if e[1] not in members]

    async def reserve(self, ticket: Ticket, limit: Limit) -> Outcome:
        return self.reserve_now(ticket, limit)

    async def confirm(self, tickets: Sequence[Ticket]) -> None:
        self.confirm_now(tickets)

    async def release(self, tickets: Sequence[Ticket]) -> None:
        self.release_now(tickets)

    async def show(self, key: str, period: float | None = None) -> Usage:
        now = self.clock()
        log_ = self._logs.get(key)
        if log_ is None:
            return Usage(key, ())
        self._prune(log_, now)
        return Usage(
            key, tuple(Entry(now - t, m in log_.pending) for t, m in reversed(log_.entries))
        )

    async def reset(self, key: str) -> bool:
        return self._logs.pop(key, None) is not None

    async def close(self) -> None:
        self._logs.clear()

    def _sweep(self, now: float) -> None:
        idle = [
            key
            for key, log_ in self._logs.items()
            if not log_.pending and (not log_.entries or now - log_.entries[-1][0] >= log_.period)
        ]
        for key in idle:
            del self._logs[key]

    def __len__(self) -> int:
        return len(self._logs)


# --- Redis / Valkey ------------------------------------------------------------------------------
# One script for every operation, so each is atomic. Calls made in the same event-loop turn go in
# ONE script call: one round trip, one EVALSHA. Request i uses KEYS[2i-1], the log (ZSET member
# -> time), and KEYS[2i], its pending reservations (ZSET member -> deadline); both share one
# {hash tag}. (Requests for different keys in one call need a single Redis or Sentinel, not a
# Cluster.) Numbers come back as strings: Redis turns a Lua number into an integer reply, and
# Lua prints numbers with 14 significant digits (100 µs at today's epoch), hence %.6f.
# ARGV: now ("" = Redis TIME), then per request: its argument count, then
#   reserve, period, count, burst (0 = none), hold, member...
#   confirm | release, member...
#   show, period (0 = do not prune)
LUA = r"""
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.6f', x) end

local function purge(klog, kpend, period)
  local stale = redis.call('ZRANGEBYSCORE', kpend, '-inf', fmt(now))
  for i = 1, #stale, 1000 do
    local chunk = {unpack(stale, i, math.min(i + 999, #stale))}
    redis.call('ZREM', klog, unpack(chunk))
    redis.call('ZREM', kpend, unpack(chunk))
  end
  if period > 0 then
    redis.call('ZREMRANGEBYSCORE', klog, '-inf', fmt(now - period))
  end
end

local function reserve(klog, kpend, a)
  local period, count, burst, hold = tonumber(a[2]), tonumber(a[3]), tonumber(a[4]), tonumber(a[5])
  local weight = #a - 5
  purge(klog, kpend, period)
  local n = redis.call('ZCARD', klog)
  local retry = 0
  if weight > count or (burst > 0 and weight > burst) then
    return {0, n + weight, 'inf'}
  end
  if n + weight > count then
    -- the (n + weight - count) oldest entries must leave the window first
    local e = redis.call('ZRANGE', klog, n + weight - count - 1, n + weight - count - 1, 'WITHSCORES')
    retry = tonumber(e[2]) + period - now
  end
  -- The burst rule scans the window (O(entries), hence MAX_BURST_COUNT in the check); skipped
  -- when the window already refuses, and it stops at the first violation.
  if retry <= 0 and burst > 0 and n + weight > burst then
    local interval = period / count
    local recent = redis.call('ZREVRANGE', klog, burst - weight, -1, 'WITHSCORES')
    for i = 1, #recent / 2 do
      -- entry k = burst - weight + i needs k + weight - burst = i intervals
      local wait = tonumber(recent[2 * i]) + i * interval - now
      if wait > 0 then
        retry = wait
        break
      end
    end
  end
  if retry > 0 then
    return {0, n + weight, fmt(retry)}
  end
  local log_args, pend_args = {}, {}
  for i = 6, #a do
    log_args[#log_args + 1] = fmt(now)
    log_args[#log_args + 1] = a[i]
    pend_args[#pend_args + 1] = fmt(now + hold)
    pend_args[#pend_args + 1] = a[i]
  end
  redis.call('ZADD', klog, unpack(log_args))
  redis.call('ZADD', kpend, unpack(pend_args))
  -- Keys vanish by themselves: the newest entry leaves the window after period seconds.
  redis.call('PEXPIRE', klog, math.ceil((period + hold) * 1000))
  redis.call('PEXPIRE', kpend, math.ceil(hold * 1000) + 1000)
  return {1, n + weight, '0'}
end

local results = {}
local pos = 2
for i = 1, #KEYS / 2 do
  local nargs = tonumber(ARGV[pos])
  local a = {unpack(ARGV, pos + 1, pos + nargs)}
  pos = pos + nargs + 1
  local klog, kpend = KEYS[2 * i - 1], KEYS[2 * i]
  local op = a[1]
  if op == 'reserve' then
    results[i] = reserve(klog, kpend, a)
  elseif op == 'confirm' then
    results[i] = redis.call('ZREM', kpend, unpack(a, 2))
  elseif op == 'release' then
    redis.call('ZREM', kpend, unpack(a, 2))
    results[i] = redis.call('ZREM', klog, unpack(a, 2))
  elseif op == 'show' then
    purge(klog, kpend, tonumber(a[2]))
    results[i] = {fmt(now), redis.call('ZRANGE', klog, 0, -1, 'WITHSCORES'), redis.call('ZRANGE', kpend, 0, -1)}
  else
    return redis.error_reply('unknown op ' .. tostring(op))
  end
end
return results
"""


class _Warner:
    """A store failure at WARNING once a minute, at DEBUG in between (issue 17)."""

    def __init__(self, every: float = 60.0, clock: Clock = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._last = -math.inf
        self.suppressed = 0

    def __call__(self, message: str, *args: object) -> None:
        now = self.clock()
        if now - self._last >= self.every:
            more = f" ({self.suppressed} more since the last warning)" if self.suppressed else ""
            log.warning(message + more, *args)
            self._last = now
            self.suppressed = 0
        else:
            self.suppressed += 1
            log.debug(message, *args)


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (TimeoutError, OSError, RedisError)


class RedisStore:
    """The counters in Redis or Valkey, shared by every worker and every MX host.

    redis-py's asyncio client (it speaks Redis, Valkey and Sentinel), set up against its traps
    (measured in the prototype, REPORT.md §2): our own connect and read timeouts and no retries
    (the constructor's defaults wait 3.5 s for a refused port and over 30 s for a hung server);
    a BlockingConnectionPool, which waits up to ``timeout`` for a free connection (the default
    pool raises MaxConnectionsError at once, which looked like "Redis is fast" with fail-open);
    ``Redis.from_pool``, which owns the pool and closes it. Cancelling a call is safe: redis-py
    drops a connection whose reply was not read (the 4.5.x CVE-2023-28858 fix).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        timeout: float = 0.5,
        retry: float = 2.0,
        hold: float = 600.0,
        prefix: str = "smtpfilter:rl:",
        clock: Clock | None = None,
        max_connections: int = 32,
        client: object | None = None,
    ) -> None:
        import redis.asyncio as redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.timeout = timeout
        self.retry = retry
        self.hold = hold
        self.prefix = prefix
        self.clock = clock  # None: the Redis server's TIME
        self.url = url
        if client is None:
            pool = redis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=timeout,
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
            client = redis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
        self.client = client
        self._script = client.register_script(LUA)  # type: ignore[attr-defined]
        self._down_until = -math.inf
        self.warn = _Warner()
        self._batch: list[tuple[str, list[object], asyncio.Future]] = []
        self._sending: set[asyncio.Task] = set()
        self._errors = _redis_errors()
        self.calls = 0  # script calls made (each carries one or more requests)
        self.errors = 0  # failed calls (metrics: smtpfilter_ratelimit_store_errors_total)
        self.skipped = 0  # requests not made because the store failed recently

    # key layout: prefix{RULE:value}:log and :pend -- one hash tag for both
    def _keys(self, key: str) -> list[str]:
        base = f"{self.prefix}{{{key}}}"
        return [f"{base}:log", f"{base}:pend"]

    def _now(self) -> str:
        return "" if self.clock is None else repr(self.clock())

    async def _call(self, key: str, args: list[object]) -> object:
        """One request; it joins the others made in this event-loop turn (one script call)."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._down_until:
            self.skipped += 1
            raise StateUnavailable(
                f"redis {self.url} failed less than {self.retry:g}s ago (state.retry)"
            )
        future: asyncio.Future = loop.create_future()
        self._batch.append((key, args, future))
        if len(self._batch) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[str, list[object], asyncio.Future]]) -> None:
        keys: list[str] = []
        args: list[object] = [self._now()]
        for key, request, _ in batch:
            keys += self._keys(key)
            args.append(len(request))
            args += request
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                results = await self._script(keys=keys, args=args)
        except self._errors as error:
            self.errors += 1
            self._down_until = loop.time() + self.retry
            if isinstance(error, TimeoutError):
                reason = f"no answer within {self.timeout:g}s (state.timeout)"
            else:
                reason = f"{type(error).__name__}: {error}"
            self.warn(
                "rate limits: redis %s: %s; not asked again for %gs (state.retry)",
                self.url, reason, self.retry,
            )
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(StateError(reason))
            return
        self.calls += 1
        for (_, _, future), result in zip(batch, results):
            if not future.done():  # its waiter may have been cancelled meanwhile
                future.set_result(result)

    async def reserve(self, ticket: Ticket, limit: Limit) -> Outcome:
        reply = await self._call(
            ticket.key,
            ["reserve", repr(limit.period), limit.count, limit.burst or 0, repr(self.hold),
             *ticket.members()],
        )
        allowed, count, retry = reply  # type: ignore[misc]
        return Outcome(bool(allowed), int(count), float(retry))

    async def _each(self, op: str, tickets: Sequence[Ticket]) -> list[object]:
        answers = await asyncio.gather(
            *(self._call(t.key, [op, *t.members()]) for t in tickets), return_exceptions=True
        )
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return answers

    async def confirm(self, tickets: Sequence[Ticket]) -> None:
        answers = await self._each("confirm", tickets)
        for ticket, confirmed in zip(tickets, answers):
            if confirmed != ticket.weight:
                # Its hold ran out before the message was delivered: it no longer counts.
                log.warning("rate limit %s: the reservation expired before its message was "
                            "delivered (state.hold %gs); not counted", ticket.key, self.hold)

    async def release(self, tickets: Sequence[Ticket]) -> None:
        # A reserve for these tickets may still be on its way (the message was cancelled while
        # it waited): let it arrive first, or the release would find nothing and the entry
        # would count until its hold ran out. Bounded: every send ends within ``timeout``.
        in_flight = list(self._sending)
        if in_flight:
            await asyncio.wait(in_flight)
        await self._each("release", tickets)

    async def show(self, key: str, period: float | None = None) -> Usage:
        reply = await self._call(key, ["show", repr(period or 0)])
        now_text, log_, pending = reply  # type: ignore[misc]
        now = float(now_text)
        waiting = set(pending)
        pairs = list(zip(log_[::2], log_[1::2]))
        return Usage(
            key,
            tuple(Entry(now - float(score), member in waiting) for member, score in reversed(pairs)),
        )

    async def reset(self, key: str) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                return bool(await self.client.delete(*self._keys(key)))  # type: ignore[attr-defined]
        except self._errors as error:
            raise StateError(f"redis {self.url}: {type(error).__name__}: {error}") from error

    async def close(self) -> None:
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        await self.client.aclose()  # type: ignore[attr-defined]


# --- the service the rules share -----------------------------------------------------------------
class StateService:
    """The counter store of one process (RuleEnv.state), built from ``state:`` on first use.

    Kept across reloads, like the DNS service: counters survive a SIGHUP (``state`` itself
    takes a restart). A process without ratelimit rules never builds a store, nor imports
    redis-py.
    """

    def __init__(
        self, config: StateConfig | None = None, *, clock: Clock | None = None,
        private: bool = False,
    ) -> None:
        """``clock``: seconds, for tests (default: Redis TIME, or time.monotonic in memory);
        ``private``: count in memory whatever ``state.redis`` says (``smtpfilter test`` and
        ``scan`` replay stored mail and must not touch the live counters)."""
        self.config = config or StateConfig()
        self.clock = clock
        self.private = private
        self._store: MemoryStore | RedisStore | None = None
        self._settling: set[asyncio.Task] = set()
        self.unchecked = 0  # rule checks skipped because the store failed (metrics)

    @property
    def shared(self) -> bool:
        """True when the counters are in Redis: one count for every process and host."""
        return self.config.redis is not None and not self.private

    @property
    def store(self) -> MemoryStore | RedisStore:
        if self._store is None:
            config = self.config
            if self.shared:
                assert config.redis is not None
                self._store = RedisStore(
                    config.redis, timeout=config.timeout, retry=config.retry, hold=config.hold,
                    prefix=config.prefix, clock=self.clock, max_connections=config.connections,
                )
            else:
                self._store = MemoryStore(hold=config.hold, clock=self.clock or time.monotonic)
        return self._store

    @property
    def errors(self) -> int:
        """Failed calls to the store since start (metrics)."""
        store = self._store
        return store.errors if isinstance(store, RedisStore) else 0

    async def reserve(self, ticket: Ticket, limit: Limit) -> Outcome:
        return await self.store.reserve(ticket, limit)

    def settle(self, tickets: Sequence[Ticket], delivered: bool, *, certain: bool = True) -> None:
        """Count these reservations (``delivered``) or give them back, without waiting.

        In memory that is done at once; in Redis it is a background task (the reply to Postfix
        need not wait for it: a pending reservation already counts for everyone), which
        :meth:`aclose` waits for. ``certain=False``: whether the store took them is unknown
        (its answer was lost): they are released whatever became of the message.
        """
        if not tickets:
            return
        delivered = delivered and certain
        store = self.store
        if isinstance(store, MemoryStore):
            (store.confirm_now if delivered else store.release_now)(tickets)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - every front door settles inside its loop
            log.error("rate limits: settled outside the event loop; the reservations expire "
                      "after state.hold instead")
            return
        task = loop.create_task(self._settle(store, list(tickets), delivered))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    @staticmethod
    async def _settle(store: RedisStore, tickets: list[Ticket], delivered: bool) -> None:
        try:
            if delivered:
                await store.confirm(tickets)
            else:
                await store.release(tickets)
        except StateError as error:
            # Confirm lost: the pending entries expire after ``hold`` (not counted). Release
            # lost: they count until then (conservative). The store warned (once a minute).
            log.debug("rate limits: %s of %d reservation(s) failed: %s",
                      "confirm" if delivered else "release", len(tickets), error)

    async def show(self, key: str, period: float | None = None) -> Usage:
        return await self.store.show(key, period)

    async def reset(self, key: str) -> bool:
        return await self.store.reset(key)

    async def aclose(self) -> None:
        """Wait for the settling in flight (each bounded by state.timeout), then close."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        store, self._store = self._store, None
        if store is not None:
            await store.close()
