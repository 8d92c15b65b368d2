"""Command line: the only place that prints for humans and exits.

    smtpfilter serve [--config PATH] [--listen HOST:PORT] [--forward HOST:PORT]
    smtpfilter milter [--config PATH] [--listen inet:HOST:PORT|unix:/PATH] [--workers N]
    smtpfilter check-config [--config PATH] [--no-connect] [--show | -n]
    smtpfilter test [--config PATH] [--received-hop N] [--client-ip IP] [--json] MESSAGE.eml...|-
    smtpfilter scan [--config PATH] [--received-hop N] [--json|--csv] MAILDIR|MBOX|DIRECTORY
    smtpfilter quarantine list|show|release|delete [--config PATH] [--json] [ID...]
    smtpfilter import-header-checks [--kind K] [--format regexp|pcre] [--prefix P] [--reject-as A] TABLE...
    smtpfilter doctor [--config PATH] [--postfix-config DIR]
    smtpfilter pipe [--config=PATH] [--client-...=...] --sender=SENDER -- RECIPIENT...
    smtpfilter policy [--config PATH] [--listen HOST:PORT]
    smtpfilter ratelimit show|reset [--config PATH] RULE:VALUE...

Without ``--config`` the commands read /etc/smtpfilter/smtpfilter.yaml when it exists, else the
built-in defaults and the shipped rules (DEFAULT_CONFIG).

Exit codes follow sysexits(3): 0 fine, 64 usage, 66 no input (``scan`` and ``test`` also when a
message was skipped, ``quarantine`` for a directory that does not exist), 71 an OS error
(cannot listen, a file the system refused), 73 cannot create an output file, 78 configuration
error (systemd's RestartPreventExitStatus=78 keeps a broken config from restart-looping);
``doctor`` exits 1 when it found problems and 69 when it cannot read Postfix's configuration.
``pipe`` is different: pipe(8) bounces mail on any status but 0 and a few sysexits, so it only
ever exits 0, 69 (reject) or 75 (try again), usage errors included (smtpfilter.frontdoors.pipe).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from smtpfilter import installed_version
from smtpfilter.config.settings import Config, ConfigError, HostPort, Problem, load_config
from smtpfilter.engine.policy import Policy
from smtpfilter.engine.rules import RuleSet, load_rules, rules_for
from smtpfilter.service import sdnotify
from smtpfilter.service.logs import setup_logging

__all__ = ["main"]

log = logging.getLogger("smtpfilter.serve")

EX_OK = 0
EX_USAGE = 64
EX_NOINPUT = 66
EX_SOFTWARE = 70
EX_OSERR = 71
EX_CANTCREAT = 73
EX_CONFIG = 78


def _load(args: argparse.Namespace, *, private_state: bool = False) -> tuple[Config, RuleSet]:
    config = load_config(args.config).with_overrides(
        listen=getattr(args, "listen", None), forward=getattr(args, "forward", None)
    )
    return config, rules_for(config, private_state=private_state)


def _print_warnings(ruleset: RuleSet) -> None:
    """Rule warnings for a command run by hand: on stderr, like its problems."""
    for warning in ruleset.warnings:
        print(f"smtpfilter: warning: {warning}", file=sys.stderr)


def _report_config_error(error: ConfigError, consequence: str) -> None:
    for problem in error.problems:
        print(f"smtpfilter: {problem}", file=sys.stderr)
    print(f"smtpfilter: {len(error.problems)} problem(s); {consequence}", file=sys.stderr)


# --- serve ---------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from smtpfilter.frontdoors.smtp.server import Server, run  # not needed by other commands

    try:
        config, ruleset = _load(args)
    except ConfigError as error:
        _report_config_error(error, "not starting")
        return EX_CONFIG
    setup_logging(config.log)
    for warning in ruleset.warnings:  # in the log, now that there is one (syslog, journald)
        log.warning("%s", warning)
    if args.workers > 1 and _ratelimit_rules(ruleset) and not ruleset.env.state.shared:
        log.warning("%s", _multiplied(args.workers))
    overrides = {k: v for k, v in (("listen", args.listen), ("forward", args.forward)) if v}
    # systemd socket activation (smtpfilter.socket): take the port systemd holds for us.
    inherited = sdnotify.listen_sockets()
    from smtpfilter.core.logline import peer  # an address as the log writes it (host:port)

    for extra in inherited[1:]:
        log.warning("ignoring inherited socket %s: one listener is enough",
                    peer(extra.getsockname()))
        extra.close()
    sock = inherited[0] if inherited else None
    if sock is not None:
        log.info(
            "using the listening socket systemd passed (%s); 'listen' is not used",
            peer(sock.getsockname()),
        )
    if args.workers == 1:
        # Only a supervisor sets up prometheus_client's multiprocess mode (service/workers.py);
        # one inherited from elsewhere would mix that directory's values into ours.
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    try:
        if args.workers > 1:
            from smtpfilter.service.workers import run_workers

            return run_workers(
                config, ruleset, args.workers, daemon=_smtp_daemon, config_path=args.config,
                overrides=overrides, sock=sock,
            )
        server = Server(
            config, ruleset, config_path=args.config, overrides=overrides, sock=sock,
            handed_over=sock is not None,
        )
        run(server.serve(), config.event_loop)
    except OSError as error:
        print(f"smtpfilter: cannot listen on {config.listen}: {error.strerror}", file=sys.stderr)
        return EX_OSERR
    return EX_OK


def _smtp_daemon() -> type:
    """The daemon each worker runs, imported in the worker (service/workers.py)."""
    from smtpfilter.frontdoors.smtp.server import Server

    return Server


# --- milter --------------------------------------------------------------------------------
def cmd_milter(args: argparse.Namespace) -> int:
    """The milter front door: Postfix's smtpd_milters, the same rules as ``serve``."""
    from dataclasses import replace

    from smtpfilter.config.settings import parse_milter_listen
    from smtpfilter.frontdoors.milter.server import MilterDaemon, bind_milter
    from smtpfilter.service.lifecycle import run

    try:
        config = load_config(args.config)  # not _load: --listen is the milter's, not serve's
        ruleset = rules_for(config)
        if args.listen is not None:
            try:
                listen = parse_milter_listen(args.listen)
            except ValueError as error:
                raise ConfigError([Problem("--listen", str(error))]) from None
            config = replace(config, milter=replace(config.milter, listen=listen))
    except ConfigError as error:
        _report_config_error(error, "not starting")
        return EX_CONFIG
    if args.workers > 1 and config.milter.listen.family == "unix":
        print(f"smtpfilter: --workers needs an inet: listen; {config.milter.listen} cannot be "
              f"shared by several processes", file=sys.stderr)
        return EX_USAGE
    setup_logging(config.log)
    for warning in ruleset.warnings:
        log.warning("%s", warning)
    if args.workers == 1:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # as serve: only a supervisor sets it
    try:
        if args.workers > 1:
            from smtpfilter.service.workers import run_workers

            return run_workers(config, ruleset, args.workers, daemon=_milter_daemon,
                               config_path=args.config, binder=bind_milter)
        daemon = MilterDaemon(config, ruleset, config_path=args.config)
        run(daemon.serve(), config.event_loop)
    except OSError as error:
        print(f"smtpfilter: cannot listen on {config.milter.listen}: "
              f"{error.strerror or error}", file=sys.stderr)
        return EX_OSERR
    return EX_OK


