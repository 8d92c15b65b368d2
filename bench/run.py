"""Throughput, latency, CPU and memory of smtpfilter beside its baseline and a naive peer.

    .venv/bin/python bench/run.py                 # all workloads, 3 rounds (takes a few minutes)
    .venv/bin/python bench/run.py --quick         # 1 round, smaller counts: a smoke test
    .venv/bin/python bench/run.py --workloads 10k --rounds 5 --peers baseline,smtpfilter
    .venv/bin/python bench/run.py --peers smtpfilter,smtpfilter@main   # this checkout beside main
    .venv/bin/python bench/run.py --workloads 10k-attach,1m-attach,25m-attach --peers smtpfilter,smtpfilter@main

Harness (bench/README.md explains the figures): Postfix's ``smtp-source`` → peer on 127.0.0.1 →
``smtp-sink`` playing 10026. Peers, interleaved round by round on the same ports and workloads:

- ``baseline``: smtp-source straight into smtp-sink, the physical limit of the harness;
- ``naive``: bench/naive_peer.py, an aiosmtpd handler forwarding with aiosmtplib.sendmail();
- ``smtpfilter``: ``smtpfilter serve`` with the shipped rules (old/missing/future/bad Date,
  the 17 spam X-Mailers); ``smtpfilter-2w`` the same with ``--workers 2``;
- ``smtpfilter@REF`` (and ``smtpfilter-2w@REF``): the same, but the code and shipped rules of
  git revision REF (a branch, tag or commit), checked out with a temporary ``git worktree add``
  and run with PYTHONPATH pointing there (same interpreter and libraries): two versions side by
  side in one run, interleaved like every other peer. The worktree is removed afterwards.

Workloads ``10k``, ``1m``, ``25m`` and ``cpu`` run the shipped rules that read headers only
(every rules/*.yaml but 30-attachments.yaml): a rule set without body rules must cost what it
cost before issue 14. ``10k-attach``, ``1m-attach`` and ``25m-attach`` send real MIME messages
(bench/mime_messages.py: text+html; a 700 KB attachment; ten attachments, one a zip) with all
shipped rules, 30-attachments.yaml included (a revision without it runs what it has).

Per run: msgs/s (smtp-source wall time), p50/p99 latency of a probe session sending one 2 KB
message at a time beside the load, CPU ms per message of the peer's processes, peak RSS of the
peer (VmHWM, summed over worker processes) and messages lost (sent and acknowledged but not at
the sink; must be 0). Medians over rounds.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICK = os.sysconf("SC_CLK_TCK")

WORKLOADS = {
    "10k": {"messages": 2000, "size": 10 * 1024, "sessions": 20},
    "1m": {"messages": 200, "size": 1024 * 1024, "sessions": 10},
    "25m": {"messages": 1, "size": 25 * 1024 * 1024, "sessions": 1},
    # CPU-bound: 10 KB messages judged by 300 extra header rules (bench/heavy_rules.py), so the
    # filter, not the harness, is what saturates a core: this is where --workers should scale.
    "cpu": {"messages": 600, "size": 10 * 1024, "sessions": 20, "heavy": True},
    # Issue 14: MIME messages from bench/mime_messages.py (smtp-source -F), all shipped rules.
    "10k-attach": {"messages": 2000, "size": 0, "sessions": 20, "file": "10k"},
    "1m-attach": {"messages": 200, "size": 0, "sessions": 10, "file": "1m"},
    "25m-attach": {"messages": 1, "size": 0, "sessions": 1, "file": "25m"},
}
QUICK = {"10k": {"messages": 400}, "1m": {"messages": 40}, "25m": {}, "cpu": {"messages": 200},
         "10k-attach": {"messages": 400}, "1m-attach": {"messages": 40}, "25m-attach": {}}
# The shipped rule file that reads bodies: left out of the header-only workloads.
ATTACHMENT_RULES = "30-attachments.yaml"
ALL_PEERS = ["baseline", "naive", "smtpfilter", "smtpfilter-2w"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.recv(512)  # the banner: the server really answers
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answers on port {port}")


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            pids.extend(process_tree(int(child)))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLOCK_TICK


def memory_kb(pids: list[int], key: str) -> int:
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        total += int(match.group(1)) if match else 0
    return total


class Probe(threading.Thread):
    """One SMTP session beside the load, one 2 KB message at a time; latency per message."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.latencies: list[float] = []
        self.sent = 0
        self.errors = 0
        self.stop_event = threading.Event()
        body = "Date: " + time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        self.message = (body + "\r\nSubject: probe\r\n\r\n" + ("p" * 78 + "\r\n") * 25).encode()

    def run(self) -> None:
        try:
            smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=60)
        except OSError:
            self.errors += 1
            return
        with smtp:
            while not self.stop_event.is_set():
                start = time.perf_counter()
                try:
                    smtp.sendmail("probe@example.org", ["probe@example.com"], self.message)
                except smtplib.SMTPException:
                    self.errors += 1
                    return
                self.latencies.append(time.perf_counter() - start)
                self.sent += 1
                self.stop_event.wait(0.02)


