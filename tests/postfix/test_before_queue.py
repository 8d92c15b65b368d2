"""SMTPD_PROXY_README's before-queue filter with real Postfix: the port-25 smtpd hands each SMTP
session to smtpfilter, whose reply to "." goes to the sending client."""

from __future__ import annotations

import smtplib

import pytest

from tests.postfix.conftest import FILTERED_DOMAIN, SENDER, content

pytestmark = pytest.mark.postfix


def test_rejection_goes_to_the_client_and_no_bounce_is_made(mail_system):
    system = mail_system("before-queue")
    _, old = content("an old message", days_old=400)

    with pytest.raises(smtplib.SMTPDataError) as refused:
        system.submit(old)
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error == b"5.7.1 Message content rejected (OLD_DATE)"
    system.postfix.wait_log(
        rf"postfix/smtpd\[\d+\]: proxy-reject: END-OF-MESSAGE: 550 5\.7\.1 Message content "
        rf"rejected \(OLD_DATE\); from=<{SENDER}> to=<rcpt@{FILTERED_DOMAIN}>"
    )

    # A clean message afterwards: it arrives, and by then a bounce would have too.
    clean_id, clean = content("a clean message")
    queue_id = system.submit(clean)
    system.delivered_finally(queue_id)
    [delivered] = system.delivered()
    assert delivered.header("Message-ID") == clean_id
    assert "non-delivery notification" not in system.postfix.log()


def test_clean_message_keeps_its_dsn_parameters_and_client(mail_system):
    # Postfix forwards the client's RCPT parameters to the proxy unchanged
    # (SMTPD_PROXY_README); smtpfilter must accept them and pass them on.
    system = mail_system("before-queue")
    clean_id, clean = content("a clean message with DSN")
    queue_id = system.submit(
        clean, rcpt_options=("NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;Rcpt@{FILTERED_DOMAIN}")
    )
    # The client's "queued as" is the 10026 smtpd's queue id: nothing was queued before, and
    # the before-filter smtpd's XFORWARD reached it through smtpfilter.
    system.postfix.wait_log(
        rf"postfix/smtpd\[\d+\]: proxy-accept: END-OF-MESSAGE: 250 2\.0\.0 Ok: queued as "
        rf"{queue_id}; from=<{SENDER}> to=<rcpt@{FILTERED_DOMAIN}>"
    )
    system.postfix.wait_log(
        rf"postfix/reinject/smtpd\[\d+\]: {queue_id}: client=unknown\[127\.0\.0\.1\], "
        rf"orig_client=unknown\[127\.0\.0\.2\]"
    )
    system.delivered_finally(queue_id)
    [delivered] = system.delivered()
    assert delivered.header("Message-ID") == clean_id
    # Client → smtpd → smtpfilter → 10026 → queue → the next hop: the DSN request survived,
    # original recipient's case included.
    assert delivered.rcpt_args == [
        f"<rcpt@{FILTERED_DOMAIN}> ORCPT=rfc822;Rcpt@{FILTERED_DOMAIN} NOTIFY=SUCCESS,FAILURE"
    ]


def test_filter_down_makes_the_client_retry_later(mail_system):
    # Before queue, the mail is still the client's while smtpfilter is down: a 4xx keeps it
    # there (SMTPD_PROXY_README: "451 4.3.0 Error: queue file write error").
    system = mail_system("before-queue")
    system.expected_warnings.append(r"warning: connect to proxy filter 127\.0\.0\.1:\d+: Connection refused")
    assert system.filter.stop() == 0
    _, clean = content("a message while the filter is down")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as deferred:
        system.submit(clean)
    assert deferred.value.recipients == {
        f"rcpt@{FILTERED_DOMAIN}": (451, b"4.3.0 Error: queue file write error")
    }
    system.postfix.wait_log(
        rf"warning: connect to proxy filter 127\.0\.0\.1:{system.ports.filter}: Connection refused"
    )
    # Nothing of that message was queued (Postfix only notifies its postmaster).
    assert all(m["sender"] == "double-bounce@mx.example.test" for m in system.postfix.queue())


def test_a_size_limit_of_our_own_is_a_552_to_the_client_not_a_bounce(mail_system):
    # Before the queue the sending client still has the message: a limit below Postfix's is
    # a clean refusal (check-config and doctor say so only after the queue).
    system = mail_system("before-queue", config="limits: {message_size: 100k}\n")
    _, head = content("a message over our limit")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        system.submit(head + b"x" * 76 + b"\n" * 1 + (b"y" * 76 + b"\n") * 2000)
    assert refused.value.smtp_code == 552
    clean_id, clean = content("a small one")
    system.delivered_finally(system.submit(clean))
    assert [d.header("Message-ID") for d in system.delivered()] == [clean_id]
    assert "non-delivery notification" not in system.postfix.log()
