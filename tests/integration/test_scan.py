"""smtpfilter scan and test on real mailboxes made in the test: a Maildir, an mbox, .eml files."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import mailbox
import os
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from smtpfilter.cli import main
from smtpfilter.tools.scan import Stored, from_line_date, stored_view
from tests.support.dnsserver import SITES, DnsServer
from tests.support.unprivileged import drop_file_override

RULES = f"""
rules:
  - name: DNSBL
    check: dnsbl
    sites: "{SITES}"
    threshold: 3
    action: reject
    text: "5.7.1 client [$1] blocked using $2"
  - name: OLD_DATE
    check: date
    older_than: 30d
    action: discard
  - name: SPAM_MAILER
    check: header
    header: X-Mailer
    match: '^MaxBulk\\.Mailer'
    action: discard
    mode: warn
"""

# What a mailbox holds after content_filter and Dovecot LMTP: delivery headers, the 10026 pass
# (from our filter on loopback), a tag we added, then the hop where the admin's Postfix received
# it from the Internet. Only that hop and what is below it is what the filter saw.
DELIVERED = """\
Return-Path: <bulk@example.net>
Delivered-To: user@example.com
Received: from mail.example.com by mail.example.com with LMTP id AbC (envelope-from <bulk@example.net>); {stamp}
Received: from smtpfilter.example.com (localhost [127.0.0.1])
\tby mail.example.com (Postfix) with ESMTP id Q2 for <user@example.com>; {stamp}
X-Spam-Flag: YES
Received: from sender.example.net (sender.example.net [{ip}])
\tby mail.example.com (Postfix) with ESMTP id Q1 for <user@example.com>; {stamp}
Date: {date}
From: Sender <bulk@example.net>
{extra}Subject: {subject}

