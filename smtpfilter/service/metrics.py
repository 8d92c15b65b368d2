"""Prometheus metrics: ``GET /metrics`` on a loopback port, off unless ``metrics.listen`` is set.

What an admin graphs and alerts on: messages by outcome and by rule, what observe-only rules
would have done, the reply codes Postfix got (a rise in 451 means mail is piling up in Postfix's
queue), a latency histogram from "." to our reply (Postfix gives up after
smtp_data_done_timeout, 600 s), failures talking to 10026, and whether each DNS list is usable
(a list disabled by its health probe counts as "not listed": mail flows, filtering weakens).

The text exposition format (version 0.0.4) is written here and served by a small asyncio
responder on the filter's own event loop. The ``prometheus_client`` library would bring a second
registry to keep in step with the counters the handler already keeps, and its HTTP server runs
in a thread; a hundred lines of stdlib do the job with no new dependency. The responder reads at
most one small request per connection, with a deadline, and closes: it is loopback-only and
must never cost the mail path anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from smtpfilter.core.verdict import Decision

Runtime = Any  # service.runtime.Runtime, which imports this module

__all__ = ["LATENCY_BUCKETS", "Metrics", "MetricsServer", "render"]

log = logging.getLogger(__name__)

# Seconds from the final "." to our reply: milliseconds for a clean message, seconds when DNS
# lists are slow, tens of seconds when 10026 is; Postfix's smtp_data_done_timeout is 600 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_REQUEST_LIMIT = 8192  # bytes of request head read at most
_REQUEST_DEADLINE = 5.0


@dataclass
class Metrics:
    """Per-message tallies the handler feeds; everything else is read from Runtime at scrape."""

    replies: Counter = field(default_factory=Counter)  # reply code → messages
    findings: Counter = field(default_factory=Counter)  # (rule, finding) → messages
    decisions: Counter = field(default_factory=Counter)  # (rule, action) → messages
    would: Counter = field(default_factory=Counter)  # (action, rule) → messages, observe-only
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_count: int = 0
    latency_sum: float = 0.0

    def count(self, key: str) -> None:
        """Counters are read from Runtime.counters at scrape time."""

    def message(self, decision: Decision | None, reply: str, elapsed: float) -> None:
        code = reply[:3] if reply[:3].isdigit() else "none"
        self.replies[code] += 1
        for index, bound in enumerate(LATENCY_BUCKETS):
            if elapsed <= bound:
                self.latency_buckets[index] += 1
        self.latency_count += 1
        self.latency_sum += elapsed
        if decision is None:
            return
        for verdict in decision.verdicts:
            self.findings[(verdict.rule, verdict.finding.code)] += 1
        if decision.rule:
            self.decisions[(decision.rule, decision.action.value)] += 1
        if decision.intended is not None and decision.intended is not decision.action:
            self.would[(decision.intended.value, decision.intended_rule or "")] += 1


# --- exposition ------------------------------------------------------------------------------
def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_label(str(v))}"' for k, v in labels.items()) + "}"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict[str, str], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(**labels)} {_number(value)}")


def _number(value: float) -> str:
    """Exact: a counter past a million must not turn into 1e+06, a timestamp into 1.70963e+09."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def render(runtime: "Runtime", *, started_at: float) -> str:
    """The whole exposition, read from live state at the moment of the scrape."""
    m = runtime.metrics
    assert m is not None
    counters = runtime.counters
    w = _Writer()
    w.family("smtpfilter_messages_total", "counter",
             "Messages judged after the final dot, by outcome (error: ours, answered 451).",
             [({"action": key[7:]}, value) for key, value in sorted(counters.items())
              if key.startswith("action_")])
    w.family("smtpfilter_replies_total", "counter",
             "Replies to Postfix's final dot, by SMTP code.",
             [({"code": code}, value) for code, value in sorted(m.replies.items())])
    w.family("smtpfilter_rule_findings_total", "counter",
             "Messages on which a rule that ran made a finding.",
             [({"rule": r, "finding": f}, v) for (r, f), v in sorted(m.findings.items())])
    w.family("smtpfilter_rule_decisions_total", "counter",
             "Messages whose outcome a rule forced or tagged.",
             [({"rule": r, "action": a}, v) for (r, a), v in sorted(m.decisions.items())])
    w.family("smtpfilter_would_total", "counter",
             "Messages an observe-only rule (mode: warn) or dry_run would have treated otherwise.",
             [({"action": a, "rule": r}, v) for (a, r), v in sorted(m.would.items())])
    w.lines.append("# HELP smtpfilter_message_seconds From the final dot to our reply.")
    w.lines.append("# TYPE smtpfilter_message_seconds histogram")
    for bound, count in zip(LATENCY_BUCKETS, m.latency_buckets):
        w.lines.append(f'smtpfilter_message_seconds_bucket{{le="{bound:g}"}} {count}')
    w.lines.append(f'smtpfilter_message_seconds_bucket{{le="+Inf"}} {m.latency_count}')
    w.lines.append(f"smtpfilter_message_seconds_sum {m.latency_sum:.6f}")
    w.lines.append(f"smtpfilter_message_seconds_count {m.latency_count}")
    w.family("smtpfilter_downstream_errors_total", "counter",
             "Failures reaching or talking to the after-filter smtpd (10026); each one is a 451.",
             [({}, counters.get("downstream_errors", 0))])
    w.family("smtpfilter_refused_connections_total", "counter",
             "Connections refused at connect.",
             [({"reason": "not_allowed"}, counters.get("refused_clients", 0)),
              ({"reason": "busy"}, counters.get("refused_busy", 0))])
    w.family("smtpfilter_idle_sessions_closed_total", "counter",
             "Idle sessions closed at limits.sessions to serve a new connection.",
             [({}, counters.get("idle_closed", 0))])
    w.family("smtpfilter_reload_failures_total", "counter",
             "Reloads (SIGHUP) that kept the old rules because of a problem.",
             [({}, counters.get("reload_failures", 0))])
    w.family("smtpfilter_sessions", "gauge", "SMTP sessions open now.",
             [({}, runtime.sessions)])
    w.family("smtpfilter_rules", "gauge", "Rules loaded.", [({}, len(runtime.ruleset))])
    w.family("smtpfilter_downstream_idle_connections", "gauge",
             "Idle connections to 10026 kept for reuse.", [({}, runtime.pool.idle)])
    dns = runtime.ruleset.env.dns
    zones = sorted(dns.watched().values(), key=lambda z: z.shown)
    w.family("smtpfilter_dns_zone_up", "gauge",
             "1 when a DNS list is in use, 0 when its health probe disabled it.",
             [({"zone": z.shown}, 1 if dns.health.usable(z.name) else 0) for z in zones])
    w.family("smtpfilter_start_time_seconds", "gauge", "When this process started (Unix time).",
             [({}, started_at)])
    return "\n".join(w.lines) + "\n"


# --- the HTTP side ---------------------------------------------------------------------------
class MetricsServer:
    """``GET /metrics`` over HTTP/1.x, one request per connection."""

    def __init__(self, runtime: "Runtime", host: str, port: int) -> None:
        self.runtime = runtime
        self.host = host
        self.port = port
        self.started_at = time.time()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

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
        content_type = "text/plain; version=0.0.4; charset=utf-8"
        response = (
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
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
        return "200 OK", render(self.runtime, started_at=self.started_at).encode()
