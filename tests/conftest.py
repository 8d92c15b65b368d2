"""Shared fixtures: a recording 10026 sink and our filter, both real servers on loopback port 0."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Awaitable, Callable

import pytest

from smtpfilter.config.settings import load_config, shipped_rules_dir
from smtpfilter.engine.rules import load_rules
from smtpfilter.frontdoors.smtp.server import Server
from tests.support.dnsserver import DnsServer, serve_test_lists
from tests.support.sink import Sink

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None

# The core SMTP behaviour is proven on both event loops we support: uvloop schedules I/O
# callbacks in a different order than asyncio's own loop (that once lost a reply, see
# reinject.Downstream.data).
BOTH_LOOPS = {
    "tests.integration.test_transactions",
    "tests.integration.test_faults",
    "tests.integration.test_smuggling",
    "tests.integration.test_abuse",
    "tests.integration.test_real_sink",
    "tests.integration.test_lockstep",
    "tests.integration.test_session_limit",
}


def pytest_asyncio_loop_factories(config, item):
    factories = {"asyncio": asyncio.new_event_loop}
    if uvloop is not None and item.module.__name__ in BOTH_LOOPS:
        factories["uvloop"] = uvloop.new_event_loop
    return factories


# The rules exactly as the core issue writes them.
ISSUE_RULES = r"""
rules:
  - name: OLD_DATE
    check: date
    older_than: 30d
    action: reject
  - name: NO_DATE
    check: date
    missing: true
    action: reject
  - name: SPAM_MAILER
    check: header
    header: X-Mailer
    match: ['^MaxBulk\.Mailer', '^Avalanche']
    action: discard
"""


@pytest.fixture
async def sink():
    server = await Sink().start()
    yield server
    await server.stop()


@pytest.fixture
async def dns_server():
    """A real DNS server on loopback serving the test lists (tests/support/dnsserver.py)."""
    server = await DnsServer().start()
    serve_test_lists(server)
    yield server
    await server.stop()


StartFilter = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_filter(sink: Sink, tmp_path: Path):
    """``await start_filter(rules=..., config=...)`` → a running Server forwarding to ``sink``;
    ``shipped=True`` loads the shipped rules directory instead of ``rules``."""
    servers: list[Server] = []

    async def start(
        rules: str = ISSUE_RULES,
        config: str = "",
        forward_port: int | None = None,
        *,
        shipped: bool = False,
    ) -> Server:
        rules_path = tmp_path / f"rules{len(servers)}.yaml"
        rules_path.write_text(textwrap.dedent(rules))
        config_path = tmp_path / f"config{len(servers)}.yaml"
        port = sink.port if forward_port is None else forward_port
        rules_entry = shipped_rules_dir() if shipped else rules_path.name
        config_path.write_text(
            f"listen: 127.0.0.1:0\nforward: 127.0.0.1:{port}\nhostname: filter.test\n"
            f"rules: ['{rules_entry}']\n" + textwrap.dedent(config)
        )
        cfg = load_config(config_path)
        server = Server(cfg, load_rules(cfg.rules), config_path=config_path)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.shutdown(deadline=2)