Body.
"""


def delivered(*, ip="192.0.2.7", stamp="Tue, 05 Mar 2024 10:00:00 +0000",
              date="Tue, 05 Mar 2024 09:59:00 +0000", subject="hello", extra="") -> bytes:
    return DELIVERED.format(ip=ip, stamp=stamp, date=date, subject=subject, extra=extra).encode()


@pytest.fixture
def config(tmp_path: Path, dns_server: DnsServer) -> Path:
    (tmp_path / "rules.yaml").write_text(textwrap.dedent(RULES))
    path = tmp_path / "smtpfilter.yaml"
    path.write_text(
        "rules: [rules.yaml]\n"
        f'dns: {{nameservers: ["127.0.0.1:{dns_server.port}"], timeout: 1s, message_timeout: 2s}}\n'
    )
    return path


def make_maildir(root: Path) -> Path:
    box = mailbox.Maildir(root / "Maildir", create=True)
    try:
        # Judged as of its receipt (March 2024), the Date is fresh: not OLD_DATE, though old now.
        box.add(delivered(subject="fresh then"))
        # Its Date is 60 days older than its receipt: OLD_DATE.
        box.add(delivered(date="Fri, 05 Jan 2024 10:00:00 +0000", subject="old at receipt"))
        # The client 1.2.3.4 is listed by the test DNS lists: DNSBL reject.
        box.add(delivered(ip="1.2.3.4", subject="from a listed client"))
        # A bulk mailer, but SPAM_MAILER runs in mode: warn: delivered, "would discard".
        box.add(delivered(extra="X-Mailer: MaxBulk.Mailer 12\n", subject="bulk"))
        # No Received at all: the Maildir file time is the receipt time.
        key = box.add(b"Date: Mon, 01 Jan 2018 10:00:00 +0000\nFrom: a@example.org\n"
                      b"Subject: no received\n\nx\n")
        path = root / "Maildir" / box._lookup(key)  # noqa: SLF001
        old = datetime(2018, 1, 2, tzinfo=timezone.utc).timestamp()
        os.utime(path, (old, old))
    finally:
        box.close()
    return root / "Maildir"


def scan(*args: str) -> int:
    return main(["scan", *args])


async def test_scan_a_maildir(tmp_path, config, capsys):
    maildir = make_maildir(tmp_path)
    assert await asyncio.to_thread(scan, "--config", str(config), str(maildir)) == 0
    out = capsys.readouterr().out
    assert f"Maildir {maildir}: 5 messages scanned" in out
    assert "receipt time from: Received 4, Maildir file time 1" in out
    lines = out.splitlines()
    decisions = dict(line.split()[:2] for line in lines[lines.index("") + 2 : lines.index("") + 5])
    assert decisions == {"accept": "3", "discard": "1", "reject": "1"}
    assert "observe-only (mode: warn or dry_run), would have been: discard 1" in out
    # Per rule: messages with a finding, the rule decided, and it would have decided.
    assert any(line.split() == ["SPAM_MAILER", "1", "0", "1"] for line in lines)
    assert any(line.split() == ["OLD_DATE", "1", "1", "0"] for line in lines)
    assert any(line.split() == ["DNSBL", "1", "1", "0"] for line in lines)
    # What was not delivered: file, Date, From, action, rules, Subject; only what happened.
    start = lines.index("Not delivered (2):")
    would = lines.index("Delivered, but would not have been if the observe-only rules "
                        "(mode: warn, dry_run) were enforced (1):")
    flagged = lines[start + 1 : would]
    assert flagged[0].split()[:2] == ["FILE", "DATE"]
    body = "\n".join(flagged)
    assert "old at receipt" in body and "Fri, 05 Jan 2024 10:00:00 +0000" in body
    assert "from a listed client" in body and "DNSBL(LISTED)" in body
    assert "SPAM_MAILER" not in body and "would" not in body
    assert "fresh then" not in body and "no received" not in body
    # What would have happened, apart.
    assert lines[would + 1].split()[3] == "WOULD"
    [bulk] = lines[would + 2 :]
    assert " discard " in bulk and "SPAM_MAILER(MATCH)" in bulk and bulk.endswith("bulk")


async def test_scan_json_and_csv_for_scripts(tmp_path, config, capsys):
    maildir = make_maildir(tmp_path)
    assert await asyncio.to_thread(scan, "--config", str(config), "--json", str(maildir)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scanned"] == 5 and report["decisions"] == {"accept": 3, "discard": 1, "reject": 1}
    assert report["rules"]["DNSBL"] == {"findings": 1, "decided": 1, "would_decide": 0}
    assert report["rules"]["SPAM_MAILER"] == {"findings": 1, "decided": 0, "would_decide": 1}
    [listed] = [m for m in report["not_delivered"] if m["action"] == "reject"]
    assert listed["reply"] == "550 5.7.1 client [1.2.3.4] blocked using zen.dnsbl.test, bl.dnsbl.test"
    assert sorted(m["action"] for m in report["not_delivered"]) == ["discard", "reject"]
    [bulk] = report["would_not_deliver"]
    assert (bulk["action"], bulk["would"], bulk["subject"]) == ("accept", "discard", "bulk")
    assert report["skipped"] == [] and report["ignored"] == []

    assert await asyncio.to_thread(scan, "--config", str(config), "--csv", str(maildir)) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 5
    by_subject = {row["subject"]: row for row in rows}
    assert by_subject["fresh then"]["action"] == "accept"
    assert by_subject["fresh then"]["received_at"] == "2024-03-05T10:00:00+00:00"
    assert by_subject["fresh then"]["received_by"] == "Received #3"
    assert by_subject["fresh then"]["client"] == "192.0.2.7"
    assert by_subject["bulk"]["would"] == "discard"
    assert by_subject["no received"]["received_at"] == "2018-01-02T00:00:00+00:00"
    assert by_subject["no received"]["action"] == "accept"  # one day old when delivered


async def test_scan_an_mbox_streams_and_dates_by_the_from_line(tmp_path, config, capsys):
    box = mailbox.mbox(tmp_path / "inbox.mbox", create=True)
    try:
        for number in range(200):
            message = mailbox.mboxMessage(
                f"Date: Mon, 01 Jan 2024 10:00:00 +0000\nFrom: a{number}@example.org\n"
                f"Subject: n{number}\n\nbody\nFrom the desk of ...\n".encode()
            )
            # Delivered on March 1st, or on January 2nd: only the first are OLD_DATE.
            when = (2024, 3, 1) if number < 50 else (2024, 1, 2)
            message.set_from("a@example.org", time.struct_time((*when, 10, 0, 0, 0, 1, -1)))
            box.add(message)
        box.flush()
    finally:
        box.close()
    assert await asyncio.to_thread(scan, "--config", str(config), "--json",
                                   str(tmp_path / "inbox.mbox")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source"]["kind"] == "mbox" and report["scanned"] == 200
    assert report["decisions"] == {"discard": 50, "accept": 150}
    assert report["received_at_from"] == {"mbox From line": 200}
    assert report["not_delivered"][0]["file"].endswith("inbox.mbox#1")


async def test_scan_a_directory_of_eml_files_and_report_unreadable_ones(tmp_path, config, capsys):
    folder = tmp_path / "eml"
    folder.mkdir()
    (folder / "a.eml").write_bytes(delivered(ip="1.2.3.4"))
    (folder / "b.eml").write_bytes(delivered())
    (folder / "notes.txt").write_text("not a message file")
    assert await asyncio.to_thread(scan, "--config", str(config), str(folder)) == 0
    captured = capsys.readouterr()
    assert f"directory {folder}: 2 messages scanned" in captured.out
    assert str(folder / "a.eml") in captured.out


async def test_test_command_uses_the_trusted_hop(tmp_path, config, capsys):
    eml = tmp_path / "listed.eml"
    eml.write_bytes(delivered(ip="1.2.3.4"))
    assert await asyncio.to_thread(main, ["test", "--config", str(config), str(eml)]) == 0
    out = capsys.readouterr().out
    assert ("received: 2024-03-05 10:00:00 UTC (Received #3, client 1.2.3.4; the 5 header "
            "fields above it left out)") in out
    assert "reply:    550 5.7.1 client [1.2.3.4] blocked using" in out

    # An explicit hop, and none at all (judged as it is, now, without a client address).
    old = datetime(2020, 1, 1, tzinfo=timezone.utc).timestamp()
    os.utime(eml, (old, old))  # not the file time either
    assert await asyncio.to_thread(main, ["test", "--config", str(config), "--received-hop", "0",
                                          "--json", str(eml)]) == 0
    [report] = json.loads(capsys.readouterr().out)
    # The README's promise: 0 takes the message as it is, judged now (not as of its file time).
    assert report["received_by"] == "now" and report["client"] is None
    assert abs(datetime.fromisoformat(report["received_at"]) - datetime.now(timezone.utc)).total_seconds() < 60
    # Judged as of today, its March 2024 Date is old: what "now" would wrongly say of a mailbox.
    assert report["decision"]["rule"] == "OLD_DATE"
    assert await asyncio.to_thread(main, ["test", "--config", str(config), "--client-ip",
                                          "192.0.2.1", "--json", str(eml)]) == 0
    [report] = json.loads(capsys.readouterr().out)
    assert report["client"] == "192.0.2.1" and report["decision"]["action"] == "accept"


def test_trusted_hop_rules():
    def hop_of(*received: str) -> tuple[int | None, str | None]:
        raw = "".join(f"Received: {r}\n" for r in received).encode() + b"Subject: x\n\nbody\n"
        view = stored_view(Stored("m", raw), hop="auto")
        return view.hop, view.msg.client.addr

    outside = "from a.example (a.example [192.0.2.7]) by mx (Postfix); Tue, 05 Mar 2024 10:00:00 +0000"
    assert hop_of(outside) == (1, "192.0.2.7")
    loop = "from f (localhost [127.0.0.1]) by mx (Postfix); Tue, 05 Mar 2024 10:00:01 +0000"
    lmtp = "from mx ([172.18.0.3]) by mx with LMTP id x; Tue, 05 Mar 2024 10:00:02 +0000"
    assert hop_of(lmtp, loop, outside) == (3, "192.0.2.7")
    lan = "from pc (pc [10.0.0.5]) by mx (Postfix); Tue, 05 Mar 2024 10:00:00 +0000"
    assert hop_of(loop, lan) == (2, "10.0.0.5")  # a LAN client is the client
    local = "by mx (Postfix, from userid 1000); Tue, 05 Mar 2024 10:00:00 +0000"
    assert hop_of(local) == (None, None)  # local submission: no client, no cut
    v6 = "from b ([IPv6:2001:db8::7]) by mx (Postfix); Tue, 05 Mar 2024 10:00:00 +0000"
    assert hop_of(v6) == (1, "2001:db8::7")


def test_from_line_dates():
    assert from_line_date(b"From a@b Fri Mar  1 10:00:00 2024") == datetime(2024, 3, 1, 10, tzinfo=timezone.utc)
    assert from_line_date(b"From MAILER-DAEMON Sat Jan 13 08:05:09 2018 +0000").year == 2018
    assert from_line_date(b"From nobody") is None


def test_progress_bar_only_on_a_terminal(tmp_path):
    import pty
    import subprocess
    import sys

    maildir = make_maildir(tmp_path)
    config = tmp_path / "plain.yaml"
    config.write_text("{}\n")  # the shipped rules: no DNS needed
    command = [sys.executable, "-m", "smtpfilter", "scan", "--config", str(config), str(maildir)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))

    piped = subprocess.run(command, capture_output=True, env=env, timeout=60)
    assert piped.returncode == 0 and piped.stderr == b""  # a pipe or a log gets no bar

    leader, follower = pty.openpty()
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=follower, env=env,
                              timeout=60)
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert done.returncode == 0
    assert b"\r[" in seen and b"5/5" in seen
    assert b"5 messages scanned" in done.stdout


# --- issue 13: what the tools skipped, and what would have happened -------------------------
def run_cli(*args: str, stdin: bytes | None = None, unprivileged: bool = False):
    """The command as an admin runs it: a child process, stdout, stderr and exit code;
    ``unprivileged``: file modes bind it as they bind the service user."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "smtpfilter", *args]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return subprocess.run(command, input=stdin, capture_output=True, env=env, timeout=60,
                          preexec_fn=drop_file_override if unprivileged else None)


