"""core/logline.py and engine/judge.py summary_line: the pieces of a Postfix-shaped line."""

from __future__ import annotations

import pytest

from smtpfilter.core import logline
from smtpfilter.core.envelope import Client
from smtpfilter.core.verdict import Action, Decision, Finding, Verdict
from smtpfilter.engine.judge import status_of, summary_line
from tests.support import loglines


@pytest.mark.parametrize("client,expected", [
    (Client(addr="192.0.2.7", name="mx.example.net"), "mx.example.net[192.0.2.7]"),
    (Client(addr="192.0.2.7"), "unknown[192.0.2.7]"),
    (Client(addr="2001:db8::1"), "unknown[2001:db8::1]"),
    (Client(name="only.example"), "only.example[unknown]"),
    (Client(), None),  # local submission: the field is left out
], ids=["name", "no name", "ipv6", "no address", "nothing"])
def test_client_field_as_postfix_writes_it(client, expected):
    assert logline.client_field(client) == expected


@pytest.mark.parametrize("address,expected", [
    (("127.0.0.1", 10025), "127.0.0.1:10025"),
    (("::1", 10025, 0, 0), "[::1]:10025"),
    ("/run/smtpfilter/milter.sock", "/run/smtpfilter/milter.sock"),
    ("", "unix"),
], ids=["ipv4", "ipv6", "unix", "unnamed"])
def test_peer_is_never_a_python_tuple(address, expected):
    assert logline.peer(address) == expected


def test_reply_shown_joins_lines_like_postfix():
    assert logline.reply_shown("250-2.0.0 first\r\n250 second") == "250-2.0.0 first / second"
    assert logline.reply_shown("451 " + "x" * 400).endswith("...")


@pytest.mark.parametrize("action,reply,expected", [
    (Action.ACCEPT, "250 2.0.0 Ok: queued as Q", "sent"),
    (Action.TAG, "451 4.4.2 Error", "deferred"),  # re-injection failed
    (Action.REJECT, "550 5.7.1 no", "bounced"),
    (Action.DISCARD, "250 2.0.0 Ok: discarded", "discarded"),
    (Action.QUARANTINE, "250 2.0.0 Ok: quarantined as X", "quarantined"),
    (Action.QUARANTINE, "451 4.3.0 Error: cannot store", "deferred"),  # the store failed
])
def test_status_says_what_postfix_was_told(action, reply, expected):
    assert status_of(Decision(action, 0.0), reply) == expected


def test_summary_line_fields_order_and_escaping():
    verdicts = (Verdict("BANNED", Finding("NAME", "r", label="a, status=sent.exe"), 2.0),
                Verdict("OLD_DATE", Finding("IN_PAST", "r"), 3.0))
    decision = Decision(Action.ACCEPT, 5.0, verdicts, intended=Action.REJECT,
                        intended_rule="BANNED")
    line = summary_line(Client(addr="192.0.2.7", ident="4F2B1"), "a,b@example.org",
                        ("c@example.com", "d@example.com"), 425, decision,
                        "250 2.0.0 Ok: queued as Q, really", 0.0123, message_id="<m@x>")
    assert line == (
        "4F2B1: client=unknown[192.0.2.7], from=<a\\x2cb@example.org>, to=<c@example.com>, "
        "to=<d@example.com>, size=425, message-id=<m@x>, action=accept, score=5, "
        "rules=BANNED(a\\x2c status=sent.exe)+OLD_DATE(IN_PAST), would=reject, "
        "would_by=BANNED, delay=0.01, status=sent (250 2.0.0 Ok: queued as Q, really)"
    )
    parsed = loglines.parse(line)
    assert parsed.all("status") == ["sent (250 2.0.0 Ok: queued as Q, really)"]


def test_no_decision_is_action_error_and_no_queue_id_is_noqueue():
    line = summary_line(Client(), "", (), None, None, "451 4.4.7 timed out", 2.0)
    assert line == "NOQUEUE: from=<>, action=error, delay=2.00, status=deferred (451 4.4.7 timed out)"