def _milter_daemon() -> type:
    """The daemon each worker runs, imported in the worker (service/workers.py)."""
    from smtpfilter.frontdoors.milter.server import MilterDaemon

    return MilterDaemon


# --- check-config --------------------------------------------------------------------------
FORWARD_CHECK_TIMEOUT = 2.0  # seconds: a local smtpd greets in milliseconds


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config, ruleset = _load(args)
    except ConfigError as error:
        _report_config_error(error, "the configuration is not usable")
        return EX_CONFIG
    if args.show or args.changed:
        from smtpfilter.tools.effective import effective_config

        print(effective_config(config, args.config, changed_only=args.changed), end="")
        return EX_OK
    # Everything is found first, so the report can end with the count; warnings go to
    # stderr and leave the exit code at 0 (usable, as with postfix check).
    out: list[str] = []
    warnings: list[str] = [str(warning) for warning in ruleset.warnings]
    warnings += _listen_warnings(config)
    if not args.no_connect:
        problem = _forward_problem(config)
        if problem:
            warnings.append(problem)
    source = config.source or "built-in defaults"
    out.append(f"{source}: ok; listen {config.listen}, forward {config.forward}, "
               f"hostname {config.hostname}")
    out.append(f"{len(ruleset)} rules from {len(ruleset.files)} files:")
    per_file = {name: 0 for name in ruleset.files}
    for rule in ruleset.rules:
        per_file[rule.where.rsplit(":", 1)[0]] = per_file.get(rule.where.rsplit(":", 1)[0], 0) + 1
    for name, count in per_file.items():
        out.append(f"  {name}: {count} rule{'s' if count != 1 else ''}")
    for rule in ruleset.rules:
        what = rule.action.value if rule.action else f"score {rule.score:g}"
        if getattr(rule.check, "table_actions", False):
            what = "per line"
        mode = " (warn mode)" if rule.mode.value == "warn" else ""
        out.append(f"  {rule.name:<24} {rule.kind:<7} {what}{mode}  {rule.check.describe()}")
    out.extend(_observe_only_lines(config, ruleset))
    _check_message_size(config, out, warnings)
    _check_quarantine(config, ruleset, out, warnings)
    _check_ratelimit(config, ruleset, out, warnings)
    if config.metrics.listen is not None:
        out.append(f"metrics: http://{config.metrics.listen}/metrics")
    for warning in warnings:
        print(f"smtpfilter: warning: {warning}", file=sys.stderr)
    count = len(warnings)
    out.append(f"ok, {count} warning{'s' if count != 1 else ''}"
               + (" (on stderr, above)" if count else ""))
    print("\n".join(out))
    return EX_OK


