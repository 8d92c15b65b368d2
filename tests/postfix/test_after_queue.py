"""FILTER_README's advanced content filter with real Postfix, configured from the examples:
port-25 smtpd → queue → scan → smtpfilter → 10026 smtpd → queue → the final destination."""

from __future__ import annotations

import re
import smtplib

import pytest

from tests.postfix.conftest import FILTERED_DOMAIN, SENDER, content

pytestmark = pytest.mark.postfix


def test_clean_message_is_delivered_once_through_both_passes(mail_system):
    system = mail_system("after-queue")
    message_id, data = content("a clean message")

    first = system.submit(data)
    [second] = system.sent_onward(first)
    system.delivered_finally(second)

    [delivered] = system.delivered()
    assert delivered.header("Message-ID") == message_id
    assert delivered.mail_from == SENDER and delivered.rcpts == [f"rcpt@{FILTERED_DOMAIN}"]
    # The body arrived as written (dot-stuffing undone at every hop).
    assert delivered.data.rstrip(b"\n").endswith(b"This is a clean message.\n.a line that starts with a dot")
    # Both passes are in the Received trail; the second one names our EHLO (a distinct
    # hostname, so that the two passes can be told apart).
    received = delivered.message.get_all("Received")
    assert len(received) == 2
    assert received[0].startswith("from smtpfilter.example.test (unknown [127.0.0.1])")
    assert "by mx.example.test (Postfix) with ESMTP id " + second in received[0]
    assert received[1].startswith("from client.example.net (unknown [127.0.0.2])")

    log = system.postfix.log()
    # XFORWARD: the 10026 smtpd's own client is 127.0.0.1, yet it logs the real client
    # (127.0.0.2) and the first pass's queue id.
    assert re.search(
        rf"postfix/reinject/smtpd\[\d+\]: {second}: client=unknown\[127\.0\.0\.1\], "
        rf"orig_queue_id={first}, orig_client=unknown\[127\.0\.0\.2\]",
        log,
    ), log
    # Delivered once: one final delivery, and the first queue file is gone.
    assert len(re.findall(rf"{second}: to=<rcpt@{FILTERED_DOMAIN}>, relay=127\.0\.0\.1", log)) == 1
    system.postfix.wait_log(rf"{first}: removed")
    assert system.postfix.queue() == []


def test_rejected_mail_is_bounced_by_postfix_and_discarded_mail_vanishes(mail_system):
    # After queue, the filter's 550 makes Postfix bounce the message to its envelope sender
    # (the backscatter the README warns about).
    system = mail_system("after-queue")
    _, old = content("an old message", days_old=400)
    _, undated = content("an undated message", date=False)
    _, bulk = content("bulk mail", headers=("X-Mailer: MaxBulk.Mailer 12",))
    clean_id, clean = content("a clean message")

    old_q, undated_q, bulk_q, clean_q = (system.submit(m) for m in (old, undated, bulk, clean))

    bounces = {}
    for queue_id, rule in ((old_q, "OLD_DATE"), (undated_q, "NO_DATE")):
        system.postfix.wait_log(
            rf"postfix/scan/smtp\[\d+\]: {queue_id}: to=<rcpt@{FILTERED_DOMAIN}>, "
            rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{system.ports.filter},.* dsn=5\.7\.1, status=bounced "
            rf"\(host 127\.0\.0\.1\[127\.0\.0\.1\] said: 550 5\.7\.1 Message content rejected "
            rf"\({rule}\) \(in reply to end of DATA command\)\)"
        )
        [match] = system.postfix.wait_log(rf"{queue_id}: sender non-delivery notification: (\w+)")
        bounces[rule] = match.group(1)
    system.postfix.wait_log(
        rf"{bulk_q}: to=<rcpt@{FILTERED_DOMAIN}>, .* status=sent "
        rf"\(250 2\.0\.0 Ok: discarded by content filter \(SPAM_MAILER\)\)"
    )
    # bounce(8) hands its notice to cleanup(8) directly: content_filter is added only by
    # smtpd(8) and pickup(8) (FILTER_README), so the bounce goes straight out.
    for bounce_id in bounces.values():
        system.delivered_finally(bounce_id)
    [onward] = system.sent_onward(clean_q)
    system.delivered_finally(onward)

    delivered = system.delivered()
    by_rcpt = sorted((d.rcpts[0], d.mail_from) for d in delivered)
    # Two bounces to the sender (from <>), the clean message to the recipient, nothing else.
    assert by_rcpt == [(f"rcpt@{FILTERED_DOMAIN}", SENDER), (SENDER, ""), (SENDER, "")]
    [original] = [d for d in delivered if d.rcpts == [f"rcpt@{FILTERED_DOMAIN}"]]
    assert original.header("Message-ID") == clean_id
    for rule in ("OLD_DATE", "NO_DATE"):
        assert any(
            f"550 5.7.1 Message content rejected ({rule})".encode() in d.data
            and d.header("Subject") == "Undelivered Mail Returned to Sender"
            for d in delivered
        ), rule
    system.postfix.wait_log(rf"{clean_q}: removed")
    assert system.postfix.queue() == []


