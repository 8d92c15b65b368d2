"""The milter front door with real Postfix, configured with main.cf.example's milter block as
written: the port-25 smtpd asks ``smtpfilter milter`` during the SMTP session, and what it
accepts goes to the final destination in ONE queue pass.

What is asserted is what crossed the wire: the replies the SMTP client got, the bytes the
final destination received, Postfix's queue (postqueue -j) and logs, and smtpfilter's log."""

from __future__ import annotations

import asyncio
import re
import smtplib
import socket
import statistics
import threading
import time

import pytest

from tests.conftest import ISSUE_RULES
from tests.postfix.conftest import FILTERED_DOMAIN, SENDER, content
from tests.support.dnsserver import DnsServer, serve_test_lists
from tests.support.messages import date_header

pytestmark = pytest.mark.postfix

RULES = ISSUE_RULES + r"""
  - {name: TAG_ME, check: header, header: Subject, match: 'tag-me', action: tag}
  - {name: TEMPFAIL_ME, check: header, header: Subject, match: 'tempfail-me', action: tempfail}
  - {name: HOLD_ME, check: header, header: Subject, match: 'hold-me', action: quarantine}
"""
RCPT = f"rcpt@{FILTERED_DOMAIN}"
# XCLIENT lets a test play a remote client: the address reaches the milter's macros.
# 1.2.3.4 (listed in the test DNS zone) may relay like the loopback clients of the other tests.
XCLIENT = ("smtpd_authorized_xclient_hosts = 127.0.0.0/8\n"
           "smtpd_relay_restrictions = permit_mynetworks, check_client_access "
           "inline:{1.2.3.4=OK}, reject_unauth_destination\n")


def smtp(system) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", system.ports.smtp, timeout=60,
                          source_address=("127.0.0.2", 0))
    client.ehlo("client.example.net")
    return client


def send(client: smtplib.SMTP, data: bytes, sender: str = SENDER) -> tuple[int, bytes]:
    """One transaction on an open connection; the reply to the end of DATA."""
    code, text = client.mail(sender)
    assert code == 250, text
    assert client.rcpt(RCPT)[0] == 250
    return client.data(data)


def queue_id(reply: bytes) -> str:
    match = re.search(rb"queued as (\w+)", reply)
    assert match, reply
    return match.group(1).decode()


def nothing_queued_and_nothing_delivered(system, subject: str) -> None:
    """A later clean message has reached the destination (a barrier), this one never did, and
    Postfix holds nothing."""
    _, clean = content(f"barrier after {subject}")
    barrier = system.submit(clean)
    system.delivered_finally(barrier)
    assert not [d for d in system.delivered() if d.header("Subject") == subject]
    system.postfix.wait_log(rf"{barrier}: removed")
    assert system.postfix.queue() == []


def test_clean_and_tagged_mail_is_delivered_once_in_one_queue_pass(mail_system):
    system = mail_system("milter", rules=RULES)
    _, clean = content("a clean message")
    _, tagged = content("please tag-me", headers=("X-Spam-Flag: NO (forged by the sender)",))
    clean_id, tagged_id = system.submit(clean), system.submit(tagged)
    for qid in (clean_id, tagged_id):
        system.delivered_finally(qid)
    by_subject = {d.header("Subject"): d for d in system.delivered()}
    assert set(by_subject) == {"a clean message", "please tag-me"}
    assert by_subject["a clean message"].header("X-Spam-Flag") is None
    mail = by_subject["please tag-me"]
    assert mail.message.get_all("X-Spam-Flag") == ["YES"]  # the sender's copy is gone
    assert mail.header("X-Smtpfilter-Status") == "Yes, score=0, rules=TAG_ME(MATCH)"
    # One queue pass: one Received line (the port-25 smtpd's), no second smtpd.
    assert len(mail.message.get_all("Received")) == 1
    # The one summary line per message, with Postfix's queue id and the real client.
    system.filter.wait_log(
        rf"INFO smtpfilter\.engine\.judge: {tagged_id}: client=unknown\[127\.0\.0\.2\], "
        rf"from=<{SENDER}>, to=<{RCPT}>, size=\d+, (message-id=\S+, )?action=tag, by=TAG_ME, "
        rf"score=0, rules=TAG_ME\(MATCH\), delay=\d+\.\d\d, "
        rf"status=sent \(250 2\.0\.0 Ok: continue\)$")
    system.postfix.wait_log(rf"{tagged_id}: removed")
    assert system.postfix.queue() == []