def _observe_only_lines(config: Config, ruleset: RuleSet) -> list[str]:
    """Whether anything only observes: the first thing to know when mail is not stopped."""
    warned = [rule.name for rule in ruleset.rules if rule.mode.value == "warn"]
    lines = ["dry_run: on: no rule acts; every message is delivered untouched, the log says "
             "what would have happened" if config.dry_run else "dry_run: off"]
    if warned:
        lines.append(f"mode: warn: {len(warned)} rule{'s' if len(warned) != 1 else ''} only "
                     f"observe ({', '.join(warned)})")
    else:
        lines.append("mode: warn: no rule")
    return lines


def _listen_warnings(config: Config) -> list[str]:
    """Every listener beyond loopback: the product listens on loopback unless told otherwise,
    and each of these is reached by whoever reaches the address."""
    found = []
    if not config.listen.is_loopback:
        found.append(f"listen {config.listen} is beyond loopback: other hosts can connect "
                     f"(allow_clients decides whom the filter serves); Postfix's "
                     f"content_filter needs only 127.0.0.1")
    milter = config.milter.listen
    if milter.family == "inet" and not HostPort(milter.host, milter.port).is_loopback:
        found.append(f"milter.listen {milter} is beyond loopback: other hosts can connect; "
                     f"Postfix's smtpd_milters needs only 127.0.0.1")
    if not config.policy_service.listen.is_loopback:
        found.append(f"policy_service.listen {config.policy_service.listen} is beyond "
                     f"loopback: other hosts can query the policy service and count against "
                     f"the rate limits")
    # metrics.listen beyond loopback is a configuration error already (config/settings.py).
    return found


def _forward_problem(config: Config) -> str | None:
    """Why ``forward`` would not take mail now (a TCP connect and the 220 greeting), or None.

    smtplib, because this is one blocking exchange in a command line tool; local_hostname is
    given so that it does not ask DNS for our own name (socket.getfqdn)."""
    import smtplib

    forward = config.forward
    consequence = ("until it answers, the filter answers 451 and Postfix keeps the mail queued "
                   "(the reinjection smtpd in master.cf, FILTER_README; --no-connect skips "
                   "this check)")
    client = smtplib.SMTP(local_hostname="localhost", timeout=FORWARD_CHECK_TIMEOUT)
    try:
        code, text = client.connect(forward.host, forward.port)
    except (OSError, smtplib.SMTPException) as error:
        why = getattr(error, "strerror", None) or str(error) or type(error).__name__
        if isinstance(error, TimeoutError) or "timed out" in why:
            why = f"no greeting within {FORWARD_CHECK_TIMEOUT:g} s"
        return f"forward {forward} does not answer ({why}): {consequence}"
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()
    if code != 220:
        greeting = text.decode("utf-8", "replace")
        return f"forward {forward} greets with '{code} {clean_line(greeting)}': {consequence}"
    return None


def clean_line(text: str) -> str:
    from smtpfilter.tools.report import clean

    return clean(text.replace("\n", " "), 200)


def _check_message_size(config: Config, out: list[str], warnings: list[str]) -> None:
    size = config.limits.message_size
    shown = f"{size} bytes" if size else "no limit"
    if config.limits.follows_postfix:
        out.append(f"message size: {shown}, Postfix's message_size_limit ({config.postfix.read})")
    else:
        out.append(f"message size: {shown} (limits.message_size)")
    problem = config.size_disagreement()
    if problem:
        warnings.append(f"{config.source}: {problem}")


def _check_quarantine(config: Config, ruleset: RuleSet, out: list[str],
                      warnings: list[str]) -> None:
    from smtpfilter.core.verdict import Action
    from smtpfilter.delivery.quarantine import check_directory

    used = any(rule.action is Action.QUARANTINE for rule in ruleset.rules) or any(
        action is Action.QUARANTINE for _, action in config.policy.thresholds
    )
    if not used:
        return
    directory = config.quarantine.directory
    problem = check_directory(directory)
    if problem is None:
        out.append(f"quarantine: {directory}")
    else:
        warnings.append(f"quarantine: {problem} (checked as uid {os.getuid()}); the filter "
                        f"answers 451 to messages it cannot quarantine, and Postfix keeps them "
                        f"queued")


def _ratelimit_rules(ruleset: RuleSet) -> list:
    return [rule for rule in ruleset.rules if rule.kind == "ratelimit"]


def _multiplied(workers: int | str) -> str:
    return (f"ratelimit rules count in each process's memory (no state.redis): with serve "
            f"--workers {workers} every limit is multiplied by {workers}, and every MX host "
            f"counts on its own; set state.redis to share one count")


def _check_ratelimit(config: Config, ruleset: RuleSet, out: list[str],
                     warnings: list[str]) -> None:
    rules = _ratelimit_rules(ruleset)
    if not rules:
        return
    if config.state.redis:
        out.append(f"rate limits: counted in {config.state.redis}")
    else:
        warnings.append(_multiplied("N"))
    for rule in rules:
        if rule.check.key == "sasl_user":
            warnings.append(f"{rule.where}: rule {rule.name}: key sasl_user is known to the "
                            f"policy service (smtpfilter policy) and the milter only; the "
                            f"content filter and pipe skip this rule")


