"""Prometheus metrics: ``GET /metrics`` on a loopback port, off unless ``metrics.listen`` is set.

What an admin graphs and alerts on: messages by outcome and by rule, what observe-only rules
would have done, the reply codes Postfix got (a rise in 451 means mail is piling up in Postfix's
queue), a latency histogram from "." to our reply (Postfix gives up after
smtp_data_done_timeout, 600 s), failures talking to 10026, and whether each DNS list is usable
(a list disabled by its health probe counts as "not listed": mail flows, filtering weakens).

The metrics are ``prometheus_client``'s: its data model, its exposition format and, with
``serve --workers N``, its multiprocess mode, which sums what every worker counted (each writes
its values to memory-mapped files in a private directory the supervisor made, see
service/workers.py) so that ONE port reports the totals. Gauges say how they combine across
workers: sessions and idle 10026 connections add up (``livesum``), the rule count is the
largest (``livemax``), a DNS list is up only where every worker has it up (``livemin``), the
start time is the earliest (``min``).

This module is imported only when metrics are configured: prometheus_client costs about 2 MB
of memory and 40 ms at import, which a filter without metrics does not pay (nor any
per-message work: Runtime.metrics is then None). Counters and the histogram are updated as
messages are settled; gauges that follow live state (idle 10026 connections, DNS list health)
are sampled at each scrape and every few seconds (``sample``), so that in multiprocess mode the
other workers' values are at most that old.

The HTTP side is a small asyncio responder on the filter's own event loop, not the library's
threaded server: it reads at most one small request per connection, with a deadline, and
closes; it is loopback-only and must never cost the mail path anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from smtpfilter.core.verdict import Decision

__all__ = ["LATENCY_BUCKETS", "Metrics", "MetricsServer", "multiprocess_dir"]

log = logging.getLogger(__name__)

# Seconds from the final "." to our reply: milliseconds for a clean message, seconds when DNS
# lists are slow, tens of seconds when 10026 is; Postfix's smtp_data_done_timeout is 600 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# The text format generate_latest writes for names like ours (no UTF-8 names, no escaping).
_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_REQUEST_LIMIT = 8192  # bytes of request head read at most
_REQUEST_DEADLINE = 5.0

# No "_created" series beside each counter: the exposition keeps the series it always had.
disable_created_metrics()


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode, when the supervisor of
    ``serve --workers N`` set one up (service/workers.py); None in a single process."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class _GoStyleBuckets:
    """A collector that passes another's metrics on with histogram ``le`` labels written as
    before (and as the Go client writes them): ``le="60"``, not prometheus_client's ``60.0``.
    Prometheus reads both as the same bound; dashboards that select ``le="60"`` keep working."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def collect(self) -> Iterator[Any]:
        for family in self.inner.collect():
            if family.type == "histogram":
                family.samples = [
                    sample._replace(labels={**sample.labels, "le": _go_float(sample.labels["le"])})
                    if "le" in sample.labels
                    else sample
                    for sample in family.samples
                ]
            yield family


def _go_float(text: str) -> str:
    return text if text.startswith(("+", "-")) or text == "NaN" else f"{float(text):g}"


