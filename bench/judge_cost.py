"""CPU of the judge step alone (Engine.judge: header parse, MIME walk, rules, policy) per
message of each workload, in-process, for this checkout or another revision's tree.

    .venv/bin/python bench/judge_cost.py                       # CPU ms per message, every workload
    .venv/bin/python bench/judge_cost.py --code /path/to/tree  # the same with another tree's code+rules
    .venv/bin/python bench/judge_cost.py --callgrind           # instructions per judge (valgrind)
    .venv/bin/python bench/judge_cost.py --callgrind --code ../main

bench/run.py measures the whole filter on the wire; on this shared 2-core machine its CPU
figures jump with the other users' load. This isolates the judge step, the part the MIME work
(issue 14) changed, and ``--callgrind`` counts instructions instead of time, which other load
does not change: valgrind counts only inside one ``functools.reduce`` call (its
``--toggle-collect``), which runs nothing but N judges after a warm-up judge (imports, caches):
the count divided by N is the cost of one judge, start-up excluded. (CPython 3.11's own
instructions, so figures compare between trees run by the same interpreter.)

Workloads, as bench/run.py sends them: ``10k`` (smtp-source's 10 KB message, the header-only
shipped rules), ``10k-attach``, ``1m-attach``, ``25m-attach`` (bench/mime_messages.py, every
shipped rule, 30-attachments.yaml included).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKLOADS = ("10k", "10k-attach", "1m-attach", "25m-attach")
REPS = {"10k": 400, "10k-attach": 400, "1m-attach": 30, "25m-attach": 4}
CALLGRIND_REPS = {"10k": 50, "10k-attach": 50, "1m-attach": 10, "25m-attach": 2}


def message(workload: str) -> bytes:
    """The workload's message in wire form (CRLF, dot-stuffed), as smtp-source delivers it."""
    sys.path.insert(0, str(HERE))
    import mime_messages

    if workload == "10k":  # smtp-source -l 10240: a few headers, 80-column lines of "La La"
        body = b"".join(b"La La La La La La La La La La La La La La La La La La La La La La La La La La\r\n"
                        for _ in range(10 * 1024 // 80))
        content = (b"From: <bench@example.org>\r\nTo: <rcpt@example.com>\r\n"
                   b"Date: Wed, 02 Dec 2026 07:00:00 +0000\r\nSubject: bench\r\n\r\n" + body)
    else:
        content = mime_messages.MESSAGES[workload.split("-")[0]]().replace(b"\n", b"\r\n")
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


def engine_for(code: Path, workload: str, tmp: Path):
    """An Engine with ``code``'s shipped rules, as bench/run.py configures its peers."""
    from smtpfilter.config.settings import load_config
    from smtpfilter.engine.judge import Engine
    from smtpfilter.engine.rules import rules_for

    attach = workload.endswith("-attach")
    files = [str(code / "rules")] if attach else [
        str(f) for f in sorted((code / "rules").glob("*.yaml")) if f.name != "30-attachments.yaml"]
    path = tmp / f"config-{workload}.yaml"
    path.write_text(f"rules: [{', '.join(files)}]\nlimits: {{message_size: 64m}}\n"
                    "log: {level: warning}\n")
    config = load_config(path)
    try:
        ruleset = rules_for(config, private_state=True)
    except TypeError:  # a revision before rate limits (issue 17) keeps no counters
        ruleset = rules_for(config)
    return Engine(config, ruleset)


def judge_loop(workload: str, count: int, code: Path, callgrind: bool = False) -> list[float]:
    from smtpfilter.core.envelope import Envelope, Recipient

    data = bytearray(message(workload))
    with tempfile.TemporaryDirectory() as tmp:
        engine = engine_for(code, workload, Path(tmp))
    envelope = Envelope(mail_from="bench@example.org", recipients=[Recipient("rcpt@example.com", "rcpt@example.com")])
    client = envelope.client()
    loop = asyncio.new_event_loop()
    times = []

    def judge(_: object = None, __: object = None) -> None:
        start = time.process_time()
        msg, decision, failure = loop.run_until_complete(engine.judge(
            envelope, client, data, received_at=datetime.now(timezone.utc)))
        times.append(time.process_time() - start)
        assert decision is not None, failure

    judge()  # warm-up: lazy imports, caches
    if callgrind:  # valgrind counts inside functools.reduce only (--toggle-collect)
        functools.reduce(judge, range(count + 1))
    else:
        for _ in range(count):
            judge()
    loop.close()
    return times[1:]


def child(args) -> None:
    times = judge_loop(args.workload, args.count, Path(args.code), args.quiet)
    if not args.quiet:
        print(statistics.median(times) * 1000)


def run_child(code: Path, workload: str, count: int, callgrind: bool, tmp: Path) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(code), str(HERE)]))
    command = [sys.executable, str(Path(__file__)), "--child", workload, "--count", str(count),
               "--code", str(code)]
    if not callgrind:
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        return float(out.stdout.strip())
    log = tmp / f"cg-{workload}-{count}.log"
    subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                    "--toggle-collect=functools_reduce", f"--log-file={log}", *command, "--quiet"],
                   env=dict(env, PYTHONMALLOC="malloc"), check=True, capture_output=True)
    refs = re.search(r"Collected : (\d+)", log.read_text())
    return float(refs.group(1)) if refs else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--code", default=str(ROOT), help="a source tree (code and rules/)")
    parser.add_argument("--callgrind", action="store_true", help="count instructions")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", metavar="WORKLOAD", dest="workload", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workload:
        child(args)
        return 0
    code = Path(args.code).resolve()
    if args.callgrind and not shutil.which("valgrind"):
        print("judge_cost: --callgrind needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 69
    with tempfile.TemporaryDirectory(prefix="judge-cost-") as tmp:
        for workload in args.workloads.split(","):
            if args.callgrind:
                reps = CALLGRIND_REPS[workload]
                count = run_child(code, workload, reps, True, Path(tmp))
                print(f"{workload:>11}  {count / reps / 1e6:8.3f} M instructions per judge"
                      f"  ({code})", flush=True)
            else:
                figures = [run_child(code, workload, REPS[workload], False, Path(tmp))
                           for _ in range(args.rounds)]
                print(f"{workload:>11}  {statistics.median(figures):8.3f} ms CPU per judge "
                      f"(median of {args.rounds} x {REPS[workload]})  ({code})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