# --- test and scan -------------------------------------------------------------------------
def _hop(text: str) -> int | str | None:
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a number (1 = the topmost Received:), auto or 0") from None
    if value < 0:
        raise argparse.ArgumentTypeError("cannot be negative")
    return value or None


def _check_client_ip(args: argparse.Namespace) -> bool:
    if args.client_ip is None:
        return True
    try:
        args.client_ip = str(ipaddress.ip_address(args.client_ip))
        return True
    except ValueError:
        print(f"smtpfilter: --client-ip {args.client_ip!r} is not an IP address", file=sys.stderr)
        return False


def cmd_test(args: argparse.Namespace) -> int:
    from smtpfilter.tools.report import ignored_note, judged_json, judged_report
    from smtpfilter.tools.scan import judge, open_source, read_stdin

    try:
        config, ruleset = _load(args, private_state=True)  # never the live rate-limit counters
    except ConfigError as error:
        _report_config_error(error, "cannot test")
        return EX_CONFIG
    _print_warnings(ruleset)
    if not _check_client_ip(args):
        return EX_USAGE
    policy = Policy.for_config(config)
    options = dict(hop=args.received_hop, client_ip=args.client_ip,
                   header_limit=config.limits.header_size)
    status = EX_OK
    reports = []

    async def judge_each() -> None:
        nonlocal status
        for name in args.messages:
            try:
                source = read_stdin(sys.stdin.buffer) if name == "-" else open_source(Path(name))
            except (OSError, ValueError) as error:
                print(f"smtpfilter: {name}: {_why(error, name)}", file=sys.stderr)
                status = EX_NOINPUT
                continue
            if source.ignored:
                print(f"smtpfilter: {ignored_note(source)}", file=sys.stderr)
            try:
                for stored in source.messages():
                    reports.append(await judge(ruleset, policy, stored, **options))
            finally:
                source.close()
        await ruleset.env.dns.aclose()

    asyncio.run(judge_each())  # one event loop for all messages: the DNS cache is shared
    for judged in reports:
        if judged.error:
            print(f"smtpfilter: {judged.label}: skipped: {judged.error}", file=sys.stderr)
            status = EX_NOINPUT
        elif judged.view is not None and judged.view.warning:
            print(f"smtpfilter: warning: {judged.label}: {judged.view.warning}", file=sys.stderr)
    reports = [judged for judged in reports if not judged.error]
    if args.json:
        print(json.dumps([judged_json(j) for j in reports], indent=2, ensure_ascii=False))
    else:
        for judged in reports:
            print(judged_report(judged, dry_run=config.dry_run), end="")
    return status


def _why(error: Exception, given: object) -> str:
    """An OSError's own words, with the file it names when that is not the one given (a
    Maildir's cur/ that cannot be listed)."""
    if isinstance(error, OSError) and error.strerror:
        named = error.filename is not None and str(error.filename) != str(given)
        return error.strerror + (f" ({error.filename})" if named else "")
    return str(error)


def cmd_scan(args: argparse.Namespace) -> int:
    import csv
    import time

    from smtpfilter.tools.report import (
        CSV_FIELDS, ignored_note, scan_csv_row, scan_json, scan_summary,
    )
    from smtpfilter.tools.scan import Summary, judge_all, open_source

    try:
        config, ruleset = _load(args, private_state=True)  # never the live rate-limit counters
    except ConfigError as error:
        _report_config_error(error, "cannot scan")
        return EX_CONFIG
    _print_warnings(ruleset)
    if not _check_client_ip(args):
        return EX_USAGE
    try:
        source = open_source(args.path)
    except (OSError, ValueError) as error:
        print(f"smtpfilter: {args.path}: {_why(error, args.path)}", file=sys.stderr)
        return EX_NOINPUT
    if source.ignored:
        print(f"smtpfilter: {ignored_note(source)}", file=sys.stderr)
    policy = Policy.for_config(config)
    summary = Summary()
    writer = csv.DictWriter(sys.stdout, CSV_FIELDS) if args.csv else None
    if writer:
        writer.writeheader()
    progress = sys.stderr.isatty()  # a bar only for a human watching; never in a pipe or log
    started = time.monotonic()

    async def run() -> None:
        shown = 0.0
        async for judged in judge_all(
            ruleset, policy, source.messages(), hop=args.received_hop,
            client_ip=args.client_ip, header_limit=config.limits.header_size,
        ):
            summary.add(judged)
            if judged.error:
                print(f"smtpfilter: {judged.label}: skipped: {judged.error}", file=sys.stderr)
            elif writer:
                writer.writerow(scan_csv_row(judged))
            done = summary.messages + len(summary.skipped)
            if progress and (time.monotonic() - shown > 0.2 or done == source.count):
                shown = time.monotonic()
                width = 30
                filled = width * done // max(source.count, 1)
                rate = done / max(shown - started, 1e-6)
                print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{source.count} "
                      f"{rate:.0f}/s", end="", file=sys.stderr, flush=True)
        await ruleset.env.dns.aclose()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        print("\nsmtpfilter: interrupted; the summary covers the messages scanned so far",
              file=sys.stderr)
    finally:
        source.close()
        if progress:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
    if summary.hop_missing:
        label, warning = summary.hop_missing[0]
        more = len(summary.hop_missing) - 1
        print(f"smtpfilter: warning: {label}: {warning}"
              + (f" (and {more} more message{'s' if more != 1 else ''})" if more else ""),
              file=sys.stderr)
    if args.json:
        print(json.dumps(scan_json(source, summary), indent=2, ensure_ascii=False))
    elif not args.csv:
        print(scan_summary(source, summary), end="")
    if summary.skipped:
        print(f"smtpfilter: {len(summary.skipped)} message(s) skipped (above): not judged",
              file=sys.stderr)
        return EX_NOINPUT
    if source.ignored and not summary.messages:
        return EX_NOINPUT  # nothing read at all: likely the wrong folder
    return EX_OK


