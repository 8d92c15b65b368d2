"""Postfix alone, Postfix + smtpfilter milter, Postfix + smtpfilter content_filter, side by side.

    sudo .venv/bin/python bench/milter_bench.py            # 2,000 x 10 KB over 20 sessions, 3 rounds
    sudo .venv/bin/python bench/milter_bench.py --quick    # 200 messages, 1 round: a smoke test

Issue 16's comparison. FILTER_README warns that an after-queue content filter costs "about a
factor of two" in Postfix throughput (a second smtpd, cleanup and queue pass per message); a
milter judges the message inside the first smtpd. Each configuration is its own private Postfix
instance (tests/postfix/instance.py: root, its own directories, loopback ports), built from
main.cf.example and master.cf.example exactly as the end-to-end tests build them, delivering to
its own smtp-sink (no dump files) through relayhost; smtpfilter runs with the shipped rules
(``event_loop: auto``: uvloop when installed). Postfix's ``smtp-source`` sends N messages of
SIZE bytes over S sessions that stay connected (``-d``, as a busy MTA's clients do).
Configurations run one after the other, round by round (interleaved), so that a noisy
neighbour slows all alike; figures are medians over rounds.

Per configuration:
  accept/s   messages / smtp-source's wall time: what sending clients see
  e2e/s      messages / time until the last one reached the sink (Postfix's log): the
             sustained rate, both queue passes included for content_filter
  vs alone   accept/s and e2e/s as a share of Postfix alone's (issue 16's target for the
             milter: at least 80%; the content_filter keeps about 50% by design)
  filter CPU user+system ms per message of smtpfilter's process
  Postfix CPU  ms per message of master(8), its children and the children it reaped
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.postfix.examples import blocks, merge_master_cf, no_chroot, substitute  # noqa: E402
from tests.postfix.instance import MASTER_CF_DIST, Postfix, program, wait_port  # noqa: E402
from tests.support.service import FilterProcess, free_port, poll  # noqa: E402

# name: (master.cf.example blocks, main.cf.example blocks, smtpfilter command or None)
CONFIGS = {
    "postfix alone": ((), (), None),
    "+ milter": ((), ("milter",), "milter"),
    "+ content_filter": (("scan", "reinject"), ("after-queue",), "serve"),
}
# The same for all three: no per-client limits that a benchmark from one address would hit.
TUNING = """\
# milter_bench.py: one client address sends everything; no anvil limits get in the way.
smtpd_client_connection_count_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_connection_rate_limit = 0
default_destination_concurrency_limit = 20
"""


def cpu_seconds(pid: int, children: bool = False) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def postfix_cpu(master: int) -> float:
    """master(8) + its live children + the children it reaped (cutime/cstime)."""
    total = cpu_seconds(master, children=True)
    for child in Path(f"/proc/{master}/task/{master}/children").read_text().split():
        try:
            total += cpu_seconds(int(child))
        except (OSError, ValueError):
            pass  # exited meanwhile: its time moves into the master's cutime once reaped
    return total


class Bench:
    """One configuration: a private Postfix, its sink and, but for Postfix alone, smtpfilter."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        master_blocks, main_blocks, self.command = CONFIGS[name]
        self.smtp, self.filter, self.reinject, self.sink_port = (free_port() for _ in range(4))
        self.postfix = Postfix(root)
        self.sink: subprocess.Popen | None = None
        self.filter_process: FilterProcess | None = None
        self.results: list[tuple[float, float, float | None, float]] = []
        config = root / "smtpfilter.yaml"
        # The shipped rules (no "rules:"), as bench/run.py's smtpfilter peer uses them.
        config.write_text(f"listen: 127.0.0.1:{self.filter}\nforward: 127.0.0.1:{self.reinject}\n"
                          f"hostname: smtpfilter.bench.test\n"
                          f"milter: {{listen: 'inet:127.0.0.1:{self.filter}'}}\n")
        self.config = config
        master_example, main_example = (blocks(ROOT / "master.cf.example"),
                                        blocks(ROOT / "main.cf.example"))
        replacements = {
            "inet:127.0.0.1:11332": f"inet:127.0.0.1:{self.filter}",
            "[127.0.0.1]:10025": f"[127.0.0.1]:{self.filter}",
            "127.0.0.1:10025": f"127.0.0.1:{self.filter}",
            "127.0.0.1:10026": f"127.0.0.1:{self.reinject}",
        }

        def render(text: str) -> str:
            text = substitute(text, replacements)
            return re.sub(r"(?m)^smtp(\s+inet\s)", rf"127.0.0.1:{self.smtp}\1", text)

        master_cf = merge_master_cf(render(MASTER_CF_DIST.read_text()),
                                    *(render(master_example[b]) for b in master_blocks))
        main_cf = self.postfix.base_main_cf(relay_port=self.sink_port) + TUNING + "".join(
            f"\n{render(main_example[b])}" for b in main_blocks)
        self.postfix.write(main_cf, no_chroot(master_cf))

    def start(self) -> None:
        self.sink = subprocess.Popen(
            [program("smtp-sink"), "-u", "nobody", f"127.0.0.1:{self.sink_port}", "200"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.sink_port)
        if self.command is not None:
            self.filter_process = FilterProcess(self.config, command=self.command).start()
        ports = (self.smtp,) if self.command != "serve" else (self.smtp, self.reinject)
        self.postfix.start(ports)

    def stop(self) -> None:
        self.postfix.stop()
        if self.filter_process is not None:
            self.filter_process.close()
        if self.sink is not None:
            self.sink.send_signal(signal.SIGTERM)
            self.sink.wait(10)

    def delivered(self) -> int:
        return len(re.findall(rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{self.sink_port},.* status=sent",
                              self.postfix.log()))

    def run(self, messages: int, sessions: int, size: int, *, record: bool = True) -> None:
        before = self.delivered()
        pid = self.filter_process.pid if self.filter_process else None
        cpu0 = cpu_seconds(pid) if pid else None
        master = self.postfix._master_pid()
        assert master is not None
        pf0 = postfix_cpu(master)
        started = time.monotonic()
        subprocess.run(
            [program("smtp-source"), "-d", "-s", str(sessions), "-m", str(messages),
             "-l", str(size), "-M", "client.bench.test", "-f", "bench@sender.test",
             "-t", "rcpt@example.com", f"127.0.0.1:{self.smtp}"],
            check=True, stdout=subprocess.DEVNULL, timeout=900)
        accepted = time.monotonic() - started
        cpu = cpu_seconds(pid) - cpu0 if pid and cpu0 is not None else None
        poll(lambda: self.delivered() - before >= messages, 600, f"{messages} deliveries",
             interval=0.05)
        done = time.monotonic() - started
        postfix = postfix_cpu(master) - pf0
        if record:
            self.results.append((messages / accepted, messages / done,
                                 None if cpu is None else cpu / messages * 1e3,
                                 postfix / messages * 1e3))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=10 * 1024, help="bytes per message")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200 messages, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.rounds = 200, 1
    if os.geteuid() != 0 or program("smtp-source") is None:
        print("milter_bench.py: needs root and Postfix (apt-get install postfix)", file=sys.stderr)
        return 1
    top = Path(tempfile.mkdtemp(prefix="milter-bench-"))
    top.chmod(0o755)  # Postfix's unprivileged daemons must reach the instances
    benches = []
    try:
        for index, name in enumerate(CONFIGS):
            (top / str(index)).mkdir()
            benches.append(Bench(name, top / str(index)))
        for bench in benches:
            bench.start()
            bench.run(100, 5, args.size, record=False)  # warm-up: processes forked, caches
        for _ in range(args.rounds):
            for bench in benches:
                bench.run(args.messages, args.sessions, args.size)
    except subprocess.CalledProcessError as error:
        # smtp-source gave up (it says why on stderr): what Postfix and the filter logged
        # tells the cause, and the instance is removed below.
        failed = next(b for b in benches if f"127.0.0.1:{b.smtp}" in error.cmd)
        print(f"milter_bench.py: {failed.name}: smtp-source exited {error.returncode}",
              file=sys.stderr)
        for line in failed.postfix.log().splitlines()[-15:]:
            print(f"  postfix: {line}", file=sys.stderr)
        if failed.filter_process is not None:
            for line in failed.filter_process.log().splitlines()[-15:]:
                print(f"  smtpfilter: {line}", file=sys.stderr)
        return 1
    finally:
        for bench in benches:
            bench.stop()
        shutil.rmtree(top, ignore_errors=True)
    alone_accept = statistics.median(r[0] for r in benches[0].results)
    alone_e2e = statistics.median(r[1] for r in benches[0].results)
    print(f"{args.messages} messages x {args.size} bytes over {args.sessions} sessions, "
          f"{args.rounds} round(s), {os.cpu_count()} cores; medians")
    print(f"{'configuration':18} {'accept/s':>9} {'vs alone':>9} {'e2e/s':>8} {'vs alone':>9} "
          f"{'filter CPU ms/msg':>18} {'Postfix CPU ms/msg':>19}")
    for bench in benches:
        accept = statistics.median(r[0] for r in bench.results)
        e2e = statistics.median(r[1] for r in bench.results)
        cpus = [r[2] for r in bench.results if r[2] is not None]
        cpu = f"{statistics.median(cpus):.2f}" if cpus else "-"
        print(f"{bench.name:18} {accept:9.0f} {accept / alone_accept:9.0%} {e2e:8.0f} "
              f"{e2e / alone_e2e:9.0%} {cpu:>18} "
              f"{statistics.median(r[3] for r in bench.results):19.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
