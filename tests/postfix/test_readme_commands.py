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


def test_step_5_swaks_and_the_log_lines_of_both_passes(mail_system):
    """Step 5 as written, against a private instance: swaks to its port-25 smtpd, postmaster@
    its mydomain, and the grep over its maillog finds the lines of both passes (the first
    queue id handed to smtpfilter, the 10026 smtpd's orig_queue_id=). smtpfilter's own two
    lines go to syslog in production; here its log is a file, read beside."""
    assert program("swaks"), "swaks: .ci/run installs it"
    system = mail_system("after-queue")
    etc = system.postfix.config_dir
    swaks_line, grep_line = shell_block("swaks --server 127.0.0.1 ").replace("\\\n", " ").strip().splitlines()
    sent = bash(substitute(swaks_line, {
        "--server 127.0.0.1": f"--server 127.0.0.1:{system.ports.smtp}",
        "postconf -h": f"{program('postconf')} -c {etc} -h",
    }))
    [first] = re.findall(r"<-  250 2\.0\.0 Ok: queued as (\w+)", sent.stdout)
    [onward] = system.sent_onward(first)
    system.delivered_finally(onward)
    [delivered] = system.delivered()
    assert delivered.header("Subject") == "smtpfilter test"
    assert delivered.header("To") == "postmaster@example.test"

    lines = bash(substitute(grep_line, {"/var/log/mail.log": str(system.postfix.log_file)})).stdout
    assert re.search(rf"postfix/reinject/smtpd\[\d+\]: {onward}: client=\S+\[127\.0\.0\.1\], "
                     rf"orig_queue_id={first}, orig_client=\S+\[127\.0\.0\.1\]", lines), lines
    assert re.search(rf"postfix/scan/smtp\[\d+\]: {first}: to=<postmaster@example\.test>, "
                     rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{system.ports.filter}, .*status=sent "
                     rf"\(250 2\.0\.0 Ok: queued as {onward}\)", lines), lines
    assert system.filter is not None
    # The README's two smtpfilter lines, in the Postfix shape of its sample.
    system.filter.wait_log(rf"{first}: handing over to 127\.0\.0\.1:{system.ports.reinject}: "
                           r"from=<you@example\.net>, size=\d+")
    system.filter.wait_log(rf"{first}: client=\S+\[127\.0\.0\.1\], from=<you@example\.net>, "
                           rf"to=<postmaster@example\.test>, .*action=accept, .*status=sent "
                           rf"\(250 2\.0\.0 Ok: queued as {onward}\)")


def test_step_7_turns_filtering_off_and_requeues_what_waited(mail_system):
    """Step 7 as written, against a private instance whose smtpfilter is down: a message waits
    (connection refused, deferred); postconf -X, reload and postsuper -r ALL make it go out
    unfiltered at once. ``systemctl disable --now smtpfilter`` needs systemd as PID 1, absent
    in CI: that line is compared word for word (here the filter never ran)."""
    system = mail_system("after-queue", start_filter=False)
    etc = system.postfix.config_dir
    message_id, data = content("waits for the filter")
    first = system.submit(data)
    system.postfix.wait_log(rf"{first}: to=<[^>]*>, relay=none, .*status=deferred \(connect to "
                            rf"127\.0\.0\.1\[127\.0\.0\.1\]:{system.ports.filter}: Connection refused\)")
    *postfix_lines, systemctl = shell_block("postsuper -r ALL").strip().splitlines()
    assert systemctl == "systemctl disable --now smtpfilter"
    postconf, postfix, postsuper = program("postconf"), program("postfix"), program("postsuper")
    bash(substitute("\n".join(postfix_lines), {
        "postconf -X": f"{postconf} -c {etc} -X",
        "postfix reload": f"{postfix} -c {etc} reload",
        "postsuper -r ALL": f"{postsuper} -c {etc} -r ALL",
    }))
    assert "content_filter" not in bash(f"{postconf} -c {etc} -n").stdout
    # Requeued mail passes pickup(8) again, under a new queue id (postsuper(1)). postsuper
    # wakes pickup; a pickup that the reload was replacing just then misses it and finds the
    # mail on its own 60 s timer (master.cf "wakeup"): wake it as postsuper does, not wait.
    bash(f"{program('postkick')} -c {etc} public pickup W")
    [again] = system.postfix.wait_log(rf"postfix/pickup\[\d+\]: (\w+): .* orig_id={first}")
    system.postfix.wait_log(rf"postfix/smtp\[\d+\]: {again.group(1)}: to=<[^>]*>, "
                            rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{system.ports.destination},.* status=sent")
    assert [d.header("Message-ID") for d in system.delivered()] == [message_id]
