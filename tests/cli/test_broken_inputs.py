"""Every subcommand over a table of broken inputs: one line per problem, its file:line, the
documented exit code, and never a Python traceback (issue 13, "Errors a newcomer makes").

Each input is the mistake a newcomer makes (an unreadable rules directory, a typo two levels
deep, a tab, a lookahead RE2 cannot run...) in an otherwise good setup: ``c.yaml`` naming the
rules file ``r.yaml``. Every subcommand that reads the config gets every config mistake; every
subcommand that loads the rules gets every rules mistake; ``import-header-checks`` gets its own
inputs. What is asserted is what the user sees:

- no "Traceback" anywhere;
- exactly one problem line, starting with the culprit's ``file:line`` (``file:line:col`` for
  YAML syntax), naming the problem; for the daemons, the count line after it;
- the exit code README.md documents: 78 (EX_CONFIG) for a config or rules problem, 75 in pipe
  mode (EX_TEMPFAIL: Postfix keeps the mail, the one stdout line is its defer reason), 66/73 for
  import-header-checks' input and output files.

Paths are relative to the working directory, as an admin types them: the messages then read
``c.yaml:1: rules: r: Permission denied`` exactly. Unreadable files are mode 000 read by a child
that has given up root's file-permission override (tests/support/unprivileged.py), so the test
fails, never skips, where it cannot make a file unreadable. The commands run in forked children
of one runner process (tests/support/clirunner.py): a fresh ``python -m smtpfilter`` costs up to
a second here, and this table is some 500 command lines.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import pytest

from tests.support.clirunner import CliRunner

GOOD_RULES = b"rules:\n  - name: NO_DATE\n    check: date\n    missing: true\n    action: reject\n"
# A quarantine of its own: a case that wrongly passes must not list or release a real one.
BASE_CONFIG = b"rules: [r.yaml]\nquarantine: {directory: q}\n"
MESSAGE = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


@dataclass(frozen=True)
class Broken:
    """One broken input: the files (None: a directory), which to make unreadable, the config
    path given to the command, and what the one problem line must say."""

    where: str  # the culprit, file:line (or file alone when there is no line)
    words: str  # part of the problem's text
    config: bytes = BASE_CONFIG
    rules: bytes = GOOD_RULES
    files: dict[str, bytes | None] = field(default_factory=dict)
    unreadable: tuple[str, ...] = ()
    config_path: str = "c.yaml"


def rule(*lines: str) -> bytes:
    """A rule file with one rule; its first key is on line 2."""
    return ("rules:\n  - " + "\n    ".join(lines) + "\n").encode()


# Mistakes in the config: every command that reads it.
CONFIG_MISTAKES = {
    "typo at the top": Broken(
        "c.yaml:5", "unknown key 'log_level'; did you mean 'log.level' (level: indented under log:)?",
        BASE_CONFIG + b"hostname: filter.test\nlisten: 127.0.0.1:10025\nlog_level: info\n"),
    "typo in log": Broken(
        "c.yaml:5", "unknown key 'log.levle'; did you mean 'log.level'?",
        BASE_CONFIG + b"log:\n  level: info\n  levle: debug\n"),
    "typo in limits": Broken(
        "c.yaml:5", "unknown key 'limits.sesions'; did you mean 'limits.sessions'?",
        BASE_CONFIG + b"limits:\n  idle_timeout: 300s\n  sesions: 5\n"),
    "typo two levels deep": Broken(
        "c.yaml:5", "did you mean 'authentication.dkim.min_key_bits'?",
        BASE_CONFIG + b"authentication:\n  dkim:\n    min_bits: 2048\n"),
    "tab": Broken("c.yaml:4:1", "a tab: YAML indents with spaces only",
                  BASE_CONFIG + b"log:\n\tlevel: info\n"),
    "bracket left open": Broken("c.yaml:2:9", "(while parsing a flow sequence at line 1)",
                                b"rules: [r.yaml\nhostname: filter.test\n"),
    "quote left open": Broken("c.yaml:4", "while scanning a quoted scalar at line 3",
                              BASE_CONFIG + b'hostname: "filter.test\n'),
    "listen: a port alone": Broken("c.yaml:3", "e.g. 127.0.0.1:10025",
                                   BASE_CONFIG + b"listen: 10025\n"),
    "listen: a list": Broken("c.yaml:3", "listen: expected text, got a list [1]",
                             BASE_CONFIG + b"listen: [1]\n"),
    "a list at the top": Broken("c.yaml:1", "expected a mapping of settings",
                                b"- rules: [r.yaml]\n"),
    "a binary file": Broken("c.yaml:1", "U+007F", b"\x7fELF\x02\x01\x01\x00\x00\x00\x00"),
    "not UTF-8": Broken("c.yaml:3", "not UTF-8", BASE_CONFIG + b"hostname: caf\xe9.example\n"),
    "UTF-16": Broken("c.yaml:1", "UTF-16 text: save the file as UTF-8",
                     "rules: [r.yaml]\n".encode("utf-16")),
    "sessions: many": Broken("c.yaml:4", "limits.sessions: expected a whole number",
                             BASE_CONFIG + b"limits:\n  sessions: many\n"),
    "dry_run: yes": Broken("c.yaml:3", "dry_run: expected true or false",
                           BASE_CONFIG + b"dry_run: yes\n"),
    "a duplicate key": Broken("c.yaml:4", "duplicate key 'hostname' (first at line 3)",
                              BASE_CONFIG + b"hostname: a.test\nhostname: b.test\n"),
    "a section that is not a mapping": Broken("c.yaml:3", "limits: expected a mapping",
                                              BASE_CONFIG + b"limits: 5\n"),
    "metrics beyond loopback": Broken("c.yaml:3", "loopback only",
                                      BASE_CONFIG + b"metrics: {listen: '0.0.0.0:9125'}\n"),
    "public suffix list unreadable": Broken(
        "c.yaml:3", "authentication.psl_file: psl.dat: Permission denied",
        BASE_CONFIG + b"authentication: {psl_file: psl.dat}\n", files={"psl.dat": b"com\n"},
        unreadable=("psl.dat",)),
    "config unreadable": Broken("c.yaml", "cannot read: Permission denied",
                                unreadable=("c.yaml",)),
    "config is a directory": Broken("conf.d", "is a directory; --config names the YAML file",
                                    files={"conf.d": None}, config_path="conf.d"),
    "config missing": Broken("nope.yaml", "cannot read: No such file or directory",
                             config_path="nope.yaml"),
}

# Mistakes in the rules: every command that loads them.
RULES_MISTAKES = {
    "rules: a number": Broken("c.yaml:1", "rules: 5: No such file or directory", b"rules: 5\n"),
    "rules directory unreadable": Broken(
        "c.yaml:1", "rules: r: Permission denied", b"rules: [r]\n",
        files={"r": None, "r/10-a.yaml": GOOD_RULES}, unreadable=("r",)),
    "rule file in a directory unreadable": Broken(
        "c.yaml:1", "rules: r/10-a.yaml: Permission denied", b"rules: [r]\n",
        files={"r": None, "r/10-a.yaml": GOOD_RULES}, unreadable=("r/10-a.yaml",)),
    "rule file unreadable": Broken("c.yaml:1", "rules: r.yaml: Permission denied",
                                   unreadable=("r.yaml",)),
    "rules directory missing": Broken("c.yaml:3", "rules: rules.d: No such file or directory",
                                      b"rules:\n  - r.yaml\n  - rules.d\n"),
    "acton": Broken("r.yaml:6", "rule NO_DATE: unknown key 'acton'; did you mean 'action'?",
                    rules=rule("name: NO_DATE", "check: date", "missing: true", "",
                               "acton: reject")),
    "action: bounce": Broken("r.yaml:5", "action: 'bounce' is not one of",
                             rules=rule("name: NO_DATE", "check: date", "missing: true",
                                        "action: bounce")),
    "action: REJECT with a text": Broken(
        "r.yaml:5", "the reply goes in text:",
        rules=rule("name: NO_DATE", "check: date", "missing: true", "action: REJECT go away")),
    "check: sfp": Broken("r.yaml:3", "unknown rule kind 'sfp'; did you mean 'spf'?",
                         rules=rule("name: SPF_FAIL", "check: sfp", "match: fail",
                                    "action: reject")),
    "check missing": Broken("r.yaml:2", "check: is required",
                            rules=rule("name: NO_DATE", "missing: true", "action: reject")),
    "older_than: yes": Broken("r.yaml:4", "older_than: 'yes' is not a duration",
                              rules=rule("name: OLD", "check: date", "older_than: yes",
                                         "action: reject")),
    "score: high": Broken("r.yaml:5", "score: expected a number, got 'high'",
                          rules=rule("name: NO_DATE", "check: date", "missing: true",
                                     "score: high")),
    "name: a number": Broken("r.yaml:2", "use UPPER_SNAKE_CASE",
                             rules=rule("name: 5", "check: date", "missing: true",
                                        "action: reject")),
    "mode: loud": Broken("r.yaml:6", "mode: 'loud' is not one of",
                         rules=rule("name: NO_DATE", "check: date", "missing: true",
                                    "action: reject", "mode: loud")),
    "a reject text with 4.x.x": Broken(
        "r.yaml:6", "a reject text starts with 5.x.x",
        rules=rule("name: NO_DATE", "check: date", "missing: true", "action: reject",
                   "text: '4.7.1 later'")),
    "RE2 lookahead in a list": Broken(
        "r.yaml:7", "RE2 has no lookahead or lookbehind",
        rules=rule("name: MAILER", "check: header", "header: X-Mailer", "match:",
                   "  - '^MaxBulk'", "  - '^(?!Outlook)Avalanche'", "action: reject")),
    "RE2 backreference": Broken(
        "r.yaml:5", "RE2 has no backreferences",
        rules=rule("name: REPEAT", "check: header", "header: Subject", "match: '(\\w+) \\1'",
                   "action: reject")),
    "RE2 lookbehind in a body rule": Broken(
        "r.yaml:4", "RE2 has no lookahead or lookbehind",
        rules=rule("name: BODY", "check: body", "match: '(?<=free )money'", "score: 3")),
    "RE2 lookahead in unless": Broken(
        "r.yaml:6", "unless: pattern '(?=x)'",
        rules=rule("name: MAILER", "check: header", "header: X-Mailer", "match: x",
                   "unless: ['(?=x)']", "action: reject")),
    "tab in a rule file": Broken("r.yaml:4:1", "a tab",
                                 rules=b"rules:\n  - name: NO_DATE\n    check: date\n\tmissing: true\n"),
    "a rule file with a list at the top": Broken("r.yaml:1", "one top-level key: rules",
                                                 rules=b"- name: NO_DATE\n"),
    "rules: a mapping": Broken("r.yaml:1", "rules: expected a list of rules",
                               rules=b"rules: {name: NO_DATE}\n"),
    "a rule that is a string": Broken("r.yaml:6", "each rule is a mapping",
                                      rules=GOOD_RULES + b"  - OLD_DATE\n"),
    "a binary rule file": Broken("r.yaml:1", "not UTF-8", rules=b"\x89PNG\r\n\x1a\n\x00\x00"),
    "a duplicate rule name": Broken("r.yaml:6", "duplicate rule name (first at r.yaml:2)",
                                    rules=GOOD_RULES + GOOD_RULES[len(b"rules:\n"):]),
    "header_checks table unreadable": Broken(
        "r.yaml:4", "hc: Permission denied",
        rules=rule("name: HC", "check: header_checks", "table: hc"),
        files={"hc": b"/^X-Spam: yes/ REJECT\n"}, unreadable=("hc",)),
}

C = "{config}"
# subcommand → (argv, the documented exit code); the daemons get a port of 0 so that a case that
# wrongly starts cannot take a port another test uses (it is then killed at the timeout).
# ``ratelimit reset`` and ``quarantine delete`` read the config as their siblings do, on the
# same lines of cli.py: left out to keep the table within a minute.
READS_CONFIG = {
    "serve": (["serve", "-c", C, "--listen", "127.0.0.1:0"], 78),
    "milter": (["milter", "-c", C, "--listen", "inet:127.0.0.1:0"], 78),
    "policy": (["policy", "-c", C, "--listen", "127.0.0.1:0"], 78),
    "check-config": (["check-config", "-c", C], 78),
    "test": (["test", "-c", C, "m.eml"], 78),
    "scan": (["scan", "-c", C, "mail"], 78),
    "ratelimit show": (["ratelimit", "show", "-c", C, "RATE:192.0.2.1"], 78),
    "doctor": (["doctor", "-c", C], 78),
    "pipe": (["pipe", f"--config={C}", "--sender=a@example.org", "--", "b@example.org"], 75),
}
QUARANTINE = {
    "quarantine list": (["quarantine", "list", "-c", C], 78),
    "quarantine show": (["quarantine", "show", "-c", C, "1.abc"], 78),
    "quarantine release": (["quarantine", "release", "-c", C, "1.abc"], 78),
}

CASES = [
    pytest.param(broken, command, id=f"{command}: {name}")
    for name, broken in CONFIG_MISTAKES.items()
    for command in {**READS_CONFIG, **QUARANTINE}
] + [
    # The quarantine commands read the config only: a rules mistake does not stop them.
    pytest.param(broken, command, id=f"{command}: {name}")
    for name, broken in RULES_MISTAKES.items()
    for command in READS_CONFIG
]


@pytest.fixture(scope="module")
def runner():
    runner = CliRunner()
    yield runner
    runner.close()


def lay_out(tmp_path, broken: Broken) -> None:
    files: dict[str, bytes | None] = {
        "c.yaml": broken.config, "r.yaml": broken.rules, "m.eml": MESSAGE, "mail": None,
        "mail/1.eml": MESSAGE, **broken.files,
    }
    for name, content in files.items():
        path = tmp_path / name
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content)
    for name in broken.unreadable:
        os.chmod(tmp_path / name, 0)


def where_pattern(where: str) -> str:
    """file:line, then the column or nothing, then ": " (c.yaml:3 must not match c.yaml:30)."""
    return re.escape(where) + r"(:\d+)?: "


@pytest.mark.parametrize(("broken", "command"), CASES)
def test_a_broken_input_is_one_line_with_its_place_and_the_documented_exit_code(
    runner, tmp_path, broken, command
):
    argv, status = {**READS_CONFIG, **QUARANTINE}[command]
    lay_out(tmp_path, broken)
    argv = [arg.replace(C, broken.config_path) for arg in argv]
    result = runner.run(argv, tmp_path, unprivileged=bool(broken.unreadable))
    assert "Traceback" not in result.stderr + result.stdout, result
    assert result.status == status, result
    if command == "pipe":
        # pipe(8) logs and quotes the first stdout line: the defer reason in mail.log.
        [line] = result.stdout.splitlines()
        assert re.match(r"4\.3\.5 smtpfilter configuration error: " + where_pattern(broken.where),
                        line), result
        assert broken.words in line, result
        assert result.stderr == "", result  # one mistake: no second problem
        return
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result  # the problem, then the count and the consequence
    assert re.match("smtpfilter: " + where_pattern(broken.where), lines[0]), result
    assert broken.words in lines[0], result
    assert re.fullmatch(r"smtpfilter: 1 problem\(s\); .+", lines[1]), result


# --- import-header-checks: its input tables and its output file ------------------------------
TABLE = b"/^X-Spam: yes/ REJECT no spam here\n"


@pytest.mark.parametrize(
    ("argv", "unreadable", "status", "line"),
    [
        pytest.param(["hc.missing"], (), 66, "smtpfilter: hc.missing: No such file or directory",
                     id="table missing"),
        pytest.param(["hc"], ("hc",), 66, "smtpfilter: hc: Permission denied",
                     id="table unreadable"),
        pytest.param(["mail"], (), 66, "smtpfilter: mail: Is a directory",
                     id="table is a directory"),
        pytest.param(["hc", "-o", "/nonexistent/x.yaml"], (), 73,
                     "smtpfilter: --output /nonexistent/x.yaml: cannot write: No such file or "
                     "directory", id="output directory missing"),
        pytest.param(["hc", "-o", "mail"], (), 73,
                     "smtpfilter: --output mail: cannot write: Is a directory",
                     id="output is a directory"),
        pytest.param(["hc", "-o", "out/x.yaml"], ("out",), 73,
                     "smtpfilter: --output out/x.yaml: cannot write: Permission denied",
                     id="output directory unwritable"),
    ],
)
def test_import_header_checks_names_the_file_and_exits_as_documented(
    runner, tmp_path, argv, unreadable, status, line
):
    lay_out(tmp_path, Broken("", "", files={"hc": TABLE, "out": None}, unreadable=unreadable))
    result = runner.run(["import-header-checks", *argv], tmp_path, unprivileged=bool(unreadable))
    assert "Traceback" not in result.stderr, result
    assert result.status == status, result
    assert result.stderr.splitlines() == [line], result
    assert result.stdout == "", result  # nothing half-written in place of the rules


def test_a_table_line_re2_cannot_run_is_named_with_its_line(runner, tmp_path):
    # Not an error of the command: the line is left out and said so, the rest converts (0).
    (tmp_path / "hc").write_bytes(TABLE + b"/^Subject: (.)\\1/ DISCARD\n")
    result = runner.run(["import-header-checks", "hc"], tmp_path)
    assert result.status == 0 and "Traceback" not in result.stderr, result
    assert re.search(r"^smtpfilter: hc:2: .*backreference", result.stderr, re.M), result


# --- a wrong argument ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "status"),
    [pytest.param([*command.split(), "--no-such-option"], 64, id=command)
     for command in [*READS_CONFIG, *QUARANTINE, "import-header-checks"] if command != "pipe"]
    + [pytest.param(["pipe", "--no-such-option"], 75, id="pipe")],
)
def test_a_wrong_argument_is_a_usage_error(runner, tmp_path, argv, status):
    # sysexits(3) EX_USAGE, not argparse's 2; pipe(8) would bounce on 64, so pipe says 75.
    result = runner.run(argv, tmp_path)
    assert result.status == status, result
    assert "Traceback" not in result.stderr, result
    # argparse's usage, then one line that says what is wrong (pipe: that line only)
    assert re.match(r"smtpfilter[a-z -]*: (error: )?", result.stderr.splitlines()[-1]), result


def test_an_empty_rule_file_is_usable_but_said(runner, tmp_path):
    # No rules is a valid rule file ("rules: []"); an empty one is more often a failed copy.
    lay_out(tmp_path, Broken("", "", rules=b""))
    result = runner.run(["check-config", "-c", "c.yaml"], tmp_path)
    assert result.status == 0, result
    # (check-config may warn of other things too, such as a forward that does not answer)
    assert "smtpfilter: warning: r.yaml:1: empty file: no rules in it" in result.stderr.splitlines()
