#!/usr/bin/env python3
"""Write man/smtpfilter.8 from smtpfilter's argparse parser: ``python3 man/make.py``.

Every command, option and help text comes from ``smtpfilter.cli.build_parser()`` (and
``smtpfilter pipe``'s own parser), so the page says what ``--help`` says; the sections around
them (exit status, signals, files) are written here in the README's words. Version and date
come from pyproject.toml and CHANGELOG.md's entry for that version, so the output depends on
nothing but the tree: tests/packaging/test_man.py regenerates it and compares it with the
committed file. After changing a help text, run this and commit both.

    python3 man/make.py            write man/smtpfilter.8
    python3 man/make.py --check    exit 1 if man/smtpfilter.8 is out of date
    python3 man/make.py --stdout   print the page

Standard library only (argparse-manpage would do the walk, but its output changes with its
own releases, which would break the comparison above on an upgrade we did not make). The
parser's actions are read through argparse's attributes (``_actions``, ``choices``,
``_choices_actions``), stable since Python 3.2. Run with an interpreter that can import
smtpfilter; from a checkout with .venv/ that one is used when python3 cannot.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "man" / "smtpfilter.8"

try:
    sys.path.insert(0, str(ROOT))
    from smtpfilter.cli import build_parser
    from smtpfilter.frontdoors.pipe import build_parser as build_pipe_parser
except ImportError as error:  # python3 without the dependencies: the checkout's venv has them
    venv = ROOT / ".venv"
    if (venv / "bin" / "python").exists() and Path(sys.prefix).resolve() != venv.resolve():
        os.execv(venv / "bin" / "python", [str(venv / "bin" / "python"), *sys.argv])
    sys.exit(f"man/make.py: cannot import smtpfilter ({error}); run it with the venv's python")

# Subcommands whose parser in cli.py is a stub that hands over to another parser.
OWN_PARSERS = {"pipe": build_pipe_parser}

DESCRIPTION = r"""
.B smtpfilter
is a content filter for Postfix, in the "advanced content filtering" mode of Postfix's
FILTER_README.
Postfix hands each queued message to
.B smtpfilter serve
on 127.0.0.1:10025; it judges the message with rules (a Date older than 30 days, a bulk-mailer
X\-Mailer, attachments, DNS lists, SPF, DKIM and DMARC, rate limits, scores) and either
re-injects it into Postfix's second smtpd on 127.0.0.1:10026, or answers reject, tempfail or
discard.
.B smtpfilter milter
serves the same rules to Postfix's smtpd as a milter,
.B smtpfilter pipe
to pipe(8) one message at a time, and
.B smtpfilter policy
is a policy service for rate limits at RCPT time.
.PP
It answers Postfix's final "." only after 10026 has answered, and relays that answer; anything
that goes wrong on its side or the network's is a 4xx, so Postfix keeps the message and retries;
the message bytes pass unchanged except for headers a rule adds; it listens on loopback only
unless told otherwise.
.PP
The configuration is one YAML file (every key is optional; see
.I smtpfilter.yaml.example
under FILES); rules are YAML files too.
.B smtpfilter check\-config
validates both and lists the rules.
"""

TAIL = r"""
.SH EXIT STATUS
Exit codes follow sysexits(3):
.TP
.B 0
Success.
.TP
.B 1
.B doctor
found problems in Postfix's configuration.
.TP
.B 64
Usage error (EX_USAGE).
.TP
.B 66
An input file or directory is missing (EX_NOINPUT).
.TP
.B 69
A service is unavailable (EX_UNAVAILABLE): Postfix's configuration cannot be read; from
.BR pipe ,
a rule rejected the message.
.TP
.B 70
An internal error (EX_SOFTWARE).
.TP
.B 71
An operating system error (EX_OSERR).
.TP
.B 75
Try again later (EX_TEMPFAIL); from
.BR pipe ,
Postfix keeps the message and retries.
.TP
.B 78
A configuration error (EX_CONFIG): each problem is printed as
.IR file : line :
key, what is wrong and what happens next.
The systemd units set
.B RestartPreventExitStatus=78
so that a broken configuration does not restart in a loop.
.PP
.B smtpfilter pipe
only ever exits 0, 69 or 75, usage errors included: pipe(8) bounces mail on any other status.
.SH SIGNALS
.TP
.B SIGHUP
Re-read the configuration and rules and swap them in whole, or keep the old ones and log every
problem.
.BR listen ,
.BR forward ,
.BR hostname ,
.BR tls ,
.BR log ,
.BR metrics ,
.B milter.listen
and
.B state
take a restart.
.TP
.B SIGTERM
Stop accepting, answer 421 to idle sessions, let messages in flight finish (up to
.BR limits.shutdown_timeout )
and exit 0.
.SH FILES
.TP
.I /etc/smtpfilter/smtpfilter.yaml
The configuration the systemd units use.
.TP
.I /etc/smtpfilter/rules/
Your copy of the rules.
.TP
.I PREFIX/share/smtpfilter/rules/
The shipped rules, used when the configuration names none; their
.I examples/
are never loaded by default.
.TP
.I PREFIX/share/smtpfilter/smtpfilter.yaml.example
Every configuration key with its default and a comment.
.TP
.IR PREFIX/share/smtpfilter/master.cf.example ", " PREFIX/share/smtpfilter/main.cf.example
The lines to add to Postfix's master.cf and main.cf, each explained.
.TP
.I PREFIX/share/smtpfilter/systemd/
The systemd units.
.TP
.I /var/lib/smtpfilter/quarantine/
Quarantined messages (a Maildir).
.PP
PREFIX is where pip installed smtpfilter: the virtual environment (/opt/smtpfilter in the
README), ~/.local after
.BR "pip install \-\-user" ,
or /usr/local.
.SH SEE ALSO
.BR postconf (5),
.BR master (5),
.BR pipe (8),
.BR smtpd (8),
.BR systemd.service (5),
.BR sysexits (3).
.PP
Postfix's FILTER_README, MILTER_README and SMTPD_POLICY_README.
The README (PREFIX/share/doc/smtpfilter/README.md) explains the installation into Postfix step
by step, every rule kind and every configuration key.
"""


def escape(text: str) -> str:
    """Text for a roff line: backslashes and a leading '.' or "'" (a request) made literal."""
    text = text.replace("\\", "\\e")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.MULTILINE)


def option(text: str) -> str:
    """An option or command name: its hyphens are minus signs, so that it can be copied."""
    return escape(text).replace("-", "\\-")


def help_of(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    return parser._get_formatter()._expand_help(action)  # %(default)s and friends


def metavar(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    if action.option_strings:
        return formatter._format_args(action, action.dest.upper()) if action.nargs != 0 else ""
    return formatter._format_args(action, action.dest)


def usage(name: str, parser: argparse.ArgumentParser) -> str:
    """The synopsis line of one command, built from its actions (not argparse's usage, which
    wraps at the terminal's width)."""
    words = [rf"\fB{option(name)}\fR"]
    # As argparse's usage: options first, then the positional arguments.
    ordered = sorted(parser._actions, key=lambda action: not action.option_strings)
    for action in ordered:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            words.append(r"\fIcommand\fR")
            continue
        if action.option_strings:
            flag = rf"\fB{option(action.option_strings[0])}\fR"
            arg = metavar(parser, action)
            item = f"{flag} \\fI{escape(arg)}\\fR" if arg else flag
            words.append(item if action.required else f"[{item}]")
        else:
            words.append(rf"\fI{escape(metavar(parser, action))}\fR")
    return " ".join(words)


def options_of(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        arg = metavar(parser, action)
        if action.option_strings:
            flags = ", ".join(rf"\fB{option(flag)}\fR" for flag in action.option_strings)
            head = f"{flags} \\fI{escape(arg)}\\fR" if arg else flags
        else:
            head = rf"\fI{escape(arg)}\fR"
        lines += [".TP", head, escape(help_of(parser, action)) or r"\&"]
    return lines


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the order of ``--help``."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((name, helps.get(name, ""), sub))
    return found


def command_sections(name: str, summary: str, parser: argparse.ArgumentParser) -> list[str]:
    nested = subcommands(parser)
    if nested:
        lines = []
        for sub_name, sub_summary, sub in nested:
            lines += command_sections(f"{name} {sub_name}", sub_summary, sub)
        return lines
    lines = [".SS " + '"' + option(name) + '"', usage(name, parser), ".PP"]
    description = parser.description or ""
    if summary and not description.lower().startswith(summary.lower()[:20]):
        lines.append(escape(summary[0].upper() + summary[1:]) + ".")
    if description and not description.startswith("See:"):
        lines.append(escape(description))
    return lines + options_of(parser)


def version_and_date() -> tuple[str, str]:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["version"]
    changelog = (ROOT / "CHANGELOG.md").read_text("utf-8")
    match = re.search(rf"^## \[{re.escape(version)}\] - (\d{{4}}-\d\d-\d\d)$", changelog, re.M)
    if match is None:
        sys.exit(f"man/make.py: CHANGELOG.md has no '## [{version}] - YYYY-MM-DD' entry")
    return version, match.group(1)


def page() -> str:
    version, date = version_and_date()
    parser = build_parser()
    lines = [
        r'.\" Generated by man/make.py from smtpfilter\'s argparse parser: do not edit.',
        r".\" Regenerate with: python3 man/make.py",
        f'.TH SMTPFILTER 8 "{date}" "smtpfilter {version}" "System Manager\'s Manual"',
        # Left-aligned, no hyphenation: option names and paths must read as they are typed.
        ".ad l",
        ".nh",
        ".SH NAME",
        r"smtpfilter \- SMTP content filter for Postfix",
        ".SH SYNOPSIS",
        usage("smtpfilter", parser),
        ".br",
        r"\fBsmtpfilter\fR \fIcommand\fR \fB\-\-help\fR",
        ".SH DESCRIPTION",
        DESCRIPTION.strip(),
        ".SH OPTIONS",
        *options_of(parser),
        ".SH COMMANDS",
        "Each command's",
        r"\fB\-\-help\fR",
        "prints what follows.",
    ]
    for name, summary, sub in subcommands(parser):
        own = OWN_PARSERS.get(name)
        lines += command_sections(f"smtpfilter {name}", summary, own() if own else sub)
    lines.append(TAIL.strip())
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    text = page()
    if "--stdout" in argv:
        sys.stdout.write(text)
        return 0
    current = PAGE.read_text("utf-8") if PAGE.exists() else ""
    if "--check" in argv:
        if current != text:
            print(f"{PAGE} is out of date: run python3 man/make.py", file=sys.stderr)
            return 1
        return 0
    if current != text:
        PAGE.write_text(text, "utf-8")
        print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
