"""Command line: the only place that prints for humans and exits.

    smtpfilter serve [--config PATH] [--listen HOST:PORT] [--forward HOST:PORT]
    smtpfilter check-config [--config PATH]
    smtpfilter test [--config PATH] [--client-ip IP] [--json] MESSAGE.eml...
    smtpfilter pipe [--config=PATH] [--client-...=...] --sender=SENDER -- RECIPIENT...

Exit codes follow sysexits(3): 0 fine, 64 usage, 66 no input, 78 configuration error (systemd's
RestartPreventExitStatus=78 keeps a broken config from restart-looping). ``pipe`` is different:
pipe(8) bounces mail on any status but 0 and a few sysexits, so it only ever exits 0, 69
(reject) or 75 (try again), usage errors included (smtpfilter.pipe).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from . import __version__, replies, sdnotify, wire
from .config import Config, ConfigError, load_config
from .logs import setup_logging
from .message import Client, MessageContext
from .pipeline import observe, verdicts_of
from .policy import Policy
from .rules import RuleSet, rules_for

__all__ = ["main"]

log = logging.getLogger("smtpfilter.serve")

EX_OK = 0
EX_USAGE = 64
EX_NOINPUT = 66
EX_CONFIG = 78


def _load(args: argparse.Namespace) -> tuple[Config, RuleSet]:
    config = load_config(args.config).with_overrides(
        listen=getattr(args, "listen", None), forward=getattr(args, "forward", None)
    )
    return config, rules_for(config)


def _report_config_error(error: ConfigError, consequence: str) -> None:
    for problem in error.problems:
        print(f"smtpfilter: {problem}", file=sys.stderr)
    print(f"smtpfilter: {len(error.problems)} problem(s); {consequence}", file=sys.stderr)


# --- serve ---------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from .server import Server, run  # the listener's imports are not needed by the others

    try:
        config, ruleset = _load(args)
    except ConfigError as error:
        _report_config_error(error, "not starting")
        return EX_CONFIG
    setup_logging(config.log)
    overrides = {k: v for k, v in (("listen", args.listen), ("forward", args.forward)) if v}
    # systemd socket activation (smtpfilter.socket): take the port systemd holds for us.
    inherited = sdnotify.listen_sockets()
    for extra in inherited[1:]:
        log.warning("ignoring inherited socket %s: one listener is enough", extra.getsockname())
        extra.close()
    sock = inherited[0] if inherited else None
    if sock is not None:
        log.info(
            "using the listening socket systemd passed (%s); 'listen' is not used",
            sock.getsockname(),
        )
    try:
        if args.workers > 1:
            from .workers import run_workers

            return run_workers(
                config, ruleset, args.workers, config_path=args.config, overrides=overrides,
                sock=sock,
            )
        server = Server(config, ruleset, config_path=args.config, overrides=overrides, sock=sock)
        run(server.serve(), config.event_loop)
    except OSError as error:
        print(f"smtpfilter: cannot listen on {config.listen}: {error.strerror}", file=sys.stderr)
        return 71  # EX_OSERR
    return EX_OK


# --- check-config --------------------------------------------------------------------------
def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config, ruleset = _load(args)
    except ConfigError as error:
        _report_config_error(error, "the configuration is not usable")
        return EX_CONFIG
    source = config.source or "built-in defaults"
    print(f"{source}: ok; listen {config.listen}, forward {config.forward}, "
          f"hostname {config.hostname}")
    print(f"{len(ruleset)} rules from {len(ruleset.files)} files:")
    for rule in ruleset.rules:
        what = rule.action.value if rule.action else f"score {rule.score:g}"
        mode = " (warn mode)" if rule.mode.value == "warn" else ""
        print(f"  {rule.name:<24} {rule.kind:<7} {what}{mode}  {rule.check.describe()}")
    return EX_OK


# --- test ----------------------------------------------------------------------------------
def read_message_file(path: Path) -> bytes:
    """A stored message (.eml, LF or CRLF) → wire form; a leading mbox "From " line is dropped."""
    raw = path.read_bytes()
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    return wire.to_wire(raw)


def _client(ip: str | None) -> Client:
    if ip is None:
        return Client()
    return Client(addr=str(ipaddress.ip_address(ip)), name="unknown")


def cmd_test(args: argparse.Namespace) -> int:
    try:
        config, ruleset = _load(args)
    except ConfigError as error:
        _report_config_error(error, "cannot test")
        return EX_CONFIG
    if args.client_ip is not None:
        try:
            ipaddress.ip_address(args.client_ip)
        except ValueError:
            print(f"smtpfilter: --client-ip {args.client_ip!r} is not an IP address", file=sys.stderr)
            return EX_USAGE
    policy = Policy(config.policy, config.headers, dry_run=config.dry_run)
    status = EX_OK
    reports = []

    async def judge_all() -> None:
        nonlocal status
        for name in args.messages:
            path = Path(name)
            try:
                data = read_message_file(path)
            except OSError as error:
                print(f"smtpfilter: {path}: {error.strerror}", file=sys.stderr)
                status = EX_NOINPUT
                continue
            msg = MessageContext.build(
                data,
                received_at=datetime.now(timezone.utc),
                client=_client(args.client_ip),
                header_limit=config.limits.header_size,
            )
            results = await observe(ruleset, msg, observe_all=True)
            decision = policy.decide(verdicts_of(results))
            reply = replies.for_decision(decision) or "(delivered: 10026's reply to '.' is relayed)"
            reports.append((path, msg, results, decision, reply))
        await ruleset.env.dns.aclose()

    asyncio.run(judge_all())  # one event loop for all messages: the DNS cache is shared
    if args.json:
        print(json.dumps([_json_report(*r) for r in reports], indent=2))
    else:
        for report in reports:
            _print_report(*report)
    return status


def _json_report(path, msg, results, decision, reply) -> dict:
    return {
        "file": str(path),
        "size": msg.size,
        "rules": [
            {
                "rule": rule.name,
                "check": rule.kind,
                "finding": finding.code if finding else None,
                "reason": finding.reason if finding else None,
                "score": rule.score if finding else 0,
                "action": rule.action.value if rule.action else None,
                "mode": rule.mode.value,
            }
            for rule, finding in results
        ],
        "decision": {
            "action": decision.action.value,
            "intended": decision.intended.value if decision.intended else None,
            "rule": decision.rule,
            "score": decision.score,
            "reason": decision.reason,
            "headers": [f"{n}: {v}" for n, v in decision.headers],
        },
        "reply": reply,
    }


def _print_report(path, msg, results, decision, reply) -> None:
    print(f"{path}: {msg.size} bytes, {len(msg.headers)} headers"
          + (", header section ends at a malformed line" if msg.headers.malformed_at is not None else ""))
    width = max([len(rule.name) for rule, _ in results] + [4])
    for rule, finding in results:
        if finding is None:
            print(f"  {rule.name:<{width}}  -")
            continue
        action = rule.action.value if rule.action else "-"
        mode = " (warn mode)" if rule.mode.value == "warn" else ""
        print(f"  {rule.name:<{width}}  {finding.code}  score={rule.score:g}  action={action}{mode}")
        print(f"  {'':<{width}}  {finding.reason}")
    would = ""
    if decision.intended is not None and decision.intended is not decision.action:
        would = f" (would {decision.intended.value})"
    by = f" by {decision.rule}" if decision.rule else ""
    print(f"  decision: {decision.action.value}{would}{by}, score {decision.score:g}")
    for name, value in decision.headers:
        print(f"  header:   {name}: {value}")
    print(f"  reply:    {reply}")


# --- entry point ---------------------------------------------------------------------------
def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smtpfilter", description="SMTP content filter for Postfix (FILTER_README)."
    )
    parser.add_argument("--version", action="version", version=f"smtpfilter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", type=Path, help="YAML config file (default: built-in)")
        return p

    serve = with_config(sub.add_parser("serve", help="run the filter"))
    serve.add_argument("--listen", metavar="HOST:PORT", help="override listen (127.0.0.1:10025)")
    serve.add_argument("--forward", metavar="HOST:PORT", help="override forward (127.0.0.1:10026)")
    serve.add_argument(
        "--workers", type=_positive, default=1, metavar="N",
        help="worker processes sharing the port (default 1; about one per core)",
    )
    serve.set_defaults(func=cmd_serve)

    check = with_config(sub.add_parser("check-config", help="validate config and rules"))
    check.set_defaults(func=cmd_check_config)

    test = with_config(sub.add_parser("test", help="show each rule's finding for stored messages"))
    test.add_argument("--client-ip", metavar="IP", help="the client address for client rules")
    test.add_argument("--json", action="store_true", help="machine-readable output")
    test.add_argument("messages", nargs="+", metavar="MESSAGE.eml")
    test.set_defaults(func=cmd_test)

    # Listed for --help only: main() hands "pipe" to smtpfilter.pipe before parsing, whose
    # parser never exits with argparse's status 2 (see the module docstring).
    sub.add_parser(
        "pipe",
        help="filter one message from stdin for pipe(8) (FILTER_README simple mode)",
        description="See: smtpfilter pipe --help",
        add_help=False,
    )
    return parser


def _pipe(argv: list[str]) -> int:
    try:
        from .pipe import main as pipe_main
    except BaseException as error:  # a broken installation must defer mail, not bounce it
        print(f"4.3.0 smtpfilter pipe cannot start: {type(error).__name__}: {error}")
        return 75  # EX_TEMPFAIL
    return pipe_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pipe"]:
        return _pipe(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
