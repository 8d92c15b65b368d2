"""The limits rule kind: a parse limit the message went past is a finding (issue 10, item 4)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from smtpfilter.config.options import Options
from smtpfilter.config.yamlfile import load_text
from smtpfilter.core.message import MessageContext
from smtpfilter.core.wire import to_wire
from smtpfilter.engine.checks import CHECK_KINDS
from smtpfilter.engine.checks.limits import LimitsCheck
from tests.support import corpus

LIMIT = 1000


def build(yaml: str) -> tuple[LimitsCheck, list]:
    problems: list = []
    check = LimitsCheck.from_options(Options(load_text(yaml, "rule.yaml"), problems, rule="T"))
    return check, problems


def msg(raw: bytes) -> MessageContext:
    return MessageContext.build(
        to_wire(raw), received_at=datetime.now(timezone.utc), header_limit=LIMIT
    )


FILLER = b"".join(b"X-Filler-%02d: %s\n" % (n, b"v" * 40) for n in range(40))  # ~2 KB


@pytest.mark.parametrize(
    ("raw", "finding"),
    [
        (b"Subject: short\n\nbody\n", None),
        (b"Subject: short\n\n" + b"long body line\n" * 200, None),  # the body is not headers
        (FILLER + b"X-Mailer: MaxBulk.Mailer\n\nbody\n", "HEADER_LIMIT"),
        (FILLER + b"X-Mailer: MaxBulk.Mailer\n", "HEADER_LIMIT"),  # no body at all
        (b"X-Long: " + b"w" * 2000 + b"\nX-Mailer: MaxBulk.Mailer\n\n", "HEADER_LIMIT"),
        # A malformed line ends the header section before the limit, as in Postfix's cleanup:
        # what follows is body for everyone, not headers the rules missed.
        (b"Subject: x\nnot a header\n" + FILLER + b"\n", None),
    ],
    ids=["small", "big-body", "headers-past-limit", "no-body", "one-line-past-limit", "malformed"],
)
def test_finding_only_when_the_header_section_goes_past_the_limit(raw, finding):
    check, problems = build("{}")
    assert problems == []
    result = check.observe(msg(raw))
    assert (result.code if result else None) == finding
    if result:
        assert "limits.header_size (1000 bytes)" in result.reason


def test_the_check_is_registered_and_watches_every_limit_by_default():
    assert CHECK_KINDS["limits"] is LimitsCheck
    check, _ = build("{}")
    assert check.describe() == "a parse limit was exceeded: limits.header_size, the mime: section"
    check, problems = build("limits: header\n")
    assert problems == [] and check.observe(msg(FILLER)).code == "HEADER_LIMIT"


@pytest.mark.parametrize(
    ("yaml", "words"),
    [
        ("limits: body\n", "'body' is not a parse limit; known: header, mime"),
        ("limits: []\n", "must not be empty"),
        ("limits: {header: 1}\n", "expected text or a list"),
    ],
)
def test_bad_options_are_problems_with_the_rule_name(yaml, words):
    _, problems = build(yaml)
    assert len(problems) == 1 and words in str(problems[0]) and "rule T" in str(problems[0])


# --- the golden corpus (tests/corpus/) -------------------------------------------------------
@pytest.mark.parametrize("name", corpus.MESSAGES)
async def test_corpus_findings_of_the_limits_kind(name):
    """Every corpus message through the corpus's limits rules: their findings, as expected."""
    rules = corpus.ruleset(["limits"])
    assert rules.rules, "the corpus has rules of this kind"
    assert await corpus.findings(name, rules) == corpus.expected_findings(name, rules)