async def test_scan_says_what_it_skipped_and_exits_66(tmp_path, config, capsys):
    maildir = make_maildir(tmp_path)
    # A message a mail reader's cleanup left dangling: unreadable, as a mode-000 file is to
    # the service user (root reads those, so the test uses a link to nothing).
    (maildir / "new" / "1709632805.M1P1.mx").symlink_to(tmp_path / "gone")
    status = await asyncio.to_thread(scan, "--config", str(config), str(maildir))
    captured = capsys.readouterr()
    assert status == 66
    dangling = maildir / "new" / "1709632805.M1P1.mx"
    assert f"smtpfilter: {dangling}: skipped: No such file or directory" in captured.err
    assert "1 message(s) skipped (above): not judged" in captured.err
    assert f"Maildir {maildir}: 5 messages scanned, 1 skipped (below)" in captured.out
    lines = captured.out.splitlines()
    skipped = lines[lines.index("Skipped, not judged (1):") + 1 :]
    assert skipped[0].split() == ["FILE", "WHY"]
    assert skipped[1].split(None, 1) == [str(dangling), "No such file or directory"]

    status = await asyncio.to_thread(scan, "--config", str(config), "--json", str(maildir))
    report = json.loads(capsys.readouterr().out)
    assert status == 66 and report["scanned"] == 5
    assert report["skipped"] == [{"file": str(dangling), "reason": "No such file or directory"}]


