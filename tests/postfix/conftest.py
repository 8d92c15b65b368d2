"""Real Postfix, built from master.cf.example and main.cf.example, around a real smtpfilter.

``mail_system(mode)`` gives a running private Postfix instance configured with the example
blocks of ``mode`` (see master.cf.example's table), a final destination (smtp-sink) behind
``relayhost``, and ``smtpfilter serve`` as a child process (not in pipe mode, where pipe(8) runs
``smtpfilter pipe`` per message). Everything listens on free high loopback ports and is stopped
after the test, pass or fail.

Without Postfix (or without root, which a private instance needs) these tests are skipped,
except when CI=true: there .ci/run installs Postfix, and a skip would hide a broken setup.
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import tempfile
import textwrap
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.conftest import ISSUE_RULES
from tests.postfix.deploy import deploy
from tests.postfix.examples import REPO, blocks, merge_master_cf, no_chroot, substitute
from tests.postfix.instance import MASTER_CF_DIST, Postfix, SmtpSink, free_port, program
from tests.support.messages import date_header
from tests.support.service import FilterProcess

NEEDED = ("postfix", "postconf", "postqueue", "postmap", "smtp-sink", "script")

# mode: (master.cf.example blocks, main.cf.example blocks), as master.cf.example's table says.
MODES = {
    "after-queue": (("scan", "reinject"), ("smuggling", "after-queue")),
    "per-domain": (("scan", "reinject"), ("smuggling", "per-domain")),
    "outside-only": (("scan", "reinject", "outside-only"), ("smuggling",)),
    "before-queue": (("before-queue",), ("smuggling",)),
    "pipe": (("reinject", "pipe"), ("smuggling", "pipe")),
    # smtpd_milters: no second smtpd, no scan transport; smtpfilter runs "smtpfilter milter".
    "milter": ((), ("smuggling", "milter")),
}

# The relay hop to the final destination (smtp-sink) stands in for delivery to a mailbox, which
# changes no line: smtp(8) would break lines over 998 octets (smtp_line_length_limit) and a
# test of long lines would measure this hop, not the filter's. The scan transport is an entry
# of its own: it does not inherit this.
FINAL_HOP = """\
smtp      unix  -       -       n       -       -       smtp
    -o smtp_line_length_limit=0
"""

FILTERED_DOMAIN = "example.com"  # the per-domain map's example domain, kept as shipped
OTHER_DOMAIN = "other.test"
SENDER = "sender@sender.test"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "a private Postfix instance needs root"
    absent = [name for name in NEEDED if program(name) is None]
    if absent or not MASTER_CF_DIST.is_file():
        return f"Postfix is not installed (missing {', '.join(absent) or MASTER_CF_DIST})"
    return None


def require_postfix() -> None:
    """Return if Postfix can be run here; else fail under CI=true and skip elsewhere."""
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}: .ci/run must install it (apt-get install postfix)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _postfix_required() -> None:
    require_postfix()


@dataclass
class Ports:
    smtp: int = field(default_factory=free_port)  # the port-25 smtpd
    submission: int = field(default_factory=free_port)  # the port-587 smtpd (outside-only)
    filter: int = field(default_factory=free_port)  # smtpfilter, 10025 in the examples
    reinject: int = field(default_factory=free_port)  # the after-filter smtpd, 10026
    destination: int = field(default_factory=free_port)  # the final destination (smtp-sink)


@dataclass
class MailSystem:
    mode: str
    root: Path
    ports: Ports
    postfix: Postfix
    destination: SmtpSink
    filter_config: Path
    filter: FilterProcess | None = None  # the one running now
    filters: list[FilterProcess] = field(default_factory=list)  # every one started
    # Postfix warnings a test provokes on purpose; any other warning, error, fatal or panic
    # in Postfix's log fails the test (a broken example often shows only there).
    expected_warnings: list[str] = field(default_factory=list)

    def unexpected_problems(self) -> list[str]:
        """Warnings and worse from Postfix's log and from smtpfilter's, unless expected."""
        postfix = re.compile(r"^\S+ +\d+ [\d:]+ \S+ postfix/[\w/-]+\[\d+\]: (warning|error|fatal|panic): ")
        ours = re.compile(r"^(WARNING|ERROR|CRITICAL) |^Traceback ")
        lines = [line for line in self.postfix.log().splitlines() if postfix.match(line)]
        for process in self.filters:
            lines += [f"smtpfilter: {line}" for line in process.log().splitlines() if ours.match(line)]
        expected = self.expected_warnings + self.postfix.tolerated
        return [line for line in lines if not any(re.search(p, line) for p in expected)]

    def submit(
        self,
        data: bytes,
        rcpts: tuple[str, ...] = (f"rcpt@{FILTERED_DOMAIN}",),
        *,
        sender: str = SENDER,
        port: int | None = None,
        rcpt_options: tuple[str, ...] = (),
    ) -> str:
        """Send one message like a remote MTA; return Postfix's queue id from its reply."""
        # From 127.0.0.2: the 10026 smtpd's own client is always 127.0.0.1, so an
        # orig_client=...[127.0.0.2] in its log can only have come through XFORWARD.
        with smtplib.SMTP(
            "127.0.0.1", port or self.ports.smtp, timeout=60, source_address=("127.0.0.2", 0)
        ) as client:
            client.ehlo("client.example.net")
            code, text = client.mail(sender)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, text, sender)
            for rcpt in rcpts:
                code, text = client.rcpt(rcpt, list(rcpt_options))
                if code != 250:
                    raise smtplib.SMTPRecipientsRefused({rcpt: (code, text)})
            code, text = client.data(data)
            if code != 250:
                raise smtplib.SMTPDataError(code, text)
        match = re.search(rb"queued as (\w+)", text)
        assert match, text
        return match.group(1).decode()

    def start_filter(self) -> FilterProcess:
        command = "milter" if self.mode == "milter" else "serve"
        self.filter = FilterProcess(self.filter_config, command=command).start()
        self.filters.append(self.filter)
        return self.filter

    def delivered(self) -> list:
        return self.destination.delivered()

    def sent_onward(self, queue_id: str, count: int = 1) -> list[str]:
        """The queue ids the filter hop produced: ``queue_id`` was handed to smtpfilter and the
        10026 smtpd queued it again (smtpfilter relays its "250 ... queued as NEW" reply)."""
        matches = self.postfix.wait_log(
            rf"postfix/scan/smtp\[\d+\]: {queue_id}: to=<[^>]*>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
            rf"{self.ports.filter},.* status=sent \(250 2\.0\.0 Ok: queued as (\w+)\)",
            count,
        )
        return [m.group(1) for m in matches]

    def delivered_finally(self, queue_id: str, count: int = 1) -> None:
        """Wait until ``queue_id`` reached the final destination ``count`` times."""
        self.postfix.wait_log(
            rf"{queue_id}: to=<[^>]*>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
            rf"{self.ports.destination},.* status=sent",
            count,
        )