def test_old_date_is_a_550_to_the_client_and_nothing_is_queued(mail_system):
    system = mail_system("milter", rules=RULES)
    _, old = content("an old message", days_old=400)
    with smtp(system) as client:
        code, text = send(client, old)
        assert (code, text) == (550, b"5.7.1 Message content rejected (OLD_DATE)")
        # The connection goes on: the next message is judged on its own.
        _, clean = content("next on the same connection")
        assert send(client, clean)[0] == 250
    system.postfix.wait_log(r"milter-reject: END-OF-MESSAGE from \S+: 5\.7\.1 Message content "
                            r"rejected \(OLD_DATE\)")
    assert "non-delivery notification" not in system.postfix.log()  # no bounce: no backscatter
    nothing_queued_and_nothing_delivered(system, "an old message")


def test_discard_tempfail_and_hold(mail_system):
    system = mail_system("milter", rules=RULES)
    _, bulk = content("bulk mail", headers=("X-Mailer: MaxBulk.Mailer 12",))
    _, later = content("please tempfail-me")
    _, held = content("please hold-me")
    with smtp(system) as client:
        code, text = send(client, bulk)
        assert code == 250  # the client is told it was taken; nothing is delivered
        assert send(client, later) == (
            451, b"4.7.1 Message content deferred (TEMPFAIL_ME), try again later")
        code, text = send(client, held)
        assert code == 250
        held_id = queue_id(text)
    system.postfix.wait_log(r"milter-discard: END-OF-MESSAGE")
    # quarantine: hold (the default): Postfix's hold queue, postsuper -H releases it.
    system.postfix.wait_log(rf"{held_id}: milter-hold: END-OF-MESSAGE .*milter triggers HOLD")
    queue = system.postfix.queue()
    assert [(m["queue_id"], m["queue_name"]) for m in queue] == [(held_id, "hold")]
    system.postfix.command("postsuper", "-d", held_id)
    nothing_queued_and_nothing_delivered(system, "bulk mail")
    assert not [d for d in system.delivered() if d.header("Subject") != "barrier after bulk mail"]


