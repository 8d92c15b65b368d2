"""FILTER_README's selective filtering with real Postfix: a FILTER action from an access map for
some domains only, and filtering only the mail that arrives from outside."""

from __future__ import annotations

import re

import pytest

from tests.postfix.conftest import FILTERED_DOMAIN, OTHER_DOMAIN, content

pytestmark = pytest.mark.postfix


def bounced_by_filter(system, queue_id: str, rcpt: str, rule: str = "OLD_DATE") -> None:
    system.postfix.wait_log(
        rf"postfix/scan/smtp\[\d+\]: {queue_id}: to=<{re.escape(rcpt)}>, "
        rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{system.ports.filter},.* status=bounced "
        rf"\(host 127\.0\.0\.1\[127\.0\.0\.1\] said: 550 5\.7\.1 Message content rejected \({rule}\)"
    )


def delivered_unfiltered(system, queue_id: str, rcpt: str) -> None:
    """``queue_id`` went straight to the final destination, never through the scan transport."""
    system.delivered_finally(queue_id)
    assert not re.search(rf"postfix/scan/smtp\[\d+\]: {queue_id}:", system.postfix.log())


def test_filter_domain_is_filtered_and_another_domain_bypasses_it(mail_system):
    system = mail_system("per-domain")
    _, old = content("an old message", days_old=400)

    filtered = system.submit(old, (f"rcpt@{FILTERED_DOMAIN}",))
    subdomain = system.submit(old, (f"rcpt@sub.{FILTERED_DOMAIN}",))
    other_id, data = content("an old message for elsewhere", days_old=400)
    other = system.submit(data, (f"rcpt@{OTHER_DOMAIN}",))

    # Postfix's smtpd logs the FILTER action of the access map for each filtered recipient.
    system.postfix.wait_log(
        rf"NOQUEUE: filter: RCPT from unknown\[127\.0\.0\.2\]: <rcpt@{FILTERED_DOMAIN}>: "
        rf"Recipient address triggers FILTER scan:\[127\.0\.0\.1\]:{system.ports.filter};"
    )
    bounced_by_filter(system, filtered, f"rcpt@{FILTERED_DOMAIN}")
    # example.com also covers its subdomains (parent_domain_matches_subdomains), as
    # main.cf.example says.
    bounced_by_filter(system, subdomain, f"rcpt@sub.{FILTERED_DOMAIN}")
    delivered_unfiltered(system, other, f"rcpt@{OTHER_DOMAIN}")

    arrived = {d.rcpts[0]: d for d in system.delivered()}
    assert arrived[f"rcpt@{OTHER_DOMAIN}"].header("Message-ID") == other_id
    assert f"rcpt@{FILTERED_DOMAIN}" not in arrived and f"rcpt@sub.{FILTERED_DOMAIN}" not in arrived


def test_only_mail_from_outside_is_filtered(mail_system):
    # The port-25 smtpd adds the content filter; submission (port 587) does not.
    system = mail_system("outside-only")
    _, old = content("an old message", days_old=400)
    inside_id, inside_data = content("an old message from a user", days_old=400)

    outside = system.submit(old)
    inside = system.submit(inside_data, port=system.ports.submission)

    bounced_by_filter(system, outside, f"rcpt@{FILTERED_DOMAIN}")
    delivered_unfiltered(system, inside, f"rcpt@{FILTERED_DOMAIN}")
    assert re.search(rf"postfix/submission/smtpd\[\d+\]: {inside}: client=", system.postfix.log())
    [original] = [d for d in system.delivered() if d.rcpts == [f"rcpt@{FILTERED_DOMAIN}"]]
    assert original.header("Message-ID") == inside_id
