"""Issue 10's reproducer, counted: a client that hangs up while 10026 still owes a reply, then
an ordinary client, against this checkout and other revisions side by side.

    .venv/bin/python bench/lockstep_bench.py                       # this checkout beside 9abff52, 50 rounds
    .venv/bin/python bench/lockstep_bench.py --refs 9abff52 --rounds 200

Per round: client A sends EHLO and ``MAIL FROM:<hangup@a.example>`` and closes at once; 10026 (the
strict sink of tests/support/sink.py, as strict about command order as Postfix's smtpd) answers
that MAIL only after A is gone; then client B sends one ordinary message. B's outcome is counted:

- ``ok``: every reply 2xx and B's message is at 10026 (what must always happen);
- ``tempfail``: a 4xx somewhere (Postfix keeps the mail and retries: safe, but a needless delay);
- ``bounced``: a 5xx (after the queue Postfix bounces the mail: issue 10's ``503 nested MAIL``);
- ``lost``: a 250 to "." with no message at 10026 (the worst: the mail is gone).

Each revision runs as ``python -m smtpfilter serve`` from its own ``git worktree`` (PYTHONPATH),
with the default pool, no rules, on free loopback ports; rounds alternate between revisions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.sink import Sink  # noqa: E402  (the bench reuses the tests' strict 10026)

HOLD = 0.05  # how long 10026 sits on A's MAIL reply: long enough for A to be gone


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Filter:
    def __init__(self, name: str, code: Path, sink_port: int, workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        config = workdir / f"{name}.yaml"
        config.write_text(
            f"listen: 127.0.0.1:{self.port}\nforward: 127.0.0.1:{sink_port}\n"
            "hostname: bench.example\nrules: []\n"
        )
        env = dict(os.environ, PYTHONPATH=str(code))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "smtpfilter", "serve", "--config", str(config)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=code,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{name}: the filter did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await asyncio.wait_for(reader.readline(), 10)
        if not line:
            return 0  # closed without a reply
        if line[3:4] != b"-":
            return int(line[:3])


async def client_a(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reply(reader)
    writer.write(b"EHLO a.example\r\n")
    await reply(reader)
    writer.write(b"MAIL FROM:<hangup@a.example>\r\n")
    await writer.drain()
    writer.close()


async def client_b(port: int, tag: str) -> list[int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    codes = [await reply(reader)]
    try:
        for command in (b"EHLO b.example", b"MAIL FROM:<b@b.example>", b"RCPT TO:<r@c.example>",
                        b"DATA"):
            writer.write(command + b"\r\n")
            codes.append(await reply(reader))
            if codes[-1] >= 400:
                return codes
        writer.write(f"Subject: {tag}\r\nDate: now\r\n\r\nhello\r\n.\r\n".encode())
        codes.append(await reply(reader))
        writer.write(b"QUIT\r\n")
        await reply(reader)
    except (asyncio.TimeoutError, ConnectionError):
        codes.append(0)
    finally:
        writer.close()
    return codes


async def run(refs: list[str], rounds: int) -> None:
    sink = await Sink().start()
    a_mail_seen = asyncio.Event()

    async def gate(command: str, txn, more_input) -> None:
        if command == "MAIL" and txn.mail and b"hangup@" in txn.mail:
            a_mail_seen.set()
            await asyncio.sleep(HOLD)

    sink.gate = gate
    workdir = Path(tempfile.mkdtemp(prefix="lockstep-bench-"))
    codes: dict[str, Path] = {"this checkout": ROOT}
    for ref in refs:
        path = workdir / f"checkout-{ref}"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet",
                        str(path), ref], check=True)
        codes[f"smtpfilter@{ref}"] = path
    filters = [Filter(f"f{i}", code, sink.port, workdir) for i, code in enumerate(codes.values())]
    results: dict[str, Counter] = {name: Counter() for name in codes}
    try:
        for number in range(rounds):
            order = list(zip(codes, filters))
            for name, flt in order if number % 2 == 0 else reversed(order):
                # A normal message first, so a pooled 10026 connection exists.
                await client_b(flt.port, f"warm {number}")
                a_mail_seen.clear()
                await client_a(flt.port)
                try:
                    await asyncio.wait_for(a_mail_seen.wait(), 5)
                except asyncio.TimeoutError:
                    pass  # A's MAIL never reached 10026: nothing is in flight
                await asyncio.sleep(HOLD * 2)  # 10026 has answered A's MAIL by now
                tag = f"B {name} {number}"
                got = await client_b(flt.port, tag)
                delivered = any(m.data and tag.encode() in m.data for m in sink.messages)
                if any(code >= 500 for code in got):
                    results[name]["bounced"] += 1
                elif len(got) == 6 and got[-1] == 250 and not delivered:
                    results[name]["lost"] += 1
                elif len(got) == 6 and all(200 <= code < 400 for code in got) and delivered:
                    results[name]["ok"] += 1
                else:
                    results[name]["tempfail"] += 1
    finally:
        for flt in filters:
            flt.stop()
        # The sink's sessions with the stopped filters are cancelled mid-read: not news.
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)
        await sink.stop()
        for ref in refs:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(workdir / f"checkout-{ref}")], check=False)
    print(f"{rounds} rounds: client A hangs up while 10026 holds its MAIL reply {HOLD * 1000:.0f} ms;"
          " client B's ordinary message:")
    print(f"{'revision':<28}{'ok':>6}{'tempfail':>10}{'bounced':>9}{'lost':>6}")
    for name, counts in results.items():
        print(f"{name:<28}{counts['ok']:>6}{counts['tempfail']:>10}{counts['bounced']:>9}"
              f"{counts['lost']:>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", default="9abff52",
                        help="comma-separated git revisions to run beside this checkout")
    parser.add_argument("--rounds", type=int, default=50, help="rounds per revision (default 50)")
    args = parser.parse_args()
    asyncio.run(run([ref for ref in args.refs.split(",") if ref], args.rounds))


if __name__ == "__main__":
    main()
