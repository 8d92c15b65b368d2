"""What issue 12's fidelity fixes cost per message, measured in process (no Postfix, no network).

    .venv/bin/python bench/fidelity_bench.py                 # ~20 s; prints one table
    .venv/bin/python bench/fidelity_bench.py --quick         # a smoke test: fewer rounds
    .venv/bin/python bench/fidelity_bench.py --code ../main  # the same measurements on another checkout

What changed on the message path, and what is measured for it:

- the header section is read as Postfix's is_header() reads it (obs-optional names): the header
  parse of every golden corpus message (tests/corpus/), µs per message;
- every Date header is judged: the shipped date rules on a message with one Date and on one
  with two, µs per message;
- an upstream X-Spam-Flag is renamed when we tag: building the outgoing parts with our headers
  and the incoming edits, µs per message;
- the hand-over to 10026 is logged: one more INFO line per delivered message, formatted and
  written to /dev/null the way the stderr handler writes it, µs per line;
- the message size follows Postfix: one postconf run per config load (start, reload), ms.

Each figure is the median of rounds; compare checkouts within one run of one machine only.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _rounds(function, loops: int, rounds: int) -> float:
    """Median seconds per call over ``rounds`` rounds of ``loops`` calls."""
    results = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(loops):
            function()
        results.append((time.perf_counter() - started) / loops)
    return statistics.median(results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds: a smoke test")
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout whose smtpfilter runs")
    args = parser.parse_args()
    sys.path.insert(0, str(args.code.resolve()))
    sys.path.insert(1, str(REPO))  # tests/corpus and tests/support from this checkout

    from smtpfilter.config.settings import HeadersConfig, load_config, shipped_rules_dir
    from smtpfilter.core.message import MessageContext, parse_header_block
    from smtpfilter.core.wire import outgoing
    from smtpfilter.engine.rules import load_rules
    from smtpfilter.service.logs import EscapingFormatter
    from tests.support import corpus

    loops, rounds = (200, 3) if args.quick else (2000, 7)
    now = datetime.now(timezone.utc)
    rows: list[tuple[str, str]] = []

    wires = [corpus.wire(name) for name in corpus.MESSAGES]
    per_message = _rounds(lambda: [parse_header_block(w) for w in wires], loops // 10, rounds)
    rows.append(("header parse, corpus (15 messages)", f"{per_message / len(wires) * 1e6:.1f} µs/msg"))

    dates = [r for r in load_rules([shipped_rules_dir()]).rules if r.kind == "date"]
    for label, heads in (("1 Date", "Date: Mon, 4 Mar 2024 10:00:00 +0000\r\n"),
                         ("2 Dates", "Date: Mon, 4 Mar 2024 10:00:00 +0000\r\n"
                                     "Date: Wed, 12 Jan 2011 08:00:00 +0000\r\n")):
        data = (heads + "From: <a@example.org>\r\nSubject: s\r\n\r\nbody\r\n").encode()

        def judge() -> None:
            msg = MessageContext.build(data, received_at=now)  # fresh memo: a parse each time
            for rule in dates:
                rule.check.observe(msg)

        rows.append((f"date rules ({len(dates)}), {label}", f"{_rounds(judge, loops, rounds) * 1e6:.1f} µs/msg"))

    data = corpus.wire("05-folded-encoded.eml")
    data = b"X-Spam-Flag: NO\r\nX-Smtpfilter-Status: No\r\n" + data
    msg = MessageContext.build(data, received_at=now)
    added = (("X-Spam-Flag", "YES"), ("X-Smtpfilter-Status", "Yes, score=5, rules=ROLEX(MATCH)"))
    headers = HeadersConfig()
    edits = headers.incoming(added) if hasattr(headers, "incoming") else (("X-Spam-Flag",),)
    rows.append(("outgoing parts, tagged, incoming edits",
                 f"{_rounds(lambda: outgoing(msg, added, *edits), loops, rounds) * 1e6:.1f} µs/msg"))

    with open("/dev/null", "w") as null:
        handler = logging.StreamHandler(null)
        handler.setFormatter(EscapingFormatter("%(levelname)s %(name)s: %(message)s"))
        bench_log = logging.getLogger("smtpfilter.bench")
        bench_log.addHandler(handler)
        bench_log.propagate = False
        bench_log.setLevel(logging.INFO)
        line = lambda: bench_log.info(  # noqa: E731 - the hand-over line, as transaction.py logs it
            "%s: handing over to %s: from=<%s>, size=%d", "918CF20C401", "127.0.0.1:10026",
            "you@example.net", 2301)
        rows.append(("hand-over log line", f"{_rounds(line, loops, rounds) * 1e6:.1f} µs/line"))

    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "smtpfilter.yaml"
        config.write_text(f"rules: [{shipped_rules_dir()}]\n")
        load = _rounds(lambda: load_config(config), max(loops // 100, 3), rounds)
        rows.append(("config load (postconf for the size)", f"{load * 1e3:.2f} ms/load"))

    width = max(len(name) for name, _ in rows)
    print(f"smtpfilter from {args.code.resolve()} ({'quick' if args.quick else 'full'} run)")
    for name, figure in rows:
        print(f"  {name:<{width}}  {figure:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
