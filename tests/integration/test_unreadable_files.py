"""Files the service user cannot read, as real ``python -m smtpfilter`` processes: the issue's
own reproduction, the daemon's start and its SIGHUP reload, and pipe mode (issue 13).

The README's unit runs smtpfilter as an unprivileged user; ``install -d -m 700 rules`` as root is
the natural first step, and it gave a PermissionError traceback and exit 1 (systemd restarts on 1,
so it restart-looped), a traceback in the log at SIGHUP, and a traceback in Postfix's defer reason
in pipe mode. tests/cli/test_broken_inputs.py runs the whole table in forked children; these run
the interpreter from the start, as systemd and pipe(8) do.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from tests.integration.conftest import start
from tests.support.client import send_message
from tests.support.messages import message
from tests.support.service import child_env
from tests.support.unprivileged import drop_file_override

OLD = message("Subject: old", "Date: Mon, 1 Jan 2024 10:00:00 +0000")
RULE = b"rules:\n  - {name: NO_DATE, check: date, missing: true, action: reject}\n"


def unreadable_rules(tmp_path):
    """The issue's setup: ``rules: [r]``, and r/ a directory its user cannot list."""
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "10-a.yaml").write_bytes(RULE)
    (tmp_path / "c.yaml").write_text("rules: [r]\n")
    os.chmod(tmp_path / "r", 0)


def smtpfilter(*args: str, cwd, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "smtpfilter", *args], cwd=cwd, env=child_env(), input=stdin,
        capture_output=True, timeout=60, preexec_fn=drop_file_override,
    )


def test_check_config_says_permission_denied_at_the_line_that_names_the_directory(tmp_path):
    unreadable_rules(tmp_path)
    result = smtpfilter("check-config", "-c", "c.yaml", cwd=tmp_path)
    assert result.returncode == 78, result  # EX_CONFIG: RestartPreventExitStatus=78
    assert result.stderr.decode().splitlines() == [
        f"smtpfilter: c.yaml:1: rules: r: Permission denied (as uid {os.geteuid()})",
        "smtpfilter: 1 problem(s); the configuration is not usable",
    ]


def test_serve_exits_78_before_listening(tmp_path):
    unreadable_rules(tmp_path)
    result = smtpfilter("serve", "-c", "c.yaml", "--listen", "127.0.0.1:0", cwd=tmp_path)
    assert result.returncode == 78, result
    err = result.stderr.decode()
    assert err.startswith("smtpfilter: c.yaml:1: rules: r: Permission denied"), err
    assert err.endswith("1 problem(s); not starting\n") and "Traceback" not in err, err


def test_pipe_defers_with_the_reason_on_its_one_output_line(tmp_path):
    # pipe(8) quotes the first line in its log and the defer notice: a 4.X.X reason, exit 75.
    unreadable_rules(tmp_path)
    result = smtpfilter("pipe", "--config=c.yaml", "--sender=a@example.org", "--",
                        "b@example.org", cwd=tmp_path, stdin=b"Subject: hi\n\nhello\n")
    assert result.returncode == 75, result
    assert result.stdout.decode().splitlines() == [
        "4.3.5 smtpfilter configuration error: c.yaml:1: rules: r: Permission denied "
        f"(as uid {os.geteuid()})"
    ]
    assert result.stderr == b"", result


async def test_sighup_with_an_unreadable_rules_directory_logs_it_and_keeps_the_old_rules(
    service, tmp_path
):
    process = service()
    (tmp_path / "r").mkdir()
    process.rules.rename(tmp_path / "r" / "rules.yaml")
    process.config_path.write_text(
        process.config_path.read_text().replace("rules: [rules.yaml]", "rules: [r]"))
    process.unprivileged = True
    await start(process)
    assert (await send_message(process.port, OLD)).code == 550  # OLD_DATE: the rules work

    os.chmod(tmp_path / "r", 0)
    process.send_signal(signal.SIGHUP)
    await asyncio.to_thread(
        process.wait_log, r"reload failed: keeping the previous configuration and rules")
    log = process.log()
    assert "Traceback" not in log, log
    assert (f"ERROR smtpfilter.service.lifecycle: reload: {process.config_path}:4: rules: r: "
            f"Permission denied (as uid {os.geteuid()})\n") in log, log
    reply = await send_message(process.port, OLD)  # still serving, with the old rules
    assert (reply.code, reply.text) == (550, "5.7.1 Message content rejected (OLD_DATE)")
    assert process.process.poll() is None


async def test_sighup_under_workers_keeps_the_supervisor_and_every_worker(service, tmp_path):
    # The supervisor reads the config and rules at SIGHUP too, before passing it on: on main
    # its PermissionError ended the supervisor, and with it the whole service.
    process = service()
    (tmp_path / "r").mkdir()
    process.rules.rename(tmp_path / "r" / "rules.yaml")
    process.config_path.write_text(
        process.config_path.read_text().replace("rules: [rules.yaml]", "rules: [r]"))
    process.args = ("--workers", "2")
    process.unprivileged = True
    await start(process)

    os.chmod(tmp_path / "r", 0)
    process.send_signal(signal.SIGHUP)
    await asyncio.to_thread(process.wait_log, r"reload failed: keeping the previous "
                            r"configuration and rules", 20, 2)  # one per worker
    log = process.log()
    assert "Traceback" not in log, log
    assert log.count(f"reload: {process.config_path}:4: rules: r: Permission denied") == 2, log
    assert process.process.poll() is None
    reply = await send_message(process.port, OLD)
    assert (reply.code, reply.text) == (550, "5.7.1 Message content rejected (OLD_DATE)")
