"""``smtpfilter doctor`` against private Postfix configurations: the shipped examples as written
(no findings, in every mode) and each mistake it knows, one at a time (issue 12).

Nothing is started: doctor only reads the configuration with postconf, as an admin runs it,
so each case is a configuration directory built from the examples, then edited.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.conftest import ISSUE_RULES
from tests.postfix.conftest import MODES, MailSystem, Ports, configure, filter_config
from tests.postfix.instance import Postfix, SmtpSink, backdate

pytestmark = pytest.mark.postfix


@pytest.fixture
def configured() -> Iterator[Callable[..., MailSystem]]:
    """``configured(mode)`` → a MailSystem whose Postfix is configured, not run."""
    roots = []

    def build(mode: str) -> MailSystem:
        root = Path(tempfile.mkdtemp(prefix="smtpfilter-doctor-"))
        roots.append(root)
        ports = Ports()
        system = MailSystem(mode=mode, root=root, ports=ports, postfix=Postfix(root),
                            destination=SmtpSink(root, ports.destination),
                            filter_config=filter_config(root, ports, ISSUE_RULES, mode=mode))
        configure(system, None)
        return system

    yield build
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def edit(system: MailSystem, name: str, change: Callable[[str], str]) -> None:
    path = system.postfix.config_dir / name
    text = path.read_text()
    changed = change(text)
    assert changed != text, f"the edit changed nothing in {name}"
    path.write_text(changed)
    backdate(path)


def doctor(system: MailSystem) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "smtpfilter", "doctor", "--config", str(system.filter_config)],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("mode", list(MODES))
def test_the_examples_as_written_have_no_findings(configured, mode):
    system = configured(mode)
    result = doctor(system)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Postfix 3.") and f"listen 127.0.0.1:{system.ports.filter}" in lines[0]
    expected = {"after-queue": "after-queue: main.cf content_filter = scan:",
                "per-domain": "after-queue: hash:",
                "outside-only": f"after-queue: master.cf 127.0.0.1:{system.ports.smtp}/inet -o "
                                "content_filter = scan:",
                "before-queue": f"before-queue: master.cf 127.0.0.1:{system.ports.smtp}/inet -o "
                                f"smtpd_proxy_filter = 127.0.0.1:{system.ports.filter}",
                "pipe": "pipe: main.cf content_filter = smtpfilter:dummy",
                "milter": f"milter: main.cf smtpd_milters = inet:127.0.0.1:{system.ports.filter}",
                }[mode]
    assert any(line.startswith(expected) for line in lines[1:-1]), lines
    assert lines[-1] == "no problems found"
    assert result.stderr == ""


def _drop_option(name: str, service: str = "scan") -> Callable[[str], str]:
    """master.cf without one ``-o name=...`` line of ``service``'s entry."""
    def change(text: str) -> str:
        head, entry = text.split(f"\n{service} ", 1) if service == "scan" else text.rsplit(
            f"\n{service} ", 1)
        return head + f"\n{service} " + re.sub(rf"\n\s+-o {name}=\S*", "", entry, count=1)
    return change


def _reinject(system: MailSystem) -> str:
    return f"127.0.0.1:{system.ports.reinject}"