# --- quarantine ----------------------------------------------------------------------------
def _setting_source(config_path: Path | None, *keys: str) -> str:
    """Where a setting comes from: ``file:line``, or which default applies and why."""
    from smtpfilter.config.yamlfile import Mapping, YamlError, load_file

    if config_path is None:
        return "the built-in default, no config file"
    try:
        data = load_file(config_path)
    except YamlError:
        return f"as {config_path} sets it"  # it loaded a moment ago; say no more than known
    for key in keys[:-1]:
        data = data.get(key) if isinstance(data, Mapping) else None
    if isinstance(data, Mapping) and keys[-1] in data:
        return data.where(keys[-1])
    return f"the default, {config_path} does not set it"


EX_TEMPFAIL = 75  # sysexits(3): the message stays in quarantine, try again later


def cmd_quarantine(args: argparse.Namespace) -> int:
    from smtpfilter.delivery import quarantine
    from smtpfilter.tools.report import clean, quarantine_json, quarantine_list, quarantine_show

    try:
        config = load_config(args.config)
    except ConfigError as error:
        _report_config_error(error, "cannot open the quarantine")
        return EX_CONFIG
    store = quarantine.Quarantine(config.quarantine.directory)
    if not store.directory.is_dir():
        # The filter creates it on the first quarantined message; "empty" would hide a typo'd
        # directory, or a command run with another config than the service's.
        what = "is not a directory" if store.directory.exists() else "does not exist"
        print(f"smtpfilter: quarantine directory {store.directory} {what} (quarantine.directory: "
              f"{_setting_source(args.config, 'quarantine', 'directory')}); the filter creates it "
              f"when it quarantines a first message", file=sys.stderr)
        return EX_NOINPUT
    try:
        if args.operation == "list":
            entries = store.entries()
            if args.json:
                print(quarantine.json_text([e.meta | {"id": e.id, "file": str(e.path)}
                                            for e in entries]))
            else:
                print(quarantine_list(store, entries), end="")
            return EX_OK
        if args.operation == "show":
            entries = [store.get(entry_id) for entry_id in args.ids]
            if args.json:
                print(quarantine.json_text([quarantine_json(store, e) for e in entries]))
            else:
                for entry in entries:
                    print(quarantine_show(store, entry), end="")
            return EX_OK
        if args.operation == "delete":
            for entry_id in args.ids:
                store.remove(store.get(entry_id))
                print(f"{entry_id}: deleted")
            return EX_OK
    except quarantine.QuarantineError as error:
        print(f"smtpfilter: {error}", file=sys.stderr)
        return EX_NOINPUT
    # release
    status = EX_OK
    for entry_id in args.ids:
        try:
            result = asyncio.run(quarantine.release(config, entry_id))
        except quarantine.QuarantineError as error:
            print(f"smtpfilter: {error}", file=sys.stderr)
            status = EX_NOINPUT
            continue
        for address, reply in result.refused:
            print(f"{entry_id}: {clean(address)}: refused by {config.forward}: {reply}",
                  file=sys.stderr)
        delivered = ", ".join(clean(address) for address in result.delivered)
        if result.removed:
            print(f"{entry_id}: released to {delivered}: {result.reply}")
        elif result.delivered:
            print(f"{entry_id}: released to {delivered}: {result.reply}; "
                  f"kept in quarantine for the refused recipients")
            status = EX_TEMPFAIL
        else:
            print(f"{entry_id}: not released, kept in quarantine: {result.reply}",
                  file=sys.stderr)
            status = EX_TEMPFAIL
    return status