@dataclass
class Result:
    peer: str
    workload: str
    msgs_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_msg: float
    peak_rss_mb: float
    extra_rss_mb: float
    lost: int
    failed: bool = False
    notes: list[str] = field(default_factory=list)


class Checkouts:
    """Other revisions as peers (``smtpfilter@REF``): each REF checked out once, with
    ``git worktree add --detach``, under the bench's temporary directory; removed by close()."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.roots: dict[str, Path] = {}

    def root(self, ref: str) -> Path:
        """The source tree to run: this checkout for "", else REF's worktree."""
        if not ref:
            return ROOT
        if ref not in self.roots:
            path = self.workdir / f"checkout-{len(self.roots) + 1}"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(path), ref],
                check=True,
            )
            self.roots[ref] = path
        return self.roots[ref]

    def close(self) -> None:
        for path in self.roots.values():
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False
            )
        self.roots.clear()


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.checkouts = Checkouts(workdir)
        self.heavy_rules = workdir / "heavy.yaml"
        self.heavy_rules.write_text(heavy_rules_yaml(300))
        self._configs: dict[tuple[Path, bool, bool], Path] = {}

    def message_file(self, name: str) -> Path:
        """An issue 14 workload message, LF lines as smtp-source -F reads them, made once."""
        import mime_messages

        path = self.workdir / f"mime-{name}.eml"
        if not path.exists():
            path.write_bytes(mime_messages.MESSAGES[name]())
        return path

    def config(self, root: Path, heavy: bool, attach: bool = False) -> Path:
        """The config for a peer running ``root``'s code: its own shipped rules, without the
        ones that read bodies unless ``attach``."""
        key = (root, heavy, attach)
        if key not in self._configs:
            path = self.workdir / f"smtpfilter-{len(self._configs) + 1}.yaml"
            shipped = [str(root / "rules")] if attach else [
                str(f) for f in sorted((root / "rules").glob("*.yaml"))
                if f.name != ATTACHMENT_RULES
            ]
            if heavy:
                shipped.append(str(self.heavy_rules))
            path.write_text(
                f"rules: [{', '.join(shipped)}]\nlimits: {{message_size: 64m}}\n"
                "log: {level: info}\n"
            )
            self._configs[key] = path
        return self._configs[key]

    def start_sink(self, port: int) -> subprocess.Popen:
        user = "nobody" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
        # -c writes a counter per message: to a file, never to a pipe nobody drains (a full
        # pipe blocks smtp-sink and every peer then waits on it).
        with open(self.workdir / "sink.out", "wb") as counter:
            process = subprocess.Popen(
                ["smtp-sink", "-u", user, "-c", f"127.0.0.1:{port}", "1024"],
                stdout=counter,
                stderr=subprocess.DEVNULL,
            )
        wait_port(port)
        return process

    def start_peer(
        self, peer: str, listen: int, forward: int, heavy: bool = False, attach: bool = False
    ) -> subprocess.Popen | None:
        if peer == "baseline":
            return None
        root, env = ROOT, None
        if peer == "naive":
            command = [sys.executable, str(ROOT / "bench" / "naive_peer.py"), str(listen), str(forward)]
        else:
            name, _, ref = peer.partition("@")
            root = self.checkouts.root(ref)
            command = [
                sys.executable, "-m", "smtpfilter", "serve", "--config",
                str(self.config(root, heavy, attach)),
                "--listen", f"127.0.0.1:{listen}", "--forward", f"127.0.0.1:{forward}",
            ]
            if name.endswith("-2w"):
                command += ["--workers", "2"]
            # That revision's code first on the path (it shadows the installed checkout).
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]
            ))
        log = open(self.workdir / f"{peer.replace('/', '_')}.log", "ab")
        process = subprocess.Popen(command, cwd=root, stdout=log, stderr=log, env=env)
        log.close()
        wait_port(listen)
        return process

    def run(self, peer: str, workload: str, spec: dict) -> Result:
        sink_port, peer_port = free_port(), free_port()
        sink = self.start_sink(sink_port)
        target = sink_port
        proc = None
        try:
            proc = self.start_peer(peer, peer_port, sink_port, spec.get("heavy", False),
                                   "file" in spec)
            if proc is not None:
                target = peer_port
                time.sleep(0.3)  # let start-up work (imports, rule compilation) settle
            pids = process_tree(proc.pid) if proc else []
            cpu_before = cpu_seconds(pids)
            rss_before = memory_kb(pids, "VmRSS")
            probe = Probe(target) if spec["messages"] > 1 else None
            if probe:
                probe.start()
            start = time.perf_counter()
            source = subprocess.run(
                [
                    "smtp-source", "-d", "-s", str(spec["sessions"]), "-m", str(spec["messages"]),
                    *(["-F", str(self.message_file(spec["file"]))] if "file" in spec
                      else ["-l", str(spec["size"])]),
                    "-f", "bench@example.org", "-t", "rcpt@example.com", f"127.0.0.1:{target}",
                ],
                capture_output=True,
                timeout=900,
            )
            wall = time.perf_counter() - start
            if probe:
                probe.stop_event.set()
                probe.join(60)
            pids = process_tree(proc.pid) if proc else []
            cpu = cpu_seconds(pids) - cpu_before
            peak = memory_kb(pids, "VmHWM")
            time.sleep(0.3)  # let the sink count the last messages
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            sink.send_signal(signal.SIGTERM)
            sink.wait(10)
        counts = re.findall(rb"mesg=(\d+)", (self.workdir / "sink.out").read_bytes())
        received = int(counts[-1]) if counts else 0
        acknowledged = (spec["messages"] if source.returncode == 0 else 0) + (probe.sent if probe else 0)
        latencies = sorted(probe.latencies) if probe else []
        result = Result(
            peer=peer,
            workload=workload,
            msgs_per_s=spec["messages"] / wall,
            p50_ms=statistics.median(latencies) * 1000 if latencies else float("nan"),
            p99_ms=latencies[int(len(latencies) * 0.99) - 1] * 1000 if len(latencies) > 1 else float("nan"),
            cpu_ms_per_msg=cpu * 1000 / spec["messages"] if proc else float("nan"),
            peak_rss_mb=peak / 1024 if proc else float("nan"),
            extra_rss_mb=(peak - rss_before) / 1024 if proc else float("nan"),
            lost=max(acknowledged - received, 0),
            failed=source.returncode != 0,
        )
        if source.returncode != 0:
            result.notes.append(source.stderr.decode(errors="replace").strip()[-200:])
        return result