# (mode, what to break: (file, change(system) -> str -> str) or None, smtpfilter config,
#  the start of the finding's line, words in it)
CASES = {
    "content-filter-elsewhere": (
        "after-queue",
        ("main.cf", lambda s: lambda t: t.replace(f"scan:[127.0.0.1]:{s.ports.filter}",
                                                  "scan:[127.0.0.1]:10999")),
        "", "main.cf content_filter: scan:[127.0.0.1]:10999 delivers to [127.0.0.1]:10999",
    ),
    "content-filter-unknown-transport": (
        "after-queue",
        ("main.cf", lambda s: lambda t: t.replace("content_filter = scan:", "content_filter = scanner:")),
        "", "main.cf content_filter: scanner:", "master.cf has no transport 'scanner'",
    ),
    "nothing-routes-to-us": (
        "after-queue",
        ("main.cf", lambda s: lambda t: re.sub(r"(?m)^content_filter = .*\n", "", t)),
        "", "main.cf: nothing sends mail to smtpfilter",
    ),
    "proxy-elsewhere": (
        "before-queue",
        ("master.cf", lambda s: lambda t: t.replace(f"smtpd_proxy_filter=127.0.0.1:{s.ports.filter}",
                                                    "smtpd_proxy_filter=127.0.0.1:10999")),
        "", "master.cf 127.0.0.1:", "127.0.0.1:10999 is not where smtpfilter listens",
    ),
    "milter-at-our-port": (
        "after-queue",
        ("main.cf", lambda s: lambda t: t + f"smtpd_milters = inet:127.0.0.1:{s.ports.filter}\n"),
        "", "main.cf smtpd_milters: inet:127.0.0.1:", "not the milter protocol",
    ),
    "milter-default-action-accept": (
        "milter",
        ("main.cf", lambda s: lambda t: t.replace("milter_default_action = tempfail",
                                                  "milter_default_action = accept")),
        "", "main.cf: milter_default_action = accept", "unfiltered",
    ),
    "reinject-missing": (
        "after-queue",
        ("master.cf", lambda s: lambda t: t.replace(f"\n{_reinject(s)} inet", "\n127.0.0.1:10998 inet")),
        "", "master.cf: no smtpd listens on 127.0.0.1:",
    ),
    "reinject-filters-again": (
        "after-queue", ("master.cf", lambda s: _drop_option("content_filter", _reinject(s))),
        "", "master.cf 127.0.0.1:", "content_filter = scan:", "loops back",
    ),
    "reinject-runs-milters": (
        "after-queue",
        ("master.cf", lambda s: lambda t: t.replace(
            "receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters",
            "receive_override_options=no_unknown_recipient_checks")),
        "", "master.cf 127.0.0.1:", "lacks no_header_body_checks, no_milters",
    ),
    "reinject-without-xforward": (
        "after-queue",
        ("master.cf", lambda s: _drop_option("smtpd_authorized_xforward_hosts", _reinject(s))),
        "", "master.cf 127.0.0.1:", "smtpd_authorized_xforward_hosts (empty)",
    ),
    "reinject-beyond-loopback": (
        "after-queue",
        ("master.cf", lambda s: lambda t: t.replace(f"\n{_reinject(s)} inet", f"\n192.0.2.1:{s.ports.reinject} inet")),
        "forward: 192.0.2.1:{reinject}\n", "master.cf 192.0.2.1:", "open relay",
    ),
    "before-queue-reinject-skips-milters": (
        "before-queue",
        ("master.cf", lambda s: lambda t: t.replace(
            "receive_override_options=no_unknown_recipient_checks",
            "receive_override_options=no_unknown_recipient_checks,no_milters")),
        "", "master.cf 127.0.0.1:", "before the queue run only here",
    ),
    "scan-folds-long-lines": (
        "after-queue", ("master.cf", lambda s: _drop_option("smtp_line_length_limit")),
        "", "master.cf scan/unix: smtp_line_length_limit = 998", "DKIM",
    ),
    "scan-converts-8bit": (
        "after-queue", ("master.cf", lambda s: _drop_option("disable_mime_output_conversion")),
        "", "master.cf scan/unix: 8-bit mail may be converted",
    ),
    "scan-without-xforward": (
        "after-queue", ("master.cf", lambda s: _drop_option("smtp_send_xforward_command")),
        "", "master.cf scan/unix: no XFORWARD",
    ),
    "scan-maxproc-above-sessions": (
        "after-queue", None, "limits: {sessions: 10}\n",
        "master.cf scan/unix: maxproc 20 is more than smtpfilter's limits.sessions (10)",
    ),
    "proxy-maxproc-above-sessions": (
        "before-queue", None, "limits: {sessions: 10}\n",
        "master.cf 127.0.0.1:", "maxproc 20 is more than smtpfilter's limits.sessions (10)",
    ),
    "scan-gives-up-too-early": (
        "after-queue",
        ("master.cf", lambda s: lambda t: t.replace("smtp_data_done_timeout=1200s", "smtp_data_done_timeout=300s")),
        "", "master.cf scan/unix: smtp_data_done_timeout = 300s is not above", "twice",
    ),
    "proxy-gives-up-too-early": (
        "before-queue",
        ("master.cf", lambda s: lambda t: t.replace("smtpd_proxy_timeout=400s", "smtpd_proxy_timeout=100s")),
        "", "master.cf 127.0.0.1:", "smtpd_proxy_timeout = 100s is not above",
    ),
    "size-below-postfix": (
        "after-queue",
        ("main.cf", lambda s: lambda t: t + "message_size_limit = 52428800\n"),
        "limits: {message_size: 10m}\n",
        "main.cf: message_size_limit (52428800) is above smtpfilter's limit (10485760)",
        "remove limits.message_size",
    ),
    "same-hostname": (
        "after-queue", None, "hostname: MX.example.test\n",
        "{config}: hostname MX.example.test is Postfix's myhostname",
    ),
    "smuggling-open": (
        "after-queue",
        ("main.cf", lambda s: lambda t: t.replace("smtpd_forbid_bare_newline = normalize",
                                                  "smtpd_forbid_bare_newline = no")),
        "", "main.cf: smtpd_forbid_bare_newline = no", "CVE-2023-51764", "normalize",
    ),
    "smuggling-open-on-one-smtpd": (
        "outside-only",
        ("master.cf", lambda s: lambda t: t.replace(
            "    -o content_filter=scan:", "    -o smtpd_forbid_bare_newline=no\n    -o content_filter=scan:")),
        "", "master.cf 127.0.0.1:", "-o smtpd_forbid_bare_newline=no",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_each_mistake_is_one_finding_with_what_to_change(configured, case):
    mode, breakage, config, start, *words = CASES[case]
    system = configured(mode)
    settings = system.filter_config.read_text()
    for line in config.replace("{reinject}", str(system.ports.reinject)).splitlines():
        key = line.partition(":")[0]
        settings = re.sub(rf"(?m)^{key}:.*\n", "", settings) + line + "\n"
    system.filter_config.write_text(settings)
    if breakage is not None:
        name, change = breakage
        edit(system, name, change(system))
    result = doctor(system)
    assert result.returncode == 1, result.stdout + result.stderr
    start = start.replace("{config}", str(system.filter_config))
    findings = [line for line in result.stdout.splitlines() if line.startswith(start)]
    assert len(findings) == 1, result.stdout
    assert all(word in findings[0] for word in words), findings[0]
    assert "; " in findings[0]  # ...and what to change
    assert result.stdout.splitlines()[-1].endswith("problem(s)")


def test_an_unreadable_postfix_configuration_is_exit_69_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "smtpfilter", "doctor", "--postfix-config", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 69
    [line] = result.stderr.splitlines()
    assert line.startswith("smtpfilter: cannot read Postfix's configuration: ")
