"""FILTER_README's simple content filter with real Postfix: pipe(8) runs ``smtpfilter pipe`` as an
unprivileged user for each message; it re-injects into the 10026 smtpd."""

from __future__ import annotations

import re

import pytest

from tests.postfix.conftest import FILTERED_DOMAIN, SENDER, content

pytestmark = pytest.mark.postfix


def piped(system, queue_id: str, dsn: str, status: str, text: str) -> None:
    """pipe(8) logged ``status``; the enhanced code of our first output line became its dsn=."""
    system.postfix.wait_log(
        rf"postfix/pipe\[\d+\]: {queue_id}: to=<rcpt@{FILTERED_DOMAIN}>, relay=smtpfilter, "
        rf".* dsn={re.escape(dsn)}, status={status} \({text}"
    )


def test_clean_message_is_reinjected_and_old_message_bounced(mail_system):
    system = mail_system("pipe")
    clean_id, clean = content("a clean message")
    _, old = content("an old message", days_old=400)

    clean_q = system.submit(clean)
    old_q = system.submit(old)

    # pipe(8) logs our first output line: 10026's reply, so both passes can be followed.
    [match] = system.postfix.wait_log(
        rf"postfix/pipe\[\d+\]: {clean_q}: to=<rcpt@{FILTERED_DOMAIN}>, relay=smtpfilter, .*"
        rf"status=sent \(delivered via smtpfilter service \(2\.0\.0 Ok: queued as (\w+)\)\)"
    )
    second = match.group(1)
    # XFORWARD from pipe(8)'s macros: the 10026 smtpd logs the real client and queue id.
    system.postfix.wait_log(
        rf"postfix/reinject/smtpd\[\d+\]: {second}: client=unknown\[127\.0\.0\.1\], "
        rf"orig_queue_id={clean_q}, orig_client=unknown\[127\.0\.0\.2\]"
    )
    system.delivered_finally(second)
    # Exit 69 with "5.7.1 ..." first: Postfix bounces with our text and code.
    piped(system, old_q, "5.7.1", "bounced", r"Message content rejected \(OLD_DATE\)")
    [bounce] = system.postfix.wait_log(rf"{old_q}: sender non-delivery notification: (\w+)")
    system.delivered_finally(bounce.group(1))

    delivered = {d.rcpts[0]: d for d in system.delivered()}
    assert set(delivered) == {f"rcpt@{FILTERED_DOMAIN}", SENDER}
    original = delivered[f"rcpt@{FILTERED_DOMAIN}"]
    assert original.header("Message-ID") == clean_id
    assert original.header("Return-Path") is None  # pipe(8)'s R flag; cleanup(8) drops it
    assert original.data.rstrip(b"\n").endswith(b"This is a clean message.\n.a line that starts with a dot")
    assert b"Message content rejected (OLD_DATE)" in delivered[SENDER].data


def test_broken_configuration_defers_and_loses_nothing(mail_system):
    system = mail_system("pipe")
    rules = system.root / "rules.yaml"
    good = rules.read_text()
    rules.write_text("rules:\n  - {name: OLD_DATE, check: date, older_than: soon, action: reject}\n")
    message_id, data = content("a message during a broken config")

    queue_id = system.submit(data)
    # Exit 75 and a 4.3.5 text: deferred, with the problem in Postfix's log.
    piped(
        system, queue_id, "4.3.5", "deferred",
        rf"smtpfilter configuration error: {re.escape(str(rules))}:2: rule OLD_DATE: older_than",
    )
    assert [m["queue_name"] for m in system.postfix.queue()] == ["deferred"]

    rules.write_text(good)
    system.postfix.flush()
    [match] = system.postfix.wait_log(
        rf"{queue_id}: to=<rcpt@{FILTERED_DOMAIN}>, relay=smtpfilter, .*status=sent \(delivered via "
        rf"smtpfilter service \(2\.0\.0 Ok: queued as (\w+)\)\)"
    )
    system.delivered_finally(match.group(1))
    [delivered] = system.delivered()
    assert delivered.header("Message-ID") == message_id


def test_rules_the_pipe_user_cannot_read_defer_with_the_reason(mail_system):
    # Issue 13: pipe(8) runs us as an unprivileged user (nobody here); rules only root can read
    # put a PermissionError traceback into Postfix's defer reason. Now one line: where, what.
    system = mail_system("pipe")
    rules = system.root / "rules.d"  # the setup: install -d -m 700, as root
    rules.mkdir(mode=0o700)
    (system.root / "rules.yaml").rename(rules / "rules.yaml")
    config = system.filter_config
    config.write_text(config.read_text().replace(str(system.root / "rules.yaml"), str(rules)))
    _, data = content("a message the filter cannot read its rules for")

    queue_id = system.submit(data)
    piped(
        system, queue_id, "4.3.5", "deferred",
        rf"smtpfilter configuration error: {re.escape(str(system.filter_config))}:4: rules: "
        rf"{re.escape(str(rules))}: Permission denied \(as uid \d+\) ?\)$",
    )
    assert "Traceback" not in system.postfix.log()
    assert [m["queue_name"] for m in system.postfix.queue()] == ["deferred"]