def content(subject: str, *, days_old: float = 0, headers: tuple[str, ...] = (), date: bool = True) -> tuple[str, bytes]:
    """(Message-ID, message) as a mail program writes it: LF lines, not dot-stuffed."""
    message_id = f"<{uuid.uuid4().hex}@sender.test>"
    lines = [date_header(days_old)] if date else []
    lines += [
        "From: Sender <sender@sender.test>",
        f"To: <rcpt@{FILTERED_DOMAIN}>",
        f"Subject: {subject}",
        f"Message-ID: {message_id}",
        *headers,
        "",
        f"This is {subject}.",
        ".a line that starts with a dot",
        "",
    ]
    return message_id, "\n".join(lines).encode()


def filter_config(root: Path, ports: Ports, rules: str, extra: str = "", mode: str = "") -> Path:
    # The milter mode's port is the filter's (inet:127.0.0.1:11332 in the examples); in the
    # other modes the milter would listen elsewhere, so that a smtpd_milters line naming the
    # SMTP port is the mistake it is (smtpfilter doctor).
    milter_port = ports.filter if mode == "milter" else free_port()
    rules_path = root / "rules.yaml"
    rules_path.write_text(textwrap.dedent(rules))
    config = root / "smtpfilter.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{ports.filter}\n"
        f"forward: 127.0.0.1:{ports.reinject}\n"
        "hostname: smtpfilter.example.test\n"
        f"rules: [{rules_path}]\n"
        f"milter: {{listen: 'inet:127.0.0.1:{milter_port}'}}\n"
        # The private instance's main.cf (its message_size_limit), as /etc/postfix would be.
        f"postfix: {{config_directory: {root / 'etc'}}}\n" + textwrap.dedent(extra)
    )
    return config


def override(main_cf: str, settings: str) -> str:
    """``main_cf`` with each ``name = value`` of ``settings`` in place of the same parameter
    (a test's own settings; Postfix would take the last one anyway, with a warning)."""
    for line in textwrap.dedent(settings).splitlines():
        name, sep, _ = line.partition("=")
        if sep and name.strip() and not line.startswith(("#", " ", "\t")):
            main_cf = re.sub(rf"(?m)^{re.escape(name.strip())}\s*=.*\n(?:[ \t].*\n)*", "", main_cf)
    return main_cf + "\n# --- this test's own settings\n" + textwrap.dedent(settings)