# --- import-header-checks ------------------------------------------------------------------
def cmd_import_header_checks(args: argparse.Namespace) -> int:
    import tempfile

    from smtpfilter.postfix.importer import convert
    from smtpfilter.postfix.tables import read_table

    tables = []
    for spec in args.tables:
        try:
            tables.append(read_table(spec, args.format))
        except OSError as error:
            print(f"smtpfilter: {spec}: {error.strerror}", file=sys.stderr)
            return EX_NOINPUT
    conversion = convert(tables, prefix=args.prefix, reject_as=args.reject_as, kind=args.kind)
    for note in conversion.notes:
        print(f"smtpfilter: {note}", file=sys.stderr)
    # The generated rules must load; if they do not, that is our bug, not the admin's table.
    with tempfile.TemporaryDirectory() as scratch:
        check = Path(scratch) / "imported.yaml"
        check.write_text(conversion.yaml, encoding="utf-8")
        try:
            load_rules([check])
        except ConfigError as error:
            print(f"smtpfilter: internal error, the generated rules do not load: {error}",
                  file=sys.stderr)
            return EX_SOFTWARE
    if args.output:
        try:
            args.output.write_text(conversion.yaml, encoding="utf-8")
        except OSError as error:
            print(f"smtpfilter: --output {args.output}: cannot write: "
                  f"{error.strerror or error}", file=sys.stderr)
            return EX_CANTCREAT
    else:
        print(conversion.yaml, end="")
    skipped = sum(1 for note in conversion.notes if note.skipped)
    print(f"smtpfilter: {conversion.lines} table lines, {conversion.rules} rules"
          + (f", {skipped} line(s) not imported (above)" if skipped else ""), file=sys.stderr)
    return EX_OK


# --- policy and ratelimit ------------------------------------------------------------------
def cmd_policy(args: argparse.Namespace) -> int:
    from smtpfilter.frontdoors.policyd import PolicyDaemon
    from smtpfilter.service.lifecycle import run

    try:
        config = load_config(args.config)
        listen = args.listen or str(config.policy_service.listen)
        config = config.with_overrides(listen=listen)
        ruleset = rules_for(config)
    except ConfigError as error:
        _report_config_error(error, "not starting")
        return EX_CONFIG
    setup_logging(config.log)
    for warning in ruleset.warnings:
        log.warning("%s", warning)
    if not _ratelimit_rules(ruleset):
        log.warning("no ratelimit rules in %s: every request is answered DUNNO",
                    ", ".join(ruleset.files) or "the rules")
    daemon = PolicyDaemon(config, ruleset, config_path=args.config,
                          overrides={"listen": listen})
    try:
        run(daemon.serve(), config.event_loop)
    except OSError as error:
        print(f"smtpfilter: cannot listen on {config.listen}: {error.strerror}", file=sys.stderr)
        return EX_OSERR
    return EX_OK


def cmd_ratelimit(args: argparse.Namespace) -> int:
    from smtpfilter.engine.state import StateError, format_period

    try:
        config, ruleset = _load(args)
    except ConfigError as error:
        _report_config_error(error, "cannot reach the counters")
        return EX_CONFIG
    rules = {rule.name: rule for rule in _ratelimit_rules(ruleset)}
    keys = []
    for text in args.keys:
        name, sep, value = text.partition(":")
        rule = rules.get(name)
        if not sep or not value or rule is None:
            known = ", ".join(rules) or "none in the rules"
            print(f"smtpfilter: {text!r}: expected RULE:VALUE with a ratelimit rule "
                  f"({known}), e.g. CLIENT_RATE:81.2.69.10", file=sys.stderr)
            return EX_USAGE
        keys.append((rule, f"{name}:{rule.check.normalise(value)}"))
    if not ruleset.env.state.shared:
        print("smtpfilter: warning: no state.redis: the counters live in each serve process's "
              "memory, which this command cannot reach; showing an empty store", file=sys.stderr)
    state = ruleset.env.state

    async def each() -> int:
        try:
            for rule, key in keys:
                if args.operation == "reset":
                    removed = await state.reset(key)
                    print(f"{key}: {'reset' if removed else 'nothing counted'}")
                    continue
                usage = await state.show(key, rule.check.limit.period)
                print(f"{key}: {usage.count}/{rule.check.limit.count} in the last "
                      f"{format_period(rule.check.limit.period)} ({rule.check.describe()})")
                for entry in usage.entries:
                    pending = "  (pending: its message is not yet delivered)" if entry.pending else ""
                    print(f"  {entry.age:10.1f}s ago{pending}")
        except StateError as error:
            print(f"smtpfilter: {error}", file=sys.stderr)
            return 69  # EX_UNAVAILABLE
        finally:
            await state.aclose()
        return EX_OK

    return asyncio.run(each())


# --- doctor --------------------------------------------------------------------------------
EX_UNAVAILABLE = 69


