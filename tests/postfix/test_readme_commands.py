"""README commands that need a real Postfix (and root), run as the README shows them, with only
paths, the account and the private instance rewritten: smtpfilter without systemd, and raising
the size limit of both."""

from __future__ import annotations

import re
import smtplib
import sys
import subprocess
from pathlib import Path

import pytest

from tests.postfix.conftest import content
from tests.postfix.instance import program, wait_port
from tests.support.readme import shell_block, substitute
from tests.support.service import poll

pytestmark = pytest.mark.postfix


def bash(script: str) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_without_systemd_and_raising_both_size_limits(mail_system, pipe_launcher):
    assert program("start-stop-daemon"), "dpkg's start-stop-daemon is on every Debian system"
    system = mail_system("after-queue", start_filter=False)
    root = system.root
    pidfile, logfile = root / "smtpfilter.pid", root / "smtpfilter.log"
    lines = substitute(shell_block("start-stop-daemon --start"), {
        "/run/smtpfilter.pid": str(pidfile),
        "/var/log/smtpfilter.log": str(logfile),
        "--chuid smtpfilter": "--chuid nobody",  # the dedicated account, as in the pipe test
        "/opt/smtpfilter/bin/smtpfilter": str(pipe_launcher),
        "/etc/smtpfilter/smtpfilter.yaml": str(system.filter_config),
    }).replace("\\\n", " ").splitlines()
    start, reload, stop = (line.split("  #")[0] for line in lines)

    def log() -> str:
        return logfile.read_text(errors="replace") if logfile.exists() else ""

    bash(start)
    wait_port(system.ports.filter, timeout=30)
    pid = int(pidfile.read_text())
    assert Path(f"/proc/{pid}").stat().st_uid == 65534  # nobody, not root

    # Mail flows through the filter it started.
    message_id, data = content("through a filter without systemd")
    [onward] = system.sent_onward(system.submit(data))
    system.delivered_finally(onward)
    assert [d.header("Message-ID") for d in system.delivered()] == [message_id]

    bash(reload)
    poll(lambda: "reloaded:" in log(), 20, "the reload in smtpfilter's log")

    # Raising Postfix's limit and reloading both: smtpfilter follows (postconf at reload).
    etc = system.postfix.config_dir
    postconf, postfix = program("postconf"), program("postfix")
    bash(substitute(shell_block("postconf -e 'message_size_limit = 52428800'"), {
        "postconf -e": f"{postconf} -c {etc} -e",
        "postfix reload": f"{postfix} -c {etc} reload",
        "systemctl reload smtpfilter": reload,  # what the unit's ExecReload does: kill -HUP
    }))
    poll(lambda: log().count("reloaded:") == 2, 20, "the second reload in smtpfilter's log")
    with smtplib.SMTP("127.0.0.1", system.ports.filter, timeout=30) as client:
        client.ehlo("probe.test")
        assert client.esmtp_features["size"] == "52428800"

    bash(stop)
    assert not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    assert "smtpfilter stopped" in log()
    assert not re.search(r"(?m)^(WARNING|ERROR|CRITICAL|Traceback)", log()), log()


def test_step_4_switches_filtering_on_and_doctor_agrees(mail_system):
    # The master.cf blocks are in (the README's "append"); main.cf is as before step 4.
    system = mail_system("after-queue")
    etc = system.postfix.config_dir
    main_cf = etc / "main.cf"
    main_cf.write_text(re.sub(r"(?m)^(content_filter|receive_override_options|"
                              r"smtpd_forbid_bare_newline) = .*\n", "", main_cf.read_text()))
    postconf, postfix = program("postconf"), program("postfix")
    bash(f"{postfix} -c {etc} reload")

    done = bash(substitute(shell_block("'smtpd_forbid_bare_newline = normalize'"), {
        "postconf -e": f"{postconf} -c {etc} -e",
        "postfix check": f"{postfix} -c {etc} check",
        "postfix reload": f"{postfix} -c {etc} reload",
        "[127.0.0.1]:10025": f"[127.0.0.1]:{system.ports.filter}",
        "/opt/smtpfilter/bin/smtpfilter": f"{sys.executable} -m smtpfilter",
        "/etc/smtpfilter/smtpfilter.yaml": str(system.filter_config),
    }))
    assert done.stdout.splitlines()[-1] == "no problems found", done.stdout
    assert "after-queue: main.cf content_filter = scan:" in done.stdout

    message_id, data = content("after step 4")
    [onward] = system.sent_onward(system.submit(data))
    system.delivered_finally(onward)
    assert [d.header("Message-ID") for d in system.delivered()] == [message_id]
