"""``smtpfilter check-config`` on broken files, run as the admin runs it: a child process.

Whatever is wrong with a file (bytes YAML forbids, an encoding that is not UTF-8, an escape
that is not a character, nesting without end, a Postfix table with nothing usable in it), the
answer is one line per problem naming ``file:line``, never a traceback, and the exit code is
the one every configuration error gets (78, EX_CONFIG); warnings leave it at 0.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from smtpfilter.cli import EX_CONFIG

GOOD_RULE = b"rules:\n  - name: OK\n    check: date\n    missing: true\n    score: 1\n"


def check_config(config: Path, *options: str) -> subprocess.CompletedProcess:
    # --no-connect: whether 10026 answers is tested on its own below.
    return subprocess.run(
        [sys.executable, "-m", "smtpfilter", "check-config", "--no-connect", *options,
         "--config", str(config)],
        capture_output=True,
        timeout=60,
        cwd=config.parent,
    )


def assert_one_line_per_problem(result: subprocess.CompletedProcess) -> list[str]:
    """stderr holds only ``smtpfilter: ...`` lines, no traceback; returns them decoded."""
    err = result.stderr.decode("utf-8", "backslashreplace")
    assert "Traceback" not in err and "Error:" not in err.replace("smtpfilter:", ""), err
    lines = err.splitlines()
    assert all(line.startswith("smtpfilter: ") for line in lines), err
    return lines


def write(tmp_path: Path, config: bytes, rules: bytes = GOOD_RULE, *, bom: bytes = b"") -> Path:
    (tmp_path / "r.yaml").write_bytes(rules)
    path = tmp_path / "c.yaml"
    path.write_bytes(bom + b"rules: [r.yaml]\n" + config)
    return path


# (config after "rules: [r.yaml]\n", rule file, the file:line expected, words of the problem)
BROKEN = {
    "control byte in a rule file": (
        b"",
        b"rules:\n  - name: OK\n    description: ring \x07 the bell\n    check: date\n"
        b"    missing: true\n    score: 1\n",
        "r.yaml:3",
        "U+0007",
    ),
    "control byte in the config": (b"hostname: a\x01b\n", GOOD_RULE, "c.yaml:2", "U+0001"),
    "NUL byte": (b"log:\n  level: info\x00\n", GOOD_RULE, "c.yaml:3", "U+0000"),
    "DEL byte": (b"hostname: ab\x7f\n", GOOD_RULE, "c.yaml:2", "U+007F"),
    "C1 control in UTF-8": (b"hostname: ab\xc2\x9b\n", GOOD_RULE, "c.yaml:2", "U+009B"),
    "not UTF-8": (b"hostname: ab\n# caf\xe9\n", GOOD_RULE, "c.yaml:3", "not UTF-8"),
    "lone surrogate escape in a rule": (
        b"",
        b'rules:\n  - name: OK\n    check: header\n    header: "X-\\ud800"\n    match: a\n'
        b"    score: 1\n",
        "r.yaml:4",
        "surrogate",
    ),
    "lone surrogate escape in a pattern": (
        b"",
        b'rules:\n  - name: OK\n    check: header\n    header: X\n    match: "\\udc80"\n'
        b"    score: 1\n",
        "r.yaml:5",
        "surrogate",
    ),
    "endless nesting": (b"policy: " + b"[" * 5000 + b"]" * 5000 + b"\n", GOOD_RULE, "c.yaml:2",
                        "nested"),
    "explicit tag with a bad value": (b"limits:\n  sessions: !!int many\n", GOOD_RULE, "c.yaml:3",
                                      "many"),
    "impossible date": (b"limits:\n  sessions: !!timestamp 2024-99-01\n", GOOD_RULE, "c.yaml:3",
                        "month"),
    "integer beyond Python's limit": (b"limits:\n  sessions: " + b"9" * 5000 + b"\n", GOOD_RULE,
                                      "c.yaml:3", "digits"),
}


@pytest.mark.parametrize(("config", "rules", "where", "words"), BROKEN.values(), ids=BROKEN.keys())
def test_broken_yaml_is_one_problem_line_with_file_and_line(tmp_path, config, rules, where, words):
    result = check_config(write(tmp_path, config, rules))
    lines = assert_one_line_per_problem(result)
    assert result.returncode == EX_CONFIG, lines
    problems = [line for line in lines if re.match(r"smtpfilter: \S+:\d+: ", line)]
    assert len(problems) == 1 and len(lines) == 2, lines  # the problem, then the count
    # file:line, or file:line:col where the reader or the scanner knows the column
    assert re.search(rf"{re.escape(str(tmp_path / where))}(:\d+)?: ", problems[0]), problems[0]
    assert words in problems[0], problems[0]


@pytest.mark.parametrize("bom", [b"\xef\xbb\xbf", b""], ids=["UTF-8 BOM", "no BOM"])
def test_utf8_with_or_without_a_bom_is_fine(tmp_path, bom):
    result = check_config(write(tmp_path, b"hostname: filter.example\n", bom=bom))
    assert result.returncode == 0, result.stderr
    assert b"hostname filter.example" in result.stdout


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_a_utf16_file_is_named_as_such(tmp_path, encoding):
    (tmp_path / "r.yaml").write_bytes(GOOD_RULE)
    config = tmp_path / "c.yaml"
    config.write_bytes("\ufeffrules: [r.yaml]\nhostname: a.b\n".encode(encoding))
    result = check_config(config)
    [problem, _count] = assert_one_line_per_problem(result)
    assert result.returncode == EX_CONFIG
    assert f"{config}:1: " in problem and encoding[:6].upper() in problem, problem


def test_dates_are_text_not_yaml_timestamps(tmp_path):
    # YAML 1.1 reads 2024-01-01 as a date; nothing here is a date, and a mistyped one
    # (2024-99-01) once ended in a ValueError traceback.
    result = check_config(write(tmp_path, b"hostname: 2024-99-01\n"))
    assert result.returncode == 0, result.stderr
    assert b"hostname 2024-99-01" in result.stdout


# --- a Postfix table with nothing usable in it ------------------------------------------------
# Issue 10 item 11: "table: [pcre:/etc/passwd]" was accepted as "0 lines", silently. Postfix warns
# once per line it skips and goes on (dict_regexp.c, dict_pcre.c); so do we, and then say that
# the rule will never match, with where the table is named. A warning, not an error: an empty
# table is valid in Postfix, and a daemon degrades rather than dies on a bad table at reload.
PASSWD_LIKE = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"


def table_rule(*tables: str) -> bytes:
    return (
        "rules:\n  - name: POSTFIX_TABLE\n    check: header_checks\n"
        f"    table: [{', '.join(tables)}]\n"
    ).encode()


def warnings_of(result: subprocess.CompletedProcess) -> list[str]:
    lines = assert_one_line_per_problem(result)
    assert all(line.startswith("smtpfilter: warning: ") for line in lines), lines
    return [line.removeprefix("smtpfilter: warning: ") for line in lines]


@pytest.mark.parametrize("fmt", ["pcre", "regexp"])
def test_a_table_without_one_usable_line_is_a_warning_naming_it(tmp_path, fmt):
    (tmp_path / "passwd").write_text(PASSWD_LIKE)
    result = check_config(write(tmp_path, b"", table_rule(f"{fmt}:passwd")))
    assert result.returncode == 0, result.stderr  # usable, as Postfix would use it
    warnings = warnings_of(result)
    table = tmp_path / "passwd"
    assert warnings[:2] == [
        f"{table}:1: rule POSTFIX_TABLE: not a pattern, if or endif (Postfix ignores this line too)",
        f"{table}:2: rule POSTFIX_TABLE: not a pattern, if or endif (Postfix ignores this line too)",
    ]
    assert warnings[2:] == [
        f"{tmp_path / 'r.yaml'}:4: rule POSTFIX_TABLE: table: {fmt}:{table} has no usable line "
        f"(2 skipped, above): this rule will never match"
    ]
    assert b"(0 lines)" in result.stdout


def test_an_empty_table_and_a_table_of_lines_that_decide_nothing_are_warnings(tmp_path):
    (tmp_path / "empty").write_text("# nothing here yet\n")
    (tmp_path / "edits").write_text("/^X-Internal:/ IGNORE\n/^Subject:/ PREPEND X-Seen: yes\n")
    result = check_config(write(tmp_path, b"", table_rule("regexp:empty", "regexp:edits")))
    assert result.returncode == 0, result.stderr
    rules = tmp_path / "r.yaml"
    assert warnings_of(result) == [
        f"{rules}:4: rule POSTFIX_TABLE: table: regexp:{tmp_path / 'empty'} has no lines",
        f"{rules}:4: rule POSTFIX_TABLE: table: no line of its tables REJECTs, DISCARDs, HOLDs, "
        f"WARNs or INFOs (the others act in Postfix only): this rule will never match",
    ]


def test_a_table_beside_a_usable_one_is_a_warning_that_the_rule_still_works(tmp_path):
    (tmp_path / "passwd").write_text(PASSWD_LIKE)
    (tmp_path / "good").write_text("/^X-Mailer: MaxBulk/ DISCARD\n")
    result = check_config(write(tmp_path, b"", table_rule("pcre:passwd", "regexp:good")))
    assert result.returncode == 0, result.stderr
    assert warnings_of(result)[-1] == (
        f"{tmp_path / 'r.yaml'}:4: rule POSTFIX_TABLE: table: pcre:{tmp_path / 'passwd'} has no "
        f"usable line (2 skipped, above); the rule's other tables still apply"
    )


# --- the message size and Postfix's (issue 12) -----------------------------------------------
def postfix_dir(tmp_path: Path, main_cf: str) -> Path:
    """A Postfix configuration directory that postconf -c reads (no Postfix is started)."""
    from tests.postfix.instance import backdate
    from tests.support.tools import require

    require("postconf")
    directory = tmp_path / "postfix"
    directory.mkdir()
    (directory / "main.cf").write_text(main_cf)
    backdate(directory / "main.cf")
    return directory


def test_the_message_size_follows_postfix_and_says_so(tmp_path):
    directory = postfix_dir(tmp_path, "message_size_limit = 52428800\n")
    result = check_config(write(tmp_path, f"postfix: {{config_directory: {directory}}}\n".encode()))
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert (f"message size: 52428800 bytes, Postfix's message_size_limit (postconf -c {directory} "
            f"-h message_size_limit)").encode() in result.stdout


@pytest.mark.parametrize(
    "ours, postfix, warned",
    [("10m", "52428800", True), ("10m", "0", True), ("50m", "52428800", False),
     ("0", "52428800", False)],
    ids=["below", "postfix-unlimited", "equal", "ours-unlimited"],
)
def test_a_message_size_below_postfix_is_a_warning(tmp_path, ours, postfix, warned):
    directory = postfix_dir(tmp_path, f"message_size_limit = {postfix}\n")
    config = f"postfix: {{config_directory: {directory}}}\nlimits: {{message_size: {ours}}}\n"
    result = check_config(write(tmp_path, config.encode()))
    assert result.returncode == 0, result.stderr
    lines = assert_one_line_per_problem(result)
    if warned:
        [line] = lines
        assert line.startswith(f"smtpfilter: warning: {tmp_path / 'c.yaml'}: limits.message_size ")
        assert "after the queue, Postfix bounces the mail in between" in line
    else:
        assert lines == []


def test_an_unreadable_postfix_directory_is_a_problem_with_its_line(tmp_path):
    result = check_config(write(tmp_path, b"postfix:\n  config_directory: nowhere\n"))
    assert result.returncode == EX_CONFIG
    [problem, summary] = assert_one_line_per_problem(result)
    assert problem == (f"smtpfilter: {tmp_path / 'c.yaml'}:3: postfix.config_directory: cannot "
                       f"read Postfix's configuration: {tmp_path / 'nowhere' / 'main.cf'}: no such file")


# --- what the configuration amounts to (issue 13) ---------------------------------------------
def test_listeners_beyond_loopback_are_counted_warnings_and_observe_only_is_said(tmp_path):
    config = write(tmp_path, b"listen: 0.0.0.0:10025\nmilter: {listen: 'inet:0.0.0.0:11332'}\n"
                             b"dry_run: true\n",
                   GOOD_RULE + b"    mode: warn\n")
    result = check_config(config)
    assert result.returncode == 0, result.stderr
    assert warnings_of(result) == [
        "listen 0.0.0.0:10025 is beyond loopback: other hosts can connect (allow_clients "
        "decides whom the filter serves); Postfix's content_filter needs only 127.0.0.1",
        "milter.listen inet:0.0.0.0:11332 is beyond loopback: other hosts can connect; "
        "Postfix's smtpd_milters needs only 127.0.0.1",
    ]
    out = result.stdout.decode().splitlines()
    assert out[0].startswith(f"{config}: ok; listen 0.0.0.0:10025, forward 127.0.0.1:10026")
    assert out[1:3] == ["1 rules from 1 files:", f"  {tmp_path / 'r.yaml'}: 1 rule"]
    assert ("dry_run: on: no rule acts; every message is delivered untouched, the log says "
            "what would have happened") in out
    assert "mode: warn: 1 rule only observe (OK)" in out
    assert out[-1] == "ok, 2 warnings (on stderr, above)"

    quiet = check_config(write(tmp_path, b""))
    assert quiet.stderr == b"" and quiet.stdout.decode().splitlines()[-1] == "ok, 0 warnings"
    assert b"dry_run: off\nmode: warn: no rule\n" in quiet.stdout


class Greeter:
    """A TCP server on loopback that answers each connection with one greeting line."""

    def __init__(self, greeting: bytes) -> None:
        import socket
        import threading

        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.greeting = greeting
        self.seen: list[bytes] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        try:
            connection, _ = self.server.accept()
        except OSError:
            return
        with connection:
            connection.sendall(self.greeting)
            connection.settimeout(10)
            data = b""
            while True:  # until the client hangs up: what it said after the greeting
                chunk = connection.recv(4096)
                if not chunk:
                    break
                data += chunk
                if b"QUIT" in data.upper():
                    connection.sendall(b"221 2.0.0 Bye\r\n")
            self.seen.append(data)

    def close(self) -> None:
        self.server.close()
        self.thread.join(10)


def forward_check(tmp_path: Path, port: int) -> subprocess.CompletedProcess:
    config = write(tmp_path, f"forward: 127.0.0.1:{port}\n".encode())
    return subprocess.run(
        [sys.executable, "-m", "smtpfilter", "check-config", "--config", str(config)],
        capture_output=True, timeout=60, cwd=tmp_path)


def test_forward_that_greets_is_fine(tmp_path):
    greeter = Greeter(b"220 mx.example ESMTP Postfix\r\n")
    try:
        result = forward_check(tmp_path, greeter.port)
    finally:
        greeter.close()
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    assert greeter.seen == [b"quit\r\n"]  # a polite goodbye (smtplib writes it so), nothing else


def test_forward_that_refuses_or_greets_badly_is_a_warning(tmp_path):
    import socket

    with socket.socket() as probe:  # a port nothing listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        result = forward_check(tmp_path, port)
    assert result.returncode == 0
    [warning] = warnings_of(result)
    assert warning.startswith(f"forward 127.0.0.1:{port} does not answer (Connection refused): "
                              f"until it answers, the filter answers 451")
    assert "--no-connect skips this check" in warning
    assert result.stdout.decode().splitlines()[-1] == "ok, 1 warning (on stderr, above)"

    greeter = Greeter(b"554 5.3.2 not now\r\n")
    try:
        result = forward_check(tmp_path, greeter.port)
    finally:
        greeter.close()
    [warning] = warnings_of(result)
    assert warning.startswith(f"forward 127.0.0.1:{greeter.port} greets with '554 5.3.2 not now'")


def test_show_prints_every_setting_as_a_config_that_loads_back(tmp_path):
    from dataclasses import replace

    from smtpfilter.config.settings import load_config

    config = write(tmp_path, b"listen: 127.0.0.1:10027\npolicy:\n  tag: 5\n  reject: 15\n"
                             b"limits:\n  sessions: 50\n  scan_timeout: 90s\n"
                             b"dns: {nameservers: ['127.0.0.1:5353']}\n")
    result = check_config(config, "--show")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert f'listen: "127.0.0.1:10027"  # {config}:2\n' in text
    assert "  sessions: 50  # " in text and "  scan_timeout: 90  # " in text
    assert "  pool_size: 20\n" in text and "# tls: not set" in text  # defaults too
    shown = tmp_path / "shown.yaml"
    shown.write_text(text)
    assert replace(load_config(shown), source=None) == replace(load_config(config), source=None)

    changed = check_config(config, "-n")
    assert changed.returncode == 0, changed.stderr
    lines = [line for line in changed.stdout.decode().splitlines() if not line.startswith("#")]
    assert lines == [
        f'listen: "127.0.0.1:10027"  # {config}:2',
        f'rules: ["{tmp_path / "r.yaml"}"]  # {config}:1',
        f"limits:  # {config}:6",
        f"  sessions: 50  # {config}:7",
        f"  scan_timeout: 90  # {config}:8",
        f"policy:  # {config}:3",
        f"  tag: 5  # {config}:4",
        f"  reject: 15  # {config}:5",
        f"dns:  # {config}:9",
        f'  nameservers: ["127.0.0.1:5353"]  # {config}:9',
    ]
