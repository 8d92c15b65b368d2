"""The date rule kind: parsing per RFC 5322, and its four findings."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from smtpfilter.core.fields import parse_date
from smtpfilter.core.message import MessageContext
from smtpfilter.core.wire import to_wire
from smtpfilter.engine.checks.date import DateCheck
from tests.support import corpus

UTC = timezone.utc


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Mon, 1 Jan 2024 10:00:00 +0200", datetime(2024, 1, 1, 8, 0, tzinfo=UTC)),
        ("1 Jan 2024 10:00 -0500", datetime(2024, 1, 1, 15, 0, tzinfo=UTC)),
        ("Mon, 01 Jan 2024 10:00:00 GMT", datetime(2024, 1, 1, 10, 0, tzinfo=UTC)),
        # No zone, -0000 and unknown zones are UTC, never a naive datetime (RFC 5322 §4.3).
        ("Mon, 1 Jan 2024 10:00:00", datetime(2024, 1, 1, 10, 0, tzinfo=UTC)),
        ("Mon, 1 Jan 2024 10:00:00 -0000", datetime(2024, 1, 1, 10, 0, tzinfo=UTC)),
        ("Mon, 1 Jan 2024 10:00:00 XYZ", datetime(2024, 1, 1, 10, 0, tzinfo=UTC)),
        # Obsolete years, RFC 5322 §4.3: 00-49 → 20xx, 50-99 → 19xx, three digits + 1900.
        ("1 Jan 24 10:00 +0000", datetime(2024, 1, 1, 10, 0, tzinfo=UTC)),
        ("1 Jan 49 10:00 +0000", datetime(2049, 1, 1, 10, 0, tzinfo=UTC)),
        ("1 Jan 55 10:00 +0000", datetime(1955, 1, 1, 10, 0, tzinfo=UTC)),
        ("1 Jan 99 10:00 +0000", datetime(1999, 1, 1, 10, 0, tzinfo=UTC)),
        ("Mon, 01 Jan 124 10:00:00 +0000", datetime(2024, 1, 1, 10, 0, tzinfo=UTC)),
        # Month before day: the digits after the month are a day, not a year.
        ("Jan 15 2023 10:00:00 +0000", datetime(2023, 1, 15, 10, 0, tzinfo=UTC)),
        # Odd but readable.
        ("  Tue,  4 Feb 2025 10:00:00 +0100 (CET)", datetime(2025, 2, 4, 9, 0, tzinfo=UTC)),
    ],
)
def test_parse_date(value, expected):
    assert parse_date(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "yesterday",
        "Mon, 32 Jan 2024 10:00:00 +0000",
        "Mon, 1 Foo 2024 10:00:00 +0000",
        "4 Feb 2025 25:61:00 +0000",
        "1 Jan 99999 10:00:00 +0000",  # overflow, not an exception
        "1 Jan 0 10:00:00 +0000",
        "\x00\x01\x02",
        "=?utf-8?q?1_Jan_2024?=",
    ],
)
def test_garbage_dates_are_none_never_an_exception(value):
    assert parse_date(value) is None


RECEIVED = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _msg(*headers: str) -> MessageContext:
    raw = ("\n".join(headers) + "\n\nbody\n").encode()
    return MessageContext.build(to_wire(raw), received_at=RECEIVED)


def _rfc(moment: datetime) -> str:
    return moment.strftime("%a, %d %b %Y %H:%M:%S +0000")


@pytest.mark.parametrize(
    ("check", "headers", "finding"),
    [
        (DateCheck(older_than=30 * 86400), [f"Date: {_rfc(RECEIVED - timedelta(days=31))}"], "IN_PAST"),
        (DateCheck(older_than=30 * 86400), [f"Date: {_rfc(RECEIVED - timedelta(days=29))}"], None),
        (DateCheck(in_future=86400), [f"Date: {_rfc(RECEIVED + timedelta(days=2))}"], "IN_FUTURE"),
        (DateCheck(in_future=86400), [f"Date: {_rfc(RECEIVED + timedelta(hours=2))}"], None),
        (DateCheck(missing=True), ["Subject: x"], "MISSING"),
        (DateCheck(missing=True), [f"Date: {_rfc(RECEIVED)}"], None),
        (DateCheck(invalid=True), ["Date: not a date at all"], "INVALID"),
        (DateCheck(older_than=86400), ["Date: not a date at all"], None),  # not this rule's job
        (DateCheck(older_than=86400), ["Subject: no date"], None),
        # Folded Date header, unfolded before parsing.
        (DateCheck(older_than=86400), ["Date: Mon, 1 Jan 2024\n 10:00:00 +0000"], "IN_PAST"),
        # Measured against receipt, not the wall clock: a 2024 message received in 2024 is fresh.
        (DateCheck(older_than=30 * 86400), ["Date: Sat, 1 Jun 2026 11:00:00 +0000"], None),
        # Every Date is judged (issue 12): a fresh one first does not hide an old one.
        (DateCheck(older_than=30 * 86400),
         [f"Date: {_rfc(RECEIVED)}", "Subject: x", "Date: Wed, 12 Jan 2011 08:00:00 +0000"], "IN_PAST"),
        (DateCheck(in_future=86400),
         [f"Date: {_rfc(RECEIVED)}", f"Date: {_rfc(RECEIVED + timedelta(days=3))}"], "IN_FUTURE"),
        (DateCheck(invalid=True), [f"Date: {_rfc(RECEIVED)}", "Date: soon"], "INVALID"),
        (DateCheck(duplicate=True), [f"Date: {_rfc(RECEIVED)}", f"Date: {_rfc(RECEIVED)}"], "DUPLICATE"),
        (DateCheck(duplicate=True), [f"Date: {_rfc(RECEIVED)}"], None),
        (DateCheck(duplicate=True), ["Subject: no date"], None),
    ],
    ids=[
        "31d-old",
        "29d-old",
        "2d-ahead",
        "2h-ahead",
        "missing",
        "present",
        "invalid",
        "invalid-not-asked",
        "absent-not-asked",
        "folded",
        "vs-receipt-time",
        "second-date-old",
        "second-date-ahead",
        "second-date-invalid",
        "duplicate",
        "single-not-duplicate",
        "none-not-duplicate",
    ],
)
def test_date_findings(check, headers, finding):
    result = check.observe(_msg(*headers))
    assert (result.code if result else None) == finding


def test_the_reason_names_which_date_and_rules_share_one_parse():
    msg = _msg(f"Date: {_rfc(RECEIVED)}", "Date: Wed, 12 Jan 2011 08:00:00 +0000")
    old = DateCheck(older_than=30 * 86400).observe(msg)
    assert old.reason.startswith("Date #2 of 2 is ") and old.groups == ("Wed, 12 Jan 2011 08:00:00 +0000",)
    assert DateCheck(duplicate=True).observe(msg).reason.startswith("2 Date headers (RFC 5322 allows one): ")
    assert len(msg.memo["dates"]) == 2


# --- the golden corpus (tests/corpus/) -------------------------------------------------------
@pytest.mark.parametrize("name", corpus.MESSAGES)
async def test_corpus_findings_of_the_date_kind(name):
    """Every corpus message through the corpus's date rules: their findings, as expected."""
    rules = corpus.ruleset(["date"])
    assert rules.rules, "the corpus has rules of this kind"
    assert await corpus.findings(name, rules) == corpus.expected_findings(name, rules)
