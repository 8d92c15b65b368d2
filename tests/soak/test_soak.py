"""Soak: many small messages through a real `smtpfilter serve` process; memory must not grow.

Default run: 10,000 messages. ``pytest -m slow tests/soak`` runs the 100,000-message soak.
Load comes from Postfix's smtp-source (20 sessions, connections reused as Postfix does); 10026 is
smtp-sink. The filter's RSS is sampled while the load runs; the mean of the last 10% of samples
must be within 10% of the mean of the first 10%.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.service import free_port, poll
from tests.support.tools import require

ROOT = Path(__file__).resolve().parents[2]


def wait_port(port: int) -> None:
    def accepts() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    poll(accepts, 15, f"a listener on port {port}", 0.05)


def rss_kb(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+)", text, re.M).group(1))


def soak(tmp_path: Path, messages: int) -> list[tuple[float, int]]:
    require("smtp-source", "smtp-sink")
    sink_port, filter_port = free_port(), free_port()
    user = "nobody" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    # smtp-sink -c writes a counter line per message: into a file, never a pipe nobody drains
    # (a full pipe blocks smtp-sink, which then stops answering).
    counter = open(tmp_path / "sink.out", "wb")
    sink = subprocess.Popen(
        ["smtp-sink", "-u", user, "-c", f"127.0.0.1:{sink_port}", "256"],
        stdout=counter,
        stderr=subprocess.DEVNULL,
    )
    log = open(tmp_path / "filter.log", "wb")
    config = tmp_path / "soak.yaml"
    config.write_text(f"rules: [{ROOT / 'rules'}]\nlog: {{level: warning}}\n")
    filt = subprocess.Popen(
        [sys.executable, "-m", "smtpfilter", "serve", "--config", str(config),
         "--listen", f"127.0.0.1:{filter_port}", "--forward", f"127.0.0.1:{sink_port}"],
        cwd=ROOT,
        stdout=log,
        stderr=log,
    )
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    try:
        wait_port(sink_port)
        wait_port(filter_port)

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic(), rss_kb(filt.pid)))
                stop.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        source = subprocess.run(
            ["smtp-source", "-d", "-s", "20", "-m", str(messages), "-l", "2000",
             "-f", "soak@example.org", "-t", "rcpt@example.com", f"127.0.0.1:{filter_port}"],
            capture_output=True,
            timeout=1800,
        )
        stop.set()
        sampler.join(5)
        assert source.returncode == 0, source.stderr.decode(errors="replace")[-500:]
    finally:
        stop.set()
        filt.send_signal(signal.SIGTERM)
        try:
            filt.wait(30)
        except subprocess.TimeoutExpired:
            filt.kill()
        sink.send_signal(signal.SIGTERM)
        sink.wait(10)
        counter.close()
        log.close()
    out = (tmp_path / "sink.out").read_bytes()
    counts = re.findall(rb"mesg=(\d+)", out)
    assert counts and int(counts[-1]) == messages, "messages were lost"
    assert filt.returncode == 0
    return samples


def check_growth(samples: list[tuple[float, int]], messages: int) -> None:
    assert len(samples) >= 20, "too few RSS samples to judge"
    tenth = max(len(samples) // 10, 1)
    first = sum(rss for _, rss in samples[:tenth]) / tenth
    last = sum(rss for _, rss in samples[-tenth:]) / tenth
    curve = " ".join(f"{rss / 1024:.1f}" for _, rss in samples[:: max(len(samples) // 10, 1)])
    print(f"\nsoak {messages} messages: RSS MB over time: {curve}; first 10% {first / 1024:.1f} MB, "
          f"last 10% {last / 1024:.1f} MB, growth {100 * (last - first) / first:+.1f}%")
    assert last < first * 1.10, f"RSS grew from {first} kB to {last} kB"


def test_soak_short(tmp_path):
    check_growth(soak(tmp_path, 10_000), 10_000)


@pytest.mark.slow
def test_soak_100k(tmp_path):
    check_growth(soak(tmp_path, 100_000), 100_000)