def cmd_doctor(args: argparse.Namespace) -> int:
    from smtpfilter.config.postconf import Postconf, PostconfError
    from smtpfilter.tools.doctor import diagnose

    try:
        # The rules too: a rules directory the service user cannot read stops serve as surely
        # as a wrong port does, and doctor is where an admin asks "why does it not start?".
        config, _ruleset = _load(args, private_state=True)
    except ConfigError as error:
        _report_config_error(error, "cannot check Postfix against it")
        return EX_CONFIG
    directory = args.postfix_config or config.postfix.config_directory
    try:
        report = diagnose(config, Postconf(directory))
    except PostconfError as error:
        print(f"smtpfilter: cannot read Postfix's configuration: {error}", file=sys.stderr)
        return EX_UNAVAILABLE
    print(f"{report.postfix}; smtpfilter {config.source or 'built-in defaults'}: listen "
          f"{config.listen}, forward {config.forward}")
    for route in report.routes:
        print(route)
    for finding in report.findings:
        print(finding)
    count = len(report.findings)
    print(f"{count} problem(s)" if count else "no problems found")
    return 1 if count else EX_OK


# --- entry point ---------------------------------------------------------------------------
def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


DEFAULT_CONFIG = Path("/etc/smtpfilter/smtpfilter.yaml")
CONFIG_HELP = (f"YAML config file (default: {DEFAULT_CONFIG} when it exists, else the built-in "
               f"defaults and the shipped rules)")


