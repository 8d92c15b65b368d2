"""``smtpfilter milter`` as systemd runs it: a child process with a real NOTIFY_SOCKET; its
command line, its config mistakes, reload (SIGHUP), drain (SIGTERM) and --workers."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.support.mta import Mta, connect_and_helo, message
from tests.support.service import REPO, FilterProcess, child_env, free_port

RULES = """
rules:
  - {name: SPAM_MAILER, check: header, header: X-Mailer, match: '^MaxBulk', action: discard}
"""


@pytest.fixture
def milter_process(tmp_path):
    made: list[FilterProcess] = []

    def make(rules: str = RULES, config: str = "", args: tuple[str, ...] = ()) -> FilterProcess:
        port = free_port()
        (tmp_path / "rules.yaml").write_text(textwrap.dedent(rules))
        path = tmp_path / "smtpfilter.yaml"
        path.write_text(f"rules: [rules.yaml]\nmilter: {{listen: 'inet:127.0.0.1:{port}'}}\n"
                        + textwrap.dedent(config))
        process = FilterProcess(path, command="milter", args=args)
        process.port, process.rules = port, tmp_path / "rules.yaml"
        made.append(process)
        return process

    yield make
    for process in made:
        process.close()


async def verdict(port: int, headers) -> list[tuple[bytes, bytes]]:
    mta = await Mta.connect(port)
    try:
        await mta.negotiate()
        await mta.send(connect_and_helo(), message(headers=headers))
        return await mta.replies_until_final()
    finally:
        await mta.close()


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smtpfilter", *args], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=60)


async def test_ready_reload_and_stop(milter_process):
    process = milter_process()
    await asyncio.to_thread(process.start)
    assert f"smtpfilter milter listening on inet:127.0.0.1:{process.port}" in process.log()
    bulk = ((b"Subject", b" hi"), (b"X-Mailer", b" MaxBulk 1"), (b"X-Other", b" 1"))
    assert await verdict(process.port, bulk) == [(b"d", b"")]

    # SIGHUP: the new rules apply to the next message; systemd hears RELOADING=1, READY=1.
    process.rules.write_text("rules:\n  - {name: OTHER, check: header, header: X-Other, "
                             "match: '1', action: reject}\n")
    seen = len(process.drain())
    process.send_signal(signal.SIGHUP)
    await asyncio.to_thread(process.wait_notification, "RELOADING=1", 20, seen)
    await asyncio.to_thread(process.wait_log, r"reloaded: 1 rules from 1 files")
    assert await verdict(process.port, bulk) == [
        (b"y", b"550 5.7.1 Message content rejected (OTHER)\x00")]

    assert await asyncio.to_thread(process.stop) == 0
    assert any("STOPPING=1" in n for n in process.drain())
    assert "Traceback" not in process.log()


async def test_workers_share_an_inet_port(milter_process):
    process = milter_process(args=("--workers", "2"))
    await asyncio.to_thread(process.start)
    for _ in range(6):  # a connection each: SO_REUSEPORT spreads them over both workers
        assert await verdict(process.port, ((b"Subject", b" hi"),)) == [(b"c", b"")]
    assert await asyncio.to_thread(process.stop) == 0


@pytest.mark.parametrize("args,config,status,expected", [
    (("--listen", "inet:11332@127.0.0.1"), "", 78,
     "smtpfilter: --listen: 'inet:11332@127.0.0.1': that is Sendmail's port@host; Postfix "
     "writes inet:HOST:PORT\n"),
    ((), "milter: {listen: 'tcp:127.0.0.1:1', quarantine: later, timeout: 10m}\n", 78, None),
    (("--workers", "2", "--listen", "unix:/run/smtpfilter/milter.sock"), "", 64,
     "smtpfilter: --workers needs an inet: listen; unix:/run/smtpfilter/milter.sock cannot be "
     "shared by several processes\n"),
], ids=["sendmail-syntax", "config-keys", "workers-unix"])
def test_mistakes_are_one_line_each(tmp_path, args, config, status, expected):
    path = tmp_path / "smtpfilter.yaml"
    path.write_text("rules: []\n" + config)
    result = run("milter", "--config", str(path), *args)
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    if expected is not None:
        assert result.stderr.startswith(expected), result.stderr
    else:
        lines = result.stderr.splitlines()
        assert lines == [
            f"smtpfilter: {path}:2: milter.listen: 'tcp:127.0.0.1:1': expected inet:HOST:PORT or "
            f"unix:/PATH",
            f"smtpfilter: {path}:2: milter.quarantine: 'later' is not one of hold, store",
            f"smtpfilter: {path}:2: milter.timeout: must stay below Postfix's "
            f"milter_content_timeout (300s), or Postfix gives up first",
            "smtpfilter: 3 problem(s); not starting",
        ], lines


def test_help_lists_the_milter_command():
    assert "milter" in run("--help").stdout
    assert "--listen inet:HOST:PORT|unix:/PATH" in run("milter", "--help").stdout


def test_a_port_in_use_is_one_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "smtpfilter.yaml"
        path.write_text("rules: []\n")
        result = run("milter", "--config", str(path), "--listen", f"inet:127.0.0.1:{port}")
    assert result.returncode == 71
    assert result.stderr == (f"smtpfilter: cannot listen on inet:127.0.0.1:{port}: "
                             f"Address already in use\n")