def configure(system: MailSystem, launcher: Path | None, main_cf_extra: str = "") -> None:
    """The private instance's main.cf and master.cf: the base plus the mode's example blocks,
    with only machine-specific details rewritten."""
    ports, postfix = system.ports, system.postfix
    master_blocks, main_blocks = MODES[system.mode]
    master_example = blocks(REPO / "master.cf.example")
    main_example = blocks(REPO / "main.cf.example")
    replacements = {
        "inet:127.0.0.1:11332": f"inet:127.0.0.1:{ports.filter}",
        "[127.0.0.1]:10025": f"[127.0.0.1]:{ports.filter}",
        "127.0.0.1:10025": f"127.0.0.1:{ports.filter}",
        "127.0.0.1:10026": f"127.0.0.1:{ports.reinject}",
        "/etc/postfix/": f"{postfix.config_dir}/",
        "/etc/smtpfilter/smtpfilter.yaml": str(system.filter_config),
        # pipe(8) refuses root; the dedicated account of the example is "nobody" here.
        "user=smtpfilter": "user=nobody",
    }
    if launcher is not None:
        replacements["/opt/smtpfilter/bin/smtpfilter"] = str(launcher)

    def render(text: str) -> str:
        text = substitute(text, replacements)
        # The port-25 and port-587 smtpd, moved to free loopback ports.
        text = re.sub(r"(?m)^smtp(\s+inet\s)", rf"127.0.0.1:{ports.smtp}\1", text)
        return re.sub(r"(?m)^submission(\s+inet\s)", rf"127.0.0.1:{ports.submission}\1", text)

    master_cf = merge_master_cf(
        render(MASTER_CF_DIST.read_text()),
        FINAL_HOP,
        *(render(master_example[name]) for name in master_blocks),
    )
    main_cf = postfix.base_main_cf(relay_port=ports.destination) + "".join(
        f"\n# --- main.cf.example: {name}\n{render(main_example[name])}" for name in main_blocks
    )
    if main_cf_extra:
        main_cf = override(main_cf, main_cf_extra)
    files = {}
    if system.mode == "per-domain":
        files["smtpfilter_domains"] = render(main_example["per-domain-map"])
    postfix.write(main_cf, no_chroot(master_cf), files)
    if files:
        postfix.postmap("smtpfilter_domains")


@pytest.fixture(scope="session")
def pipe_launcher(tmp_path_factory) -> Iterator[Path]:
    if _missing() is not None:
        pytest.skip("no Postfix")  # the test itself fails or skips first
    dest = Path(tempfile.mkdtemp(prefix="smtpfilter-deploy-"))
    dest.chmod(0o755)
    try:
        yield deploy(dest)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


@pytest.fixture
def mail_system(request) -> Iterator[Callable[..., MailSystem]]:
    """``mail_system(mode, rules=ISSUE_RULES, start_filter=True, main_cf="", config="")`` → a
    running MailSystem; ``main_cf`` settings replace the instance's, ``config`` is added to
    smtpfilter's."""
    systems: list[MailSystem] = []

    def build(
        mode: str, rules: str = ISSUE_RULES, start_filter: bool = True, *, main_cf: str = "",
        config: str = "",
    ) -> MailSystem:
        # Not pytest's tmp_path: its parents are 0700, and Postfix's unprivileged daemons,
        # smtp-sink and the pipe(8) user must all reach this tree.
        root = Path(tempfile.mkdtemp(prefix="smtpfilter-postfix-"))
        root.chmod(0o755)
        ports = Ports()
        system = MailSystem(
            mode=mode,
            root=root,
            ports=ports,
            postfix=Postfix(root),
            destination=SmtpSink(root, ports.destination),
            filter_config=filter_config(root, ports, rules, config, mode),
        )
        systems.append(system)
        launcher = request.getfixturevalue("pipe_launcher") if mode == "pipe" else None
        configure(system, launcher, main_cf)
        problems = system.postfix.check()
        assert problems == "", f"postfix check on the {mode} example:\n{problems}"
        system.destination.start()
        if start_filter and mode != "pipe":
            system.start_filter()
        listeners = [ports.smtp] if mode == "milter" else [ports.smtp, ports.reinject]
        if mode == "outside-only":
            listeners.append(ports.submission)
        system.postfix.start(tuple(listeners))
        return system

    yield build
    problems = []
    for system in systems:  # every one is stopped and removed, whatever fails
        try:
            system.postfix.stop()
            for process in system.filters:
                process.stop()
            problems += system.unexpected_problems()
        finally:
            for process in system.filters:
                process.close()
            system.destination.stop()
            if os.environ.get("SMTPFILTER_KEEP_POSTFIX"):
                print(f"kept {system.root}")
            else:
                shutil.rmtree(system.root, ignore_errors=True)
    assert not problems, "Postfix logged:\n" + "\n".join(problems)
