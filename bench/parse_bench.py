"""CPU and peak memory of MIME parsing strategies on the three issue-14 workloads, in-process.

    .venv/bin/python bench/parse_bench.py                    # every strategy (about 3 minutes)
    .venv/bin/python bench/parse_bench.py walk,shipped       # some of them
    .venv/bin/python bench/parse_bench.py --quick            # fewer repetitions: a smoke test

bench/run.py measures the whole filter; this isolates the rules' work per message.

Each (message, strategy) runs in a fresh subprocess: CPU = process_time per message (median of
rounds), peak RSS added = ru_maxrss after the work minus ru_maxrss once the message is built.
Strategies:
  compat32      email BytesParser(policy=compat32) + walk + filenames + decode every attachment
  default       the same with policy.default (EmailMessage, header objects)
  feed32        BytesFeedParser(compat32) fed 64 KB chunks (what a streaming reader would do)
  headersonly   compat32 parse + walk + filenames, no payload decoding (structure only)
  walk          engine.mime.walk: structure, part headers, names (no decoding)
  context       MessageContext.build alone (what every message costs today before rules)
  shipped       MessageContext.build + the rules of rules/30-attachments.yaml (walk, names,
                filetype.detect: first 36 KB + zip directory of every attachment)
  shipped+body  the same plus one body rule (text of every text part, HTML reduced)
"""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

REPS = {"10k": 300, "1m": 20, "25m": 3}
QUICK_REPS = {"10k": 20, "1m": 3, "25m": 1}

OUT = Path(tempfile.gettempdir()) / "smtpfilter-parse-bench"


def build(name):
    """The message in wire form, made once and kept in bench/out/ so that a child process's
    peak memory is the message plus the work, not the email package building it."""
    path = OUT / f"{name}.eml"
    if not path.exists():
        import mime_messages

        from smtpfilter.core.wire import to_wire

        OUT.mkdir(exist_ok=True)
        path.write_bytes(to_wire(mime_messages.MESSAGES[name]().replace(b"\n", b"\r\n")))
    return path.read_bytes()


def strategy(name):
    import email
    import email.parser
    import email.policy
    import email.feedparser
    from smtpfilter.core.wire import from_wire

    def stdlib(policy, decode=True):
        def run(data):
            msg = email.parser.BytesParser(policy=policy).parsebytes(from_wire(data))
            for part in msg.walk():
                if part.is_multipart():
                    continue
                part.get_filename()
                if decode:
                    part.get_payload(decode=True)
        return run

    def feed(data):
        content = from_wire(data)
        parser = email.feedparser.BytesFeedParser(policy=email.policy.compat32)
        for i in range(0, len(content), 65536):
            parser.feed(content[i:i + 65536])
        msg = parser.close()
        for part in msg.walk():
            if not part.is_multipart():
                part.get_filename()
                part.get_payload(decode=True)

    from smtpfilter.engine.filetype import detect
    from smtpfilter.engine.mime import walk

    def ours_walk(data):
        tree = walk(data)
        for part in tree.parts:
            _ = part.names

    def ours_rules(data):
        tree = walk(data)
        for part in tree.attachments():
            detect(part, archives=True)
        for part in tree.text_parts():
            part.text()

    from datetime import datetime, timezone

    from smtpfilter.core.message import MessageContext
    from smtpfilter.engine.mime import walk_message
    from smtpfilter.engine.rules import load_rules

    shipped = load_rules([HERE.parent / "rules" / "30-attachments.yaml"])
    OUT.mkdir(exist_ok=True)
    body_rule = OUT / "body_rule.yaml"
    body_rule.write_text("rules:\n  - {name: WIRE_FRAUD, check: body, match: ['wire transfer.*today'], score: 4}\n")
    with_body = load_rules([HERE.parent / "rules" / "30-attachments.yaml", body_rule])
    now = datetime.now(timezone.utc)

    def rules_of(ruleset):
        def run(data):
            msg = MessageContext.build(data, received_at=now)
            walk_message(msg, ruleset.mime)  # as engine/pipeline.py does first
            for rule in ruleset.rules:
                rule.check.observe(msg)
        return run

    def context_only(data):
        MessageContext.build(data, received_at=now)

    return {
        "compat32": stdlib(email.policy.compat32),
        "default": stdlib(email.policy.default),
        "feed32": feed,
        "headersonly": stdlib(email.policy.compat32, decode=False),
        "walk": ours_walk,
        "rules": ours_rules,
        "context": context_only,
        "shipped": rules_of(shipped),
        "shipped+body": rules_of(with_body),
    }[name]


def child(message, name, quick=False):
    data = build(message)
    run = strategy(name)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run(data)  # warm-up: imports, caches (its peak memory counts)
    times = []
    for _ in range((QUICK_REPS if quick else REPS)[message]):
        start = time.process_time()
        run(data)
        times.append(time.process_time() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import tracemalloc
    tracemalloc.start()
    run(data)
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({"ms": statistics.median(times) * 1000, "rss_added_kb": peak - base,
                      "traced": traced, "size": len(data)}))


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3], "--quick" in sys.argv)
    quick = "--quick" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--quick"]
    names = args[0].split(",") if args else [
        "compat32", "default", "feed32", "headersonly", "walk", "context", "shipped", "shipped+body"]
    for message in ("10k", "1m", "25m"):
        build(message)
    print(f"{'message':8} {'strategy':12} {'CPU ms/msg':>10} {'peak RSS added':>20} {'peak allocated (tracemalloc)':>30}")
    for message in ("10k", "1m", "25m"):
        for name in names:
            out = subprocess.run([sys.executable, __file__, "--child", message, name]
                                 + (["--quick"] if quick else []),
                                 capture_output=True, text=True, check=True).stdout
            result = json.loads(out)
            ratio = result["rss_added_kb"] * 1024 / result["size"]
            traced = result["traced"]
            print(f"{message:8} {name:12} {result['ms']:10.3f} {result['rss_added_kb'] / 1024:12.1f} MB ({ratio:.2f}x)"
                  f" {traced / 1048576:16.2f} MB ({traced / result['size']:.2f}x)")


if __name__ == "__main__":
    main()