def test_scan_names_files_the_service_user_cannot_read(tmp_path):
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="smtpfilter-scan-"))
    try:
        top.chmod(0o755)
        (top / "a.eml").write_bytes(delivered())
        (top / "b.eml").write_bytes(delivered())
        (top / "b.eml").chmod(0o000)  # the service user cannot read it
        (top / "c.yaml").write_text("{}\n")
        (top / "c.yaml").chmod(0o644)
        done = run_cli("scan", "--config", str(top / "c.yaml"), str(top), unprivileged=True)
    finally:
        shutil.rmtree(top)
    assert done.returncode == 66, done.stderr
    assert f"smtpfilter: {top / 'b.eml'}: skipped: Permission denied".encode() in done.stderr
    assert b"Traceback" not in done.stderr
    assert b"1 message scanned, 1 skipped (below)" in done.stdout


async def test_scan_reads_a_maildir_folder_given_directly(tmp_path, config, capsys):
    maildir = make_maildir(tmp_path)
    status = await asyncio.to_thread(scan, "--config", str(config), "--json", str(maildir / "new"))
    report = json.loads(capsys.readouterr().out)
    assert status == 0
    assert report["source"]["kind"] == "Maildir folder" and report["scanned"] == 5
    assert report["decisions"] == {"accept": 3, "discard": 1, "reject": 1}