def heavy_rules_yaml(count: int) -> str:
    """``count`` header rules over every header that never match smtp-source's mail: pure
    evaluation cost (each pattern runs on each of the message's header lines)."""
    lines = ["rules:"]
    for number in range(count):
        lines += [
            f"  - name: HEAVY_{number}",
            "    check: header",
            "    header: '*'",
            f"    match: ['^X-Bench-{number}: .*(spam|offer|winner)', 'never-{number}$']",
            "    score: 0.1",
        ]
    return "\n".join(lines) + "\n"


def median_result(results: list[Result]) -> Result:
    def med(values):
        values = [v for v in values if v == v]  # drop NaN
        return statistics.median(values) if values else float("nan")

    first = results[0]
    return Result(
        peer=first.peer,
        workload=first.workload,
        msgs_per_s=med([r.msgs_per_s for r in results]),
        p50_ms=med([r.p50_ms for r in results]),
        p99_ms=med([r.p99_ms for r in results]),
        cpu_ms_per_msg=med([r.cpu_ms_per_msg for r in results]),
        peak_rss_mb=max(r.peak_rss_mb for r in results) if first.peer != "baseline" else float("nan"),
        extra_rss_mb=med([r.extra_rss_mb for r in results]),
        lost=sum(r.lost for r in results),
        failed=any(r.failed for r in results),
        notes=[n for r in results for n in r.notes],
    )


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round, fewer messages")
    parser.add_argument("--workloads", default="10k,1m,25m,cpu,10k-attach,1m-attach,25m-attach")
    parser.add_argument("--peers", default=",".join(ALL_PEERS))
    args = parser.parse_args()
    # Checked before anything starts: a typo would otherwise end a run of minutes in a KeyError.
    unknown = [w for w in args.workloads.split(",") if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload {', '.join(unknown)} (known: {', '.join(WORKLOADS)})")
    unknown = [p for p in args.peers.split(",")
               if p not in ALL_PEERS and p.partition("@")[0] not in ("smtpfilter", "smtpfilter-2w")]
    if unknown:
        parser.error(f"unknown peer {', '.join(unknown)} (known: {', '.join(ALL_PEERS)}, "
                     "smtpfilter@REF, smtpfilter-2w@REF)")
    if args.rounds < 1:
        parser.error(f"--rounds must be 1 or more, not {args.rounds}")
    if not shutil.which("smtp-source") or not shutil.which("smtp-sink"):
        print("bench: smtp-source and smtp-sink come with Postfix: apt-get install postfix", file=sys.stderr)
        return 2
    rounds = 1 if args.quick else args.rounds
    peers = args.peers.split(",")
    workloads = args.workloads.split(",")
    with tempfile.TemporaryDirectory(prefix="smtpfilter-bench-") as tmp:
        bench = Bench(Path(tmp))
        try:
            return _run(bench, peers, workloads, rounds, args.quick)
        finally:
            bench.checkouts.close()


def _run(bench: Bench, peers: list[str], workloads: list[str], rounds: int, quick: bool) -> int:
    collected: dict[tuple[str, str], list[Result]] = {}
    for number in range(rounds):
        for workload in workloads:
            spec = dict(WORKLOADS[workload])
            if quick:
                spec.update(QUICK[workload])
            order = peers if number % 2 == 0 else list(reversed(peers))  # interleave
            for peer in order:
                result = bench.run(peer, workload, spec)
                collected.setdefault((workload, peer), []).append(result)
                print(
                    f"round {number + 1} {workload:>10} {peer:<14} {result.msgs_per_s:8.1f} msg/s "
                    f"cpu {fmt(result.cpu_ms_per_msg, 2)} ms/msg rss {fmt(result.peak_rss_mb)} MB "
                    f"lost {result.lost}{' FAILED' if result.failed else ''}",
                    file=sys.stderr,
                    flush=True,
                )
    print()
    print("| workload | peer | msgs/s | vs naive | vs baseline | probe p50 ms | probe p99 ms "
          "| CPU ms/msg | peak RSS MB | RSS added MB | lost |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for workload in workloads:
        medians = {peer: median_result(collected[(workload, peer)]) for peer in peers}
        naive = medians.get("naive")
        baseline = medians.get("baseline")
        for peer in peers:
            r = medians[peer]
            vs_naive = r.msgs_per_s / naive.msgs_per_s if naive else float("nan")
            vs_base = r.msgs_per_s / baseline.msgs_per_s if baseline else float("nan")
            print(
                f"| {workload} | {peer} | {r.msgs_per_s:.1f} | {fmt(vs_naive, 2)}× | {fmt(vs_base, 2)}× "
                f"| {fmt(r.p50_ms)} | {fmt(r.p99_ms)} | {fmt(r.cpu_ms_per_msg, 2)} "
                f"| {fmt(r.peak_rss_mb)} | {fmt(r.extra_rss_mb)} | {r.lost}{' (FAILED)' if r.failed else ''} |"
            )
            for note in r.notes[:1]:
                print(f"|   | note: {note} |")
    print(f"\n{rounds} round(s), medians; machine: {os.cpu_count()} CPUs; load during run may vary.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
