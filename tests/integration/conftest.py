"""Fixtures for the process-level tests: ``smtpfilter serve`` as a child process."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

from tests.conftest import ISSUE_RULES
from tests.support.service import FilterProcess, free_port
from tests.support.syslog import Syslog


@pytest.fixture
async def service(tmp_path, sink):
    """``service(rules=..., config=...)`` → an unstarted FilterProcess with ``.port`` and
    ``.rules`` (the rules file it reads), forwarding to the recording sink."""
    made: list[FilterProcess] = []

    def make(rules: str = ISSUE_RULES, config: str = "") -> FilterProcess:
        port = free_port()
        rules_path = tmp_path / "rules.yaml"
        rules_path.write_text(textwrap.dedent(rules))
        config_path = tmp_path / "smtpfilter.yaml"
        config_path.write_text(
            f"listen: 127.0.0.1:{port}\nforward: 127.0.0.1:{sink.port}\nhostname: filter.test\n"
            "rules: [rules.yaml]\n" + textwrap.dedent(config)
        )
        process = FilterProcess(config_path)
        process.port, process.rules, process.config_path = port, rules_path, config_path
        made.append(process)
        return process

    yield make
    for process in made:
        await asyncio.to_thread(process.close)


async def start(process: FilterProcess, **kwargs) -> FilterProcess:
    """Start without blocking the event loop (the recording sink runs on it)."""
    return await asyncio.to_thread(lambda: process.start(**kwargs))


@pytest.fixture
def syslog():
    """A syslog socket the filter can log to (``syslog.config``) and the test reads."""
    log = Syslog()
    yield log
    log.close()