def test_filter_down_defers_mail_and_loses_none(mail_system):
    system = mail_system("after-queue")
    assert system.filter.stop() == 0  # SIGTERM: a clean exit, the port is closed
    sent = [content(f"message {n}") for n in range(5)]
    queue_ids = [system.submit(data) for _, data in sent]

    # Postfix keeps every message: connection refused is a temporary failure.
    refused = rf"status=deferred \((?:delivery temporarily suspended: )?connect to 127\.0\.0\.1\[127\.0\.0\.1\]:{system.ports.filter}: Connection refused\)"
    for queue_id in queue_ids:
        system.postfix.wait_log(rf"{queue_id}: to=<rcpt@{FILTERED_DOMAIN}>, .*{refused}")
    queue = system.postfix.queue()
    assert sorted(m["queue_id"] for m in queue) == sorted(queue_ids)
    assert {m["queue_name"] for m in queue} == {"deferred"}
    assert system.delivered() == []

    system.start_filter()
    system.postfix.flush()  # postqueue -f, as an admin would after starting the filter

    for queue_id in queue_ids:
        [onward] = system.sent_onward(queue_id)
        system.delivered_finally(onward)
    delivered = [d.header("Message-ID") for d in system.delivered()]
    assert sorted(delivered) == sorted(message_id for message_id, _ in sent)  # each once
    for queue_id in queue_ids:
        system.postfix.wait_log(rf"{queue_id}: removed")
    assert system.postfix.queue() == []


def test_a_message_postfix_took_is_never_bounced_for_its_size(mail_system):
    # Issue 12: Postfix's message_size_limit raised, ours as shipped: Postfix accepted a
    # message larger than our SIZE and then bounced it ("552 5.3.4 message size exceeds size
    # limit of server 127.0.0.1"). smtpfilter now follows Postfix's limit (postconf).
    system = mail_system("after-queue", main_cf="message_size_limit = 20480000\n")
    message_id, head = content("a big message")
    line = b"0123456789" * 7 + b"abcdef\n"  # 77 octets
    big = head + line * (10_600_000 // len(line))  # above the old fixed 10240000
    assert len(big) > 10_240_000

    first = system.submit(big)
    [second] = system.sent_onward(first)
    system.delivered_finally(second)
    [delivered] = system.delivered()
    assert delivered.header("Message-ID") == message_id
    assert delivered.data.count(line) == 10_600_000 // len(line)
    assert "status=bounced" not in system.postfix.log()
    # What the scan transport was told: Postfix's own limit.
    with smtplib.SMTP("127.0.0.1", system.ports.filter, timeout=30) as client:
        client.ehlo("probe.test")
        assert client.esmtp_features["size"] == "20480000"