class _Version(argparse.Action):
    """--version: the installed version, looked up only when asked (argparse's own "version"
    action needs the text when the parser is built, for every command)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the installed version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"smtpfilter {installed_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, subcommands included (the man page is generated from it)."""
    parser = argparse.ArgumentParser(
        prog="smtpfilter", description="SMTP content filter for Postfix (FILTER_README)."
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent, name: str, summary: str, description: str | None = None,
                config: bool = True, **kwargs) -> argparse.ArgumentParser:
        """A subcommand: ``summary`` is its line in the parent's --help, ``description`` the
        top of its own (the summary as a sentence unless given)."""
        p = parent.add_parser(name, help=summary,
                              description=description or summary[0].upper() + summary[1:] + ".",
                              **kwargs)
        if config:
            p.add_argument("--config", "-c", type=Path, metavar="PATH", help=CONFIG_HELP)
        return p

    serve = command(sub, "serve", "run the filter: listen for Postfix's content_filter, "
                    "deliver to its reinjection port")
    serve.add_argument("--listen", metavar="HOST:PORT", help="override listen (127.0.0.1:10025)")
    serve.add_argument("--forward", metavar="HOST:PORT", help="override forward (127.0.0.1:10026)")
    serve.add_argument(
        "--workers", type=_positive, default=1, metavar="N",
        help="worker processes sharing the port (default 1; about one per core)",
    )
    serve.set_defaults(func=cmd_serve)

    milter = command(
        sub, "milter", "run the filter as a milter for Postfix's smtpd_milters",
        description="Serve the rules to Postfix as a milter (smtpd_milters = inet:127.0.0.1:"
        "11332): decisions reach the sending client during the SMTP session, nothing is "
        "queued twice.")
    milter.add_argument("--listen", metavar="inet:HOST:PORT|unix:/PATH",
                        help="override milter.listen (inet:127.0.0.1:11332)")
    milter.add_argument(
        "--workers", type=_positive, default=1, metavar="N",
        help="worker processes sharing an inet: port (default 1; about one per core)",
    )
    milter.set_defaults(func=cmd_milter)

    check = command(
        sub, "check-config", "validate the config and rules, and say what they amount to",
        description="Validate the config and the rules; print the addresses, the rule files "
        "and their rules, observe-only modes, and warnings (exit 0 with warnings, 78 on "
        "problems, like postfix check).")
    check.add_argument("--no-connect", action="store_true",
                       help="do not check that forward answers (a TCP connect and its "
                       "greeting, 2 s at most)")
    check.add_argument("--show", action="store_true",
                       help="print every effective setting as YAML, the way postconf prints "
                       "main.cf, instead of the report")
    check.add_argument("-n", dest="changed", action="store_true",
                       help="--show only the settings that differ from the defaults "
                       "(like postconf -n)")
    check.set_defaults(func=cmd_check_config)

    def stored_mail_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--received-hop", type=_hop, default="auto", metavar="N",
            help="the Received: header your Postfix added on arrival, 1 = topmost (default "
            "auto: the first from a non-loopback client, LMTP skipped; 0: none, the message "
            "as it is, judged now). Headers above it are ignored; its date is the receipt "
            "time, its address the client",
        )
        p.add_argument("--client-ip", metavar="IP",
                       help="the client address for client rules (instead of Received:)")

    test = command(sub, "test", "show each rule's finding, the decision and the reply for "
                   "stored messages")
    stored_mail_options(test)
    test.add_argument("--json", action="store_true", help="machine-readable output")
    test.add_argument("messages", nargs="+", metavar="MESSAGE",
                      help="a message file (.eml, or one mbox message), a mailbox, or - for "
                      "standard input")
    test.set_defaults(func=cmd_test)

    scan = command(sub, "scan", "replay a Maildir, an mbox or a directory of .eml through "
                   "the rules (exit 66 when a message was skipped)")
    stored_mail_options(scan)
    output = scan.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="summary and flagged messages as JSON")
    output.add_argument("--csv", action="store_true", help="one CSV row per message")
    scan.add_argument("path", type=Path, metavar="PATH",
                      help="a Maildir (or its new/ or cur/), an mbox, a directory of *.eml, "
                      "or one message file")
    scan.set_defaults(func=cmd_scan)

    hc = command(
        sub, "import-header-checks",
        "convert Postfix header_checks tables into smtpfilter rules (YAML on stdout)",
        config=False,
    )
    hc.add_argument("tables", nargs="+", metavar="TABLE",
                    help="a file, or type:file as in main.cf (regexp:/etc/postfix/header_checks)")
    hc.add_argument("--format", choices=("regexp", "pcre"),
                    help="table type when TABLE has no type: prefix (default: regexp, "
                    "or pcre for *.pcre)")
    hc.add_argument("--prefix", default="", help="prepended to every rule name")
    hc.add_argument("--reject-as", choices=("reject", "discard", "quarantine", "tag", "warn"),
                    default="reject", help="what REJECT lines become (after queue a reject bounces)")
    hc.add_argument("--kind", choices=("header", "mime_header", "nested_header", "body"),
                    default="header", help="which Postfix table class the tables are: "
                    "header_checks (default), mime_header_checks, nested_header_checks or "
                    "body_checks")
    hc.add_argument("--output", "-o", type=Path, help="write the YAML here instead of stdout")
    hc.set_defaults(func=cmd_import_header_checks)

    doctor = command(
        sub, "doctor", "check how Postfix is wired to smtpfilter (reads it with postconf, "
        "changes nothing); exit 1 on problems")
    doctor.add_argument("--postfix-config", type=Path, metavar="DIR",
                        help="Postfix's configuration directory (default: postfix."
                        "config_directory of the config, else postconf's own, /etc/postfix)")
    doctor.set_defaults(func=cmd_doctor)

    quarantine = command(
        sub, "quarantine", "list, show, release or delete quarantined messages", config=False,
    ).add_subparsers(dest="operation", required=True, metavar="OPERATION")
    listing = command(quarantine, "list", "one line per quarantined message")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=cmd_quarantine, ids=[])
    for operation, what in (
        ("show", "envelope, verdict and headers of quarantined messages"),
        ("release", "re-inject into 10026 with the original envelope, then remove"),
        ("delete", "remove quarantined messages for good"),
    ):
        op = command(quarantine, operation, what)
        op.add_argument("ids", nargs="+", metavar="ID", help="a quarantine id, as list shows it")
        if operation == "show":
            op.add_argument("--json", action="store_true",
                            help="machine-readable output: the stored metadata and the headers")
        op.set_defaults(func=cmd_quarantine, json=False)  # only show takes --json

    policy = command(
        sub, "policy", "Postfix policy service for rate limits at RCPT (check_policy_service)")
    policy.add_argument("--listen", metavar="HOST:PORT",
                        help="override policy_service.listen (127.0.0.1:10040)")
    policy.set_defaults(func=cmd_policy)

    ratelimit = command(
        sub, "ratelimit", "show or reset a rate-limit counter", config=False,
    ).add_subparsers(dest="operation", required=True, metavar="OPERATION")
    for operation, what in (
        ("show", "the counted messages of RULE:VALUE (age, pending or counted)"),
        ("reset", "forget everything counted for RULE:VALUE"),
    ):
        op = command(ratelimit, operation, what)
        op.add_argument("keys", nargs="+", metavar="RULE:VALUE",
                        help="a ratelimit rule and a key value, e.g. CLIENT_RATE:81.2.69.10")
        op.set_defaults(func=cmd_ratelimit)

    # Listed for --help only: main() hands "pipe" to smtpfilter.frontdoors.pipe before parsing, whose
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
        from smtpfilter.frontdoors.pipe import main as pipe_main
    except BaseException as error:  # a broken installation must defer mail, not bounce it
        print(f"4.3.0 smtpfilter pipe cannot start: {type(error).__name__}: {error}")
        return 75  # EX_TEMPFAIL
    return pipe_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pipe"]:
        return _pipe(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:
        # argparse has printed the usage and "error: ..."; its status 2 is no sysexits code, and
        # the docstring promises 64 (EX_USAGE). --help and --version (0) pass through.
        if exit.code == 2:
            raise SystemExit(EX_USAGE) from None
        raise
    if getattr(args, "config", "") is None and DEFAULT_CONFIG.exists():
        args.config = DEFAULT_CONFIG  # what the systemd units pass; see CONFIG_HELP
    try:
        return args.func(args)
    except BrokenPipeError:
        # `smtpfilter scan --csv ... | head`: the reader has what it wanted. Point stdout at
        # /dev/null so the interpreter's final flush does not complain a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EX_OK
    except OSError as error:
        # The last word on what the system refused (a file, a socket, a limit) that no command
        # caught itself: one line, sysexits' EX_OSERR, never a traceback (issue 13).
        name = f"{error.filename}: " if error.filename else ""
        print(f"smtpfilter: {name}{error.strerror or error}", file=sys.stderr)
        return EX_OSERR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