@pytest.fixture
def dns():
    """The test DNS lists on loopback, served from a thread of their own (Postfix tests are
    synchronous)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(DnsServer().start(), loop).result(10)
    serve_test_lists(server)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_a_dnsbl_rule_sees_the_real_client_from_the_macros(mail_system, dns):
    rules = r"""
    rules:
      - name: DNSBL
        check: dnsbl
        sites: "zen.dnsbl.test*3"
        threshold: 3
        action: reject
        text: "5.7.1 Service unavailable; client [$1] blocked using $2"
    """
    system = mail_system(
        "milter", rules=rules, main_cf=XCLIENT,
        config=f"dns: {{nameservers: ['127.0.0.1:{dns.port}'], timeout: 2s, message_timeout: 4s}}\n")
    _, data = content("from a listed client")
    with smtp(system) as client:
        # What Postfix's smtpd sees as the client (XCLIENT plays a remote one: 1.2.3.4 is
        # listed in the test zone) is what the milter's macros carry.
        assert client.docmd("XCLIENT", "ADDR=1.2.3.4 NAME=mail.listed.example")[0] == 220
        client.ehlo("listed.example")
        assert send(client, data) == (
            550, b"5.7.1 Service unavailable; client [1.2.3.4] blocked using zen.dnsbl.test")
    system.filter.wait_log(r"client=mail\.listed\.example\[1\.2\.3\.4\], .*, action=reject, "
                           r".*, status=bounced \(550 5\.7\.1 ")
    nothing_queued_and_nothing_delivered(system, "from a listed client")


def test_milter_stopped_means_4xx_to_the_client_and_nothing_accepted(mail_system):
    system = mail_system("milter", rules=RULES)
    system.expected_warnings += [
        r"warning: connect to Milter service inet:127\.0\.0\.1:\d+: Connection refused",
        r"warning: .*milter inet:127\.0\.0\.1:\d+: .*",
    ]
    assert system.filter.stop() == 0  # SIGTERM: a clean exit
    _, data = content("while the milter is down")
    with smtp(system) as client:
        code, text = client.mail(SENDER)
        assert (code, text[:5]) == (451, b"4.7.1")  # milter_default_action = tempfail
    system.postfix.wait_log(r"milter-reject: CONNECT from \S+: 451 4\.7\.1 Service unavailable")
    assert system.postfix.queue() == []
    assert system.delivered() == []

    system.start_filter()  # back: the next SMTP session is filtered again
    _, clean = content("after the milter is back")
    system.delivered_finally(system.submit(clean))


def test_many_messages_on_one_connection_without_a_delayed_ack_stall(mail_system):
    """Each message gets its own verdict and Postfix queue id; and no ~40 ms stall per message
    (with SMFIP_NR_* we send nothing until the end of the message, Postfix keeps Nagle on:
    without TCP_QUICKACK one SMTP session crawled at 19 messages a second)."""
    system = mail_system("milter", rules=RULES)
    ids, times = [], []
    with smtp(system) as client:
        for n in range(12):
            _, data = content(f"message {n}", days_old=400 if n == 5 else 0)
            started = time.monotonic()
            code, text = send(client, data, sender=f"s{n}@sender.test")
            times.append(time.monotonic() - started)
            if n != 5:
                assert code == 250, text
                ids.append(queue_id(text))
            else:
                assert code == 550
    for n, qid in zip([n for n in range(12) if n != 5], ids, strict=True):
        system.filter.wait_log(rf"{qid}: client=\S+, from=<s{n}@sender\.test>, ")
    assert statistics.median(times) < 0.030, times


def test_an_smtputf8_sender_and_an_8bit_helo_pass(mail_system):
    """Legal mail that kilter.protocol (the library we did not take) dies on, taking its whole
    server down: here it is judged like any other."""
    system = mail_system("milter", rules=RULES)
    system.expected_warnings.append(r"warning: .*SMTPUTF8")  # the sink does not offer it
    with socket.create_connection(("127.0.0.1", system.ports.smtp), timeout=60) as sock:
        stream = sock.makefile("rb")
        stream.readline()
        replies = []
        for line in ("EHLO h\u00e9lo.example".encode(),
                     "MAIL FROM:<j\u00f6rg@sender.test> SMTPUTF8".encode(),
                     f"RCPT TO:<{RCPT}>".encode(), b"DATA",
                     date_header().encode() + b"\r\nSubject: utf8\r\n"
                     b"From: <j\xc3\xb6rg@sender.test>\r\n\r\nbody\r\n.",
                     b"QUIT"):
            sock.sendall(line + b"\r\n")
            while (reply := stream.readline())[3:4] == b"-":
                pass
            replies.append(reply[:3])
    assert replies == [b"250", b"250", b"250", b"354", b"250", b"221"]
    system.filter.wait_log("from=<j\u00f6rg@sender.test>, to=<")


def readme_commands() -> list[list[str]]:
    """The shell commands of the README's "Milter mode" section, as an admin pastes them."""
    import shlex

    from tests.postfix.examples import REPO
    from tests.support.readme import shell_block

    text = (REPO / "README.md").read_text()
    section = text.split("## Milter mode", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in (shell_block("smtpfilter milter --config"), shell_block("'milter_protocol = 6'")):
        assert block in section, "the block moved out of the Milter mode section"
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(shlex.split(line, comments=True))
    # The inline "Turning it off" commands.
    commands += [shlex.split(c) for c in re.findall(r"`(postconf -X [^`]+)`", section)]
    return commands


def test_the_readme_commands():
    """Run against a private instance's config directory (``-c``; no Postfix needs to run):
    the postconf lines give Postfix exactly the milter block of main.cf.example, postfix check
    is silent, and the turn-off line removes them again."""
    import shutil
    import tempfile
    from pathlib import Path

    from tests.postfix.examples import REPO, blocks, no_chroot
    from tests.postfix.instance import MASTER_CF_DIST, Postfix

    root = Path(tempfile.mkdtemp(prefix="smtpfilter-readme-"))
    root.chmod(0o755)
    try:
        postfix = Postfix(root)
        postfix.write(postfix.base_main_cf(relay_port=2525), no_chroot(MASTER_CF_DIST.read_text()))
        commands = readme_commands()
        assert commands[0] == ["/opt/smtpfilter/bin/smtpfilter", "milter", "--config",
                               "/etc/smtpfilter/smtpfilter.yaml"]  # what FilterProcess runs
        postconf = [c for c in commands if c[0] == "postconf"]
        assert [c[1] for c in postconf] == ["-e", "-X"]
        assert [c for c in commands if c[0] == "postfix"] == [["postfix", "check"],
                                                              ["postfix", "reload"]]
        postfix.command(program_path("postconf"), *postconf[0][1:])
        assert postfix.check() == ""
        example = {line.split(" = ")[0]: line.split(" = ")[1]
                   for line in blocks(REPO / "main.cf.example")["milter"].splitlines()
                   if line and not line.startswith("#")}
        got = postfix.command(program_path("postconf"), "-n", *example).stdout
        assert sorted(got.splitlines()) == sorted(f"{k} = {v}" for k, v in example.items())
        postfix.command(program_path("postconf"), *postconf[1][1:])
        assert "milter" not in postfix.command(program_path("postconf"), "-n").stdout
    finally:
        shutil.rmtree(root, ignore_errors=True)


def program_path(name: str) -> str:
    from tests.postfix.instance import program

    path = program(name)
    assert path is not None
    return path