class Metrics:
    """The filter's metric families. ``message`` and ``count`` are what the daemon calls;
    ``sample`` reads the live state of the Runtime it was made for."""

    def __init__(
        self, runtime: Any, *, started_at: float | None = None, frontdoor: str = "smtp"
    ) -> None:
        self.runtime = runtime
        # Per-message families carry the front door that took the message (smtp: content
        # filter or before-queue proxy, milter), so that one dashboard over both daemons can
        # tell them apart and add them up.
        self.frontdoor = frontdoor
        self.directory = multiprocess_dir()
        # In multiprocess mode the values live in files: the objects are registered nowhere and
        # the exposition reads every worker's files. In a single process, one registry.
        own = None if self.directory else CollectorRegistry(auto_describe=True)
        self.messages = Counter(
            "smtpfilter_messages", "Messages judged after the final dot, by outcome (error: "
            "ours, answered 451).", ["action", "frontdoor"], registry=own)
        self.replies = Counter(
            "smtpfilter_replies", "Replies to Postfix's final dot, by SMTP code.",
            ["code", "frontdoor"], registry=own)
        self.findings = Counter(
            "smtpfilter_rule_findings", "Messages on which a rule that ran made a finding.",
            ["rule", "finding"], registry=own)
        self.decisions = Counter(
            "smtpfilter_rule_decisions", "Messages whose outcome a rule forced or tagged.",
            ["rule", "action"], registry=own)
        self.would = Counter(
            "smtpfilter_would", "Messages an observe-only rule (mode: warn) or dry_run would "
            "have treated otherwise.", ["action", "rule"], registry=own)
        self.latency = Histogram(
            "smtpfilter_message_seconds", "From the final dot to our reply.", ["frontdoor"],
            buckets=LATENCY_BUCKETS, registry=own)
        self._latency = self.latency.labels(frontdoor)
        self.downstream_errors = Counter(
            "smtpfilter_downstream_errors", "Failures reaching or talking to the after-filter "
            "smtpd (10026); each one is a 451.", registry=own)
        refused = Counter(
            "smtpfilter_refused_connections", "Connections refused at connect.", ["reason"],
            registry=own)
        idle_closed = Counter(
            "smtpfilter_idle_sessions_closed", "Idle sessions closed at limits.sessions to serve "
            "a new connection.", registry=own)
        reload_failures = Counter(
            "smtpfilter_reload_failures", "Reloads (SIGHUP) that kept the old rules because of "
            "a problem.", registry=own)
        self.sessions = Gauge(
            "smtpfilter_sessions", "SMTP sessions open now.", registry=own,
            multiprocess_mode="livesum")
        self.rules = Gauge(
            "smtpfilter_rules", "Rules loaded.", registry=own, multiprocess_mode="livemax")
        self.idle = Gauge(
            "smtpfilter_downstream_idle_connections", "Idle connections to 10026 kept for "
            "reuse.", registry=own, multiprocess_mode="livesum")
        self.zone_up = Gauge(
            "smtpfilter_dns_zone_up", "1 when a DNS list is in use, 0 when its health probe "
            "disabled it.", ["zone"], registry=own, multiprocess_mode="livemin")
        # Rate limits whose counter store (state.redis) failed: the rule was skipped (fail
        # open) or the message got 451 (on_error: tempfail). Read from the store at sample().
        self.ratelimit_unchecked = Counter(
            "smtpfilter_ratelimit_unchecked", "Rate-limit rule checks not made because the "
            "counter store failed or was left alone after a failure (state.retry).",
            registry=own)
        self.ratelimit_errors = Counter(
            "smtpfilter_ratelimit_store_errors", "Calls to the rate-limit counter store "
            "(Redis) that failed or timed out (state.timeout).", registry=own)
        self._ratelimit_seen = (0, 0)
        start_time = Gauge(
            "smtpfilter_start_time_seconds", "When this process started (Unix time).",
            registry=own, multiprocess_mode="min")
        start_time.set(time.time() if started_at is None else started_at)
        # Runtime.count() keys → the counter each one feeds; the others (delivered, rejected...)
        # are for systemd's STATUS only.
        self._counted = {
            "downstream_errors": self.downstream_errors,
            "refused_clients": refused.labels("not_allowed"),
            "refused_busy": refused.labels("busy"),
            "idle_closed": idle_closed,
            "reload_failures": reload_failures,
        }
        self._actions: dict[str, Any] = {}  # "action_reject" → its child, resolved once
        registry = CollectorRegistry(auto_describe=True)
        source = MultiProcessCollector(None, self.directory) if self.directory else own
        registry.register(_GoStyleBuckets(source))
        self.registry = registry
        self.sample()

    # --- what the daemon calls -----------------------------------------------------------------
    def count(self, key: str) -> None:
        counter = self._counted.get(key)
        if counter is not None:
            counter.inc()
        elif key.startswith("action_"):
            child = self._actions.get(key)
            if child is None:
                child = self._actions[key] = self.messages.labels(key[7:], self.frontdoor)
            child.inc()

    def message(self, decision: Decision | None, reply: str, elapsed: float) -> None:
        code = reply[:3] if reply[:3].isdigit() else "none"
        self.replies.labels(code, self.frontdoor).inc()
        self._latency.observe(elapsed)
        if decision is None:
            return
        for verdict in decision.verdicts:
            self.findings.labels(verdict.rule, verdict.finding.code).inc()
        if decision.rule:
            self.decisions.labels(decision.rule, decision.action.value).inc()
        if decision.intended is not None and decision.intended is not decision.action:
            self.would.labels(decision.intended.value, decision.intended_rule or "").inc()

    def sample(self) -> None:
        """Gauges from live state: sessions, rules, idle 10026 connections, DNS list health."""
        runtime = self.runtime
        self.sessions.set(runtime.sessions)
        self.rules.set(len(runtime.ruleset))
        self.idle.set(runtime.pool.idle)
        dns = runtime.ruleset.env.dns
        for zone in dns.watched().values():
            self.zone_up.labels(zone.shown).set(1 if dns.health.usable(zone.name) else 0)
        state = runtime.ruleset.env.state
        unchecked, errors = state.unchecked, state.errors
        seen_unchecked, seen_errors = self._ratelimit_seen
        if unchecked > seen_unchecked:
            self.ratelimit_unchecked.inc(unchecked - seen_unchecked)
        if errors > seen_errors:
            self.ratelimit_errors.inc(errors - seen_errors)
        self._ratelimit_seen = (max(unchecked, seen_unchecked), max(errors, seen_errors))

    def render(self) -> bytes:
        """The exposition, with this process's gauges sampled now."""
        self.sample()
        return generate_latest(self.registry)


# --- the HTTP side ---------------------------------------------------------------------------
class MetricsServer:
    """``GET /metrics`` over HTTP/1.x, one request per connection."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=_REQUEST_LIMIT
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_DEADLINE)
            status, body = self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            status, body = "400 Bad Request", b"bad request\n"
        except Exception:
            log.exception("metrics: internal error")
            status, body = "500 Internal Server Error", b"internal error\n"
        response = (
            f"HTTP/1.1 {status}\r\nContent-Type: {_CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + (b"" if head.startswith(b"HEAD ") else body)
        try:
            writer.write(response)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    def _answer(self, head: bytes) -> tuple[str, bytes]:
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return "400 Bad Request", b"bad request\n"
        method, target = parts[0], parts[1]
        if target.split("?", 1)[0] != "/metrics":
            return "404 Not Found", b"try /metrics\n"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"GET only\n"
        return "200 OK", self.metrics.render()