async def test_scan_of_a_folder_without_eml_files_says_what_it_left_unread(tmp_path, config, capsys):
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "1709632805.M1P1.mx").write_bytes(delivered())
    (folder / "notes.txt").write_text("not a message")
    status = await asyncio.to_thread(scan, "--config", str(config), str(folder))
    captured = capsys.readouterr()
    assert status == 66  # nothing read: most likely the wrong folder
    note = (f"{folder}: 2 files not named *.eml, not read (1709632805.M1P1.mx, notes.txt); "
            f"a Maildir's new/ or cur/ is read whole")
    assert f"smtpfilter: {note}" in captured.err
    assert note in captured.out and "0 messages scanned" in captured.out


DRY_RUN = "dry_run: true\n"


async def test_test_and_scan_keep_what_happened_apart_from_what_would_have(tmp_path, config, capsys):
    eml = tmp_path / "bulk.eml"
    eml.write_bytes(delivered(extra="X-Mailer: MaxBulk.Mailer 12\n", subject="bulk"))
    # mode: warn on the rule
    assert await asyncio.to_thread(main, ["test", "--config", str(config), str(eml)]) == 0
    out = capsys.readouterr().out
    assert "  decision: accept, score 0\n" in out
    assert "  would have: discard by SPAM_MAILER (SPAM_MAILER has mode: warn)\n" in out
    # dry_run for every rule: the decision used to read "accept (would discard by X) by X".
    config.write_text(config.read_text() + DRY_RUN)
    eml.write_bytes(delivered(ip="1.2.3.4"))
    assert await asyncio.to_thread(main, ["test", "--config", str(config), str(eml)]) == 0
    out = capsys.readouterr().out
    [decision] = [line for line in out.splitlines() if "decision:" in line]
    assert decision == "  decision: accept, score 0"
    assert "  would have: reject by DNSBL (dry_run is on: no rule acts)\n" in out

    maildir = make_maildir(tmp_path)
    assert await asyncio.to_thread(scan, "--config", str(config), str(maildir)) == 0
    out = capsys.readouterr().out
    assert "Every message would be delivered." in out and "Not delivered" not in out
    assert ("Delivered, but would not have been if the observe-only rules (mode: warn, "
            "dry_run) were enforced (2):") in out
    lines = out.splitlines()
    assert any(line.split() == ["DNSBL", "1", "0", "1"] for line in lines)


async def test_a_received_hop_beyond_the_headers_is_a_warning(tmp_path, config, capsys):
    eml = tmp_path / "m.eml"
    eml.write_bytes(delivered())
    assert await asyncio.to_thread(main, ["test", "--config", str(config), "--received-hop", "9",
                                          str(eml)]) == 0
    captured = capsys.readouterr()
    warning = ("--received-hop 9, but the message has 3 Received: headers; judged as it is, "
               "without a client address from a header")
    assert f"smtpfilter: warning: {eml}: {warning}" in captured.err
    assert f"  warning:  {warning}" in captured.out

    maildir = make_maildir(tmp_path)
    assert await asyncio.to_thread(scan, "--config", str(config), "--received-hop", "3",
                                   str(maildir)) == 0
    captured = capsys.readouterr()
    assert "(and 0 more" not in captured.err
    assert "--received-hop 3, but the message has 0 Received: headers" in captured.err
    assert "--received-hop beyond the Received: headers of 1 message (judged as they are)" in captured.out


async def test_test_reads_the_message_from_stdin(tmp_path, config):
    # In a thread: the test DNS server answers on this test's event loop.
    done = await asyncio.to_thread(run_cli, "test", "--config", str(config), "--json", "-", stdin=delivered(ip="1.2.3.4"))
    assert done.returncode == 0, done.stderr
    [report] = json.loads(done.stdout)
    assert report["file"] == "-" and report["client"] == "1.2.3.4"
    assert report["decision"]["action"] == "reject"
