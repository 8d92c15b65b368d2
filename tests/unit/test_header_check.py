"""The header rule kind."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from smtpfilter.config.options import Options
from smtpfilter.config.yamlfile import load_text
from smtpfilter.core.message import MessageContext
from smtpfilter.core.wire import to_wire
from smtpfilter.engine.checks.header import HeaderCheck
from tests.support import corpus


def check(yaml: str) -> HeaderCheck:
    problems = []
    mapping = load_text(yaml, "rule.yaml")
    result = HeaderCheck.from_options(Options(mapping, problems, rule="T"))
    assert problems == []
    return result


def msg(raw: bytes) -> MessageContext:
    return MessageContext.build(to_wire(raw), received_at=datetime.now(timezone.utc))


SPAM_MAILER = "header: X-Mailer\nmatch: ['^MaxBulk\\.Mailer', '^Avalanche']\n"


@pytest.mark.parametrize(
    ("raw", "finding"),
    [
        (b"X-Mailer: MaxBulk.Mailer 3.0\n\n", "MATCH"),
        (b"X-Mailer: maxbulk.mailer 3.0\n\n", "MATCH"),  # case-insensitive like Postfix
        (b"X-Mailer:    Avalanche\n\n", "MATCH"),  # leading spaces of the value ignored
        (b"x-mailer: Avalanche\n\n", "MATCH"),  # header names are case-insensitive
        (b"X-Mailer: MaxBulkXMailer\n\n", None),  # the dot is literal
        (b"X-Mailer: Thunderbird\nX-Mailer: Avalanche 2\n\n", "MATCH"),  # every occurrence
        (b"X-Mailer: Thunderbird\n\n", None),
        (b"X-Mailer: =?utf-8?B?TWF4QnVsay5NYWlsZXI=?=\n\n", "MATCH"),  # RFC 2047 decoded
        (b"X-Mailer:\n Avalanche folded\n\n", "MATCH"),  # unfolded
        (b"Subject: x\nno colon here\nX-Mailer: Avalanche\n\n", None),  # that is body
        (b"X-Mailer: \xff\xfe Avalanche\n\n", None),  # junk bytes do not crash, no match
        (b"X-Mailer: Avalanche \xff\n\n", "MATCH"),
    ],
)
def test_spam_mailer(raw, finding):
    result = check(SPAM_MAILER).observe(msg(raw))
    assert (result.code if result else None) == finding


def test_star_matches_whole_lines_like_header_checks():
    rule = check("header: '*'\nmatch: '^Subject: .*viagra'\n")
    assert rule.observe(msg(b"Subject: cheap VIAGRA\n\n")).code == "MATCH"
    assert rule.observe(msg(b"X-Subject: viagra\n\n")) is None


def test_groups_are_kept_for_the_reply_text():
    rule = check("header: Subject\nmatch: '^win (\\w+)'\n")
    assert rule.observe(msg(b"Subject: win money now\n\n")).groups == ("money",)


def test_missing_header():
    rule = check("header: Message-Id\nmissing: true\n")
    assert rule.observe(msg(b"Subject: x\n\n")).code == "MISSING"
    assert rule.observe(msg(b"Message-ID: <a@b>\n\n")) is None


def test_case_sensitive_and_decode_raw():
    sensitive = check("header: Subject\nmatch: '^ABC'\ncase_sensitive: true\n")
    raw_only = check("header: Subject\nmatch: 'hidden'\ndecode: raw\n")
    assert sensitive.observe(msg(b"Subject: abc\n\n")) is None
    assert sensitive.observe(msg(b"Subject: ABC\n\n")).code == "MATCH"
    assert raw_only.observe(msg(b"Subject: =?utf-8?B?aGlkZGVu?=\n\n")) is None


@pytest.mark.parametrize("every", [False, True], ids=["named", "star"])
@pytest.mark.parametrize(
    ("raw", "finding"),
    [
        (b"Subject: hidden offer\n\n", "MATCH"),  # plain text: its decoded form is itself
        (b"Subject: =?utf-8?B?aGlkZGVu?= offer\n\n", "MATCH"),
        (b"Subject: =?utf-8?Q?hid?= =?utf-8?Q?den?=\n\n", "MATCH"),  # split across two words
        (b"Subject: harmless\n\n", None),
    ],
)
def test_decode_decoded_tries_every_header_plain_or_encoded(raw, finding, every):
    # Issue 10 item 5: a header without an encoded word was never tried with decode: decoded,
    # so spam evaded such a rule by simply not encoding.
    header = "'*'\nmatch: '^Subject: .*hidden'" if every else "Subject\nmatch: 'hidden'"
    rule = check(f"header: {header}\ndecode: decoded\n")
    result = rule.observe(msg(raw))
    assert (result.code if result else None) == finding


@pytest.mark.parametrize(
    ("yaml", "problem"),
    [
        ("header: X-Mailer\n", "needs match"),
        ("header: X-Mailer\nmatch: '(?=lookahead)'\n", "not usable"),
        ("header: X-Mailer\nmatch: '(a)\\1'\n", "not usable"),
        ("header: X-Mailer\nmatch: '[unclosed'\n", "not usable"),
        ("header: 'X Mailer'\nmatch: x\n", "not a header name"),
        ("header: ['*', Subject]\nmatch: x\n", "cannot be combined"),
        ("header: X-Mailer\nmatch: x\nmissing: true\n", "not both"),
        ("header: X-Mailer\nmatch: x\ndecode: sometimes\n", "not one of"),
    ],
)
def test_bad_options_are_reported(yaml, problem):
    problems = []
    opts = Options(load_text(yaml, "r.yaml"), problems, rule="T")
    HeaderCheck.from_options(opts)
    opts.finish()  # "needs match" waits for it: reported only when nothing else was wrong
    assert any(problem in str(p) for p in problems), problems


def test_pathological_pattern_runs_in_linear_time():
    # Exponential for a backtracking engine; RE2 is linear. 100k characters must be instant.
    rule = check("header: Subject\nmatch: '^(a+)+$'\n")
    value = b"a" * 100_000 + b"!"
    assert rule.observe(msg(b"Subject: " + value + b"\n\n")) is None


# --- if / unless / form: postfix (what import-header-checks generates) -------------------------
def test_unless_exempts_a_header_like_a_dunno_line_above():
    rule = check("header: '*'\nmatch: '^Subject: .*viagra'\nunless: ['^Subject: .*important']\n")
    assert rule.observe(msg(b"Subject: viagra\n\n")).code == "MATCH"
    assert rule.observe(msg(b"Subject: important viagra\n\n")) is None
    # Only the exempted header is skipped: another one may still match.
    assert rule.observe(msg(b"Subject: important viagra\nSubject: viagra\n\n")).code == "MATCH"


def test_if_requires_every_pattern_like_nested_if_blocks():
    rule = check("header: '*'\nmatch: 'evil'\nif: ['^Received:', 'by mx']\n")
    assert rule.observe(msg(b"Received: from evil by mx\n\n")).code == "MATCH"
    assert rule.observe(msg(b"Received: from evil by other\n\n")) is None
    assert rule.observe(msg(b"Subject: evil by mx\n\n")) is None


def test_postfix_form_sees_the_header_as_written_with_newlines():
    rule = check("header: '*'\nform: postfix\nmatch: '^Subject: foo..bar'\n")
    # Postfix joins folded lines with LF: "foo\n bar", and "." matches the newline.
    assert rule.observe(msg(b"Subject: foo\n bar\n\n")).code == "MATCH"
    assert rule.observe(msg(b"Subject: foo bar\n\n")) is None
    spaced = check("header: '*'\nform: postfix\nmatch: '^X-A:x'\n")
    assert spaced.observe(msg(b"X-A:x\n\n")).code == "MATCH"  # no space added after the colon
    assert spaced.observe(msg(b"X-A: x\n\n")) is None
    encoded = check("header: '*'\nform: postfix\nmatch: 'hidden'\n")
    assert encoded.observe(msg(b"Subject: =?utf-8?B?aGlkZGVu?=\n\n")) is None  # left encoded
    single = check("header: '*'\nform: postfix\nmatch: '(?-s)^Subject: foo.bar'\n")
    assert single.observe(msg(b"Subject: foo\nbar\n\n")) is None


def test_postfix_form_with_decode_is_a_problem():
    problems = []
    yaml = "header: '*'\nform: postfix\ndecode: both\nmatch: x\n"
    opts = Options(load_text(yaml, "r.yaml"), problems, rule="T")
    HeaderCheck.from_options(opts)
    opts.finish()  # "needs match" waits for it: reported only when nothing else was wrong
    assert any("decode: raw" in str(p) for p in problems), problems


# --- the golden corpus (tests/corpus/) -------------------------------------------------------
@pytest.mark.parametrize("name", corpus.MESSAGES)
async def test_corpus_findings_of_the_header_kind(name):
    """Every corpus message through the corpus's header rules: their findings, as expected."""
    rules = corpus.ruleset(["header"])
    assert rules.rules, "the corpus has rules of this kind"
    assert await corpus.findings(name, rules) == corpus.expected_findings(name, rules)
