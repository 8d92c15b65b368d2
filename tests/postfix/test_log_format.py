"""Our log beside real Postfix's (issue 13): one queue id finds both sides of a story."""

from __future__ import annotations

import re

import pytest

from tests.postfix.conftest import FILTERED_DOMAIN, content
from tests.support import loglines
from tests.support.service import FilterProcess, free_port

pytestmark = pytest.mark.postfix


def test_grep_queue_id_finds_our_reason_beside_postfix_deferral(mail_system):
    """10026 cannot be reached: Postfix defers the message with our 451; grepping its queue
    id in both logs shows Postfix's deferral and our reason, with the configured forward
    address and the real client."""
    system = mail_system("after-queue", start_filter=False)
    closed = free_port()
    system.expected_warnings.append(rf"cannot reach 127\.0\.0\.1:{closed} ")
    system.filter = FilterProcess(system.filter_config, args=("--forward", f"127.0.0.1:{closed}"))
    system.filters.append(system.filter)
    system.filter.start()
    _, data = content("a message that waits")
    queue_id = system.submit(data)

    [deferred] = system.postfix.wait_log(
        rf"postfix/scan/smtp\[\d+\]: {queue_id}: to=<rcpt@{re.escape(FILTERED_DOMAIN)}>, .*"
        rf"status=deferred \(host 127\.0\.0\.1\[127\.0\.0\.1\] said: (451 4\.4\.1 [^(]*) \(in reply "
        rf"to MAIL FROM command\)\)")
    [ours] = system.filter.wait_log(rf"^WARNING smtpfilter\.\S+: {queue_id}: cannot reach .*$")
    assert ours.group(0) == (
        f"WARNING smtpfilter.frontdoors.smtp.transaction: {queue_id}: cannot reach "
        f"127.0.0.1:{closed} (Connection refused); client=unknown[127.0.0.2], "
        f"from=<sender@sender.test>; deferred ({deferred.group(1)})"
    )
    # No summary line: the transaction ended at MAIL, before any message; Postfix keeps it.
    assert loglines.summaries(system.filter.log().splitlines()) == []
    assert [entry["queue_id"] for entry in system.postfix.queue()] == [queue_id]
