"""Reading header_checks tables like Postfix, and POSIX → RE2 translation checked against glibc."""

from __future__ import annotations

import itertools
import string

import pytest
import re2

from smtpfilter.postfix.posix import translate_posix
from smtpfilter.postfix.tables import Pattern, _make_pattern, parse_table
from tests.support import corpus
from tests.support.posix import glibc_search, postfix_flags


def compiled(pattern: Pattern):
    options = re2.Options()
    options.case_sensitive = False  # imported rules are case-insensitive; (?-i) says otherwise
    return re2.compile("(?s)" + pattern.re2, options)  # form: postfix adds (?s)


def ours(written: str, flags: str, text: str) -> bool | None:
    try:
        pattern, _ = _make_pattern(written, False, flags, "regexp")
    except ValueError:
        return None
    return compiled(pattern).search(text) is not None


# --- POSIX patterns: our RE2 translation must agree with glibc, case by case -------------------
CASES = [
    # (pattern, flags, inputs)
    (r"^X-Mailer: MaxBulk.Mailer", "", ["X-Mailer: MaxBulk Mailer", "x-mailer: maxbulk.mailer 3", "X-Mailer:MaxBulk"]),
    (r"^Date: .* [JFMASOND][aepuco][nbrynlgptvc] 201[0-1]", "", ["Date: Mon, 1 Jan 2010 10:00", "Date: Mon, 1 JAN 2011", "Date: 1 Jan 2012"]),
    (r"^Date: .* 1\d\d\d", "", ["Date: x 1999", "Date: x 1ddd", "Date: x 1DDD"]),
    (r"^Date: .* 1\d\d\d", "i", ["Date: x 1999", "Date: x 1ddd", "Date: x 1DDD"]),
    (r"\D\W\S", "", ["D!x", "d!x", "d x"]),
    (r"a\.b|c\/d", "", ["a.b", "axb", "c/d"]),
    (r"[\.]x", "", ["\\x", ".x", "ax"]),
    (r"[]a]+$", "", ["]]a", "b"]),
    (r"[^]a]", "", ["]", "b", "a]"]),
    (r"[[:digit:]]{2,}", "", ["12", "1"]),
    (r"[[:alpha:][:digit:]_-]+@", "", ["a-b_1@", "@"]),
    (r"[[:upper:]]", "i", ["a", "A"]),
    (r"[[:upper:]]", "", ["a", "A"]),
    (r"[[=a=]]b", "", ["ab", "Ab", "bb"]),
    (r"[[.-.]]x", "", ["-x", "ax"]),
    (r"x{,2}y", "", ["y", "xxy"]),
    (r"(ab|a)(c|bcd)$", "", ["abcd", "abc", "acd"]),
    (r"\<foo\>", "", ["a foo b", "afoo", "foo"]),
    (r"\bfoo\B", "", ["foox", "foo "]),
    (r"\`Sub", "", ["Subject: x", "X Sub"]),
    (r"^Subject: foo.bar", "", ["Subject: foo\nbar", "Subject: foo bar"]),
    (r"^Subject: foo.bar", "m", ["Subject: foo\nbar", "Subject: fooxbar"]),
    (r"^ bar$", "m", ["Subject: foo\n bar", " bar"]),
    (r"foo[^x]bar", "m", ["foo\nbar", "foo bar"]),
    (r"foo[^x]bar", "", ["foo\nbar", "foo bar"]),
    (r"a)b", "", ["a)b"]),
    (r"ABC", "i", ["abc", "ABC"]),
    (r"\(a\)\{2\}b", "x", ["aab", "(a){2}b"]),
    (r"a+b?c|d", "x", ["a+b?c|d", "ac"]),
    (r"^*a", "x", ["*a", "a"]),
    (r"a\+b\|c", "x", ["aab", "c", "a+b"]),
    (r"x$y", "x", ["x$y"]),
    (r"a{x", "", ["a{x"]),
    (r"*a", "", ["*a"]),
    (r"[z-a]", "", ["a"]),
    (r"(a", "", ["a"]),
    (r"a\\", "", ["a\\"]),
]


@pytest.mark.parametrize(("pattern", "flags", "inputs"), CASES, ids=[c[0] + "/" + c[1] for c in CASES])
def test_translation_agrees_with_glibc(pattern, flags, inputs):
    for text in inputs:
        expected = glibc_search(pattern, text, postfix_flags(flags))
        got = ours(pattern, flags, text)
        assert got == expected, f"/{pattern}/{flags} on {text!r}: glibc {expected}, ours {got}"


@pytest.mark.parametrize("flags", ["", "i"])
def test_every_escaped_letter_behaves_as_in_glibc(flags):
    for letter in string.ascii_letters:
        if letter in "wWsSbB":
            continue  # GNU escapes, covered above
        for text in ("x" + letter, "x" + letter.swapcase(), "x5"):
            expected = glibc_search("x\\" + letter, text, postfix_flags(flags))
            assert ours("x\\" + letter, flags, text) == expected, (letter, flags, text)


def test_random_header_lines_agree_with_glibc():
    patterns = [r"^(Subject|From):.*(viagra|cialis)", r"^X-[a-z]+: [0-9]{3,}", r"[^ -~]",
                r"^Received: from .*\[(10|192)\.", r"^To: .*@(example\.com)$", r"(^|[^a-z])bad"]
    texts = ["Subject: buy VIAGRA now", "From: x cialis", "X-Spam: 1234", "X-Spam: 12",
             "Received: from a (b [10.1.2.3])", "To: a@example.com", "To: a@example.com.evil",
             "Subject: nobad", "Subject: bad", "Subject: caf\u00e9"]
    for pattern, text in itertools.product(patterns, texts):
        assert ours(pattern, "", text) == glibc_search(pattern, text, postfix_flags("")), (pattern, text)


def test_dead_escape_is_reported_and_the_line_marked():
    body, dead, remarks = translate_posix(r"^Date: .* 200\d", icase=True)
    assert dead and "is not a digit" in remarks[0] and "[0-9]" in remarks[0]
    _, dead, _ = translate_posix(r"^Date: .* 200(\d)?", icase=True)
    assert not dead  # optional: the pattern can still match
    _, dead, remarks = translate_posix(r"200\d", icase=False)
    assert not dead and "the letter d" in remarks[0]


# --- the table format ------------------------------------------------------------------------
TABLE = """\
  /^X-Lead: a/ WARN never: a table may not start with whitespace
/^X-Cont: a/
  WARN cont
/^X-Com: a/ WARN
# comment inside a continued line
  com2
# a comment
~^X-Tilde: a/b~ WARN tilde
/^X-Esc: a\\/b/ WARN esc
/^X-Flag: abc/z WARN badflag
! /^X-Neg: / WARN negated
/^X-Open: a WARN no closing delimiter
/^X-Sub: (a)/ REJECT $(1) ${1} $1 $$
/^X-Bad: (a)/ REJECT $2
IF /^X-If:/
/x/ WARN in-if
ENDIF junk
endif
if !/^X-Nif:/
/^X-Back: (a)\\1/ WARN backref
endif
"""


def test_table_reading_follows_postfix():
    table = parse_table(TABLE, "regexp", "t")
    lines = {line.number: line for line in table.lines}
    notes = {note.line: note.text for note in table.notes}
    assert lines[2].result == "WARN cont"  # continuation joined, whitespace kept
    assert lines[4].result == "WARN  com2"  # the comment inside is skipped
    assert "must not start with whitespace" in notes[1]
    assert lines[8].pattern.written == "^X-Tilde: a/b"
    assert lines[9].pattern.written == "^X-Esc: a\\/b"
    assert 'unknown flag "z"' in notes[10]
    assert lines[11].pattern.negated
    assert "no closing delimiter" in notes[12]
    assert lines[13].result == "REJECT ${1} ${1} ${1} $"
    assert "out of range" in notes[14]
    assert lines[15].kind == "if" and lines[16].conditions == (lines[15],)
    assert lines[17].kind == "endif"
    assert "endif without if" in notes[18]
    assert lines[20].conditions[0].pattern.negated and "backreference" in lines[20].unusable


# --- conversion to rules ---------------------------------------------------------------------
from smtpfilter.core.verdict import Action, Mode  # noqa: E402
from smtpfilter.engine.rules import load_rules  # noqa: E402
from smtpfilter.postfix.importer import convert  # noqa: E402


def imported(tmp_path, table: str, **options):
    conversion = convert([parse_table(table, options.pop("fmt", "regexp"), "hc")], **options)
    path = tmp_path / "imported.yaml"
    path.write_text(conversion.yaml)
    return load_rules([path]), conversion


def test_actions_names_and_notes(tmp_path):
    ruleset, conversion = imported(tmp_path, """\
/^X-A:/ HOLD suspicious
/^X-B:/ PASS
/^X-C:/ INFO
/^X-D:/ REJECT 4.3.2 later
/^X-E:/ REJECT
/^X-F:/ REJECT
/^X-G:/ REDIRECT abuse@example.org
/^X-H:/ FROBNICATE
/^X-I:/
/^X-J:/ DISCARD suspicious
""")
    rules = {r.name: r for r in ruleset.rules}
    assert rules["SUSPICIOUS"].action is Action.QUARANTINE
    assert rules["HC_L2"].action is Action.ACCEPT
    assert rules["HC_L3"].action is Action.WARN
    assert rules["LATER"].action is Action.TEMPFAIL and rules["LATER"].text == "4.3.2 later"
    assert rules["HC_L5"].text == rules["HC_L6"].text == "5.7.1 Message content rejected"
    assert rules["SUSPICIOUS_L10"].action is Action.DISCARD  # a second SUSPICIOUS gets its line
    notes = {note.line: note.text for note in conversion.notes}
    assert "routing stays in Postfix" in notes[7]
    assert "unknown action 'FROBNICATE'" in notes[8] and "no action" in notes[9]
    # Lines 7-9 still match first in Postfix: later rules are exempt where they overlap (here
    # they do not: every line names its own header).
    assert rules["SUSPICIOUS_L10"].check.exempt is None


def test_reject_as_and_prefix(tmp_path):
    ruleset, _ = imported(tmp_path, "/^Subject: spam/ REJECT no spam\n", reject_as="quarantine",
                          prefix="PF_")
    [rule] = ruleset.rules
    assert rule.name == "PF_NO_SPAM" and rule.action is Action.QUARANTINE and rule.text is None


def test_pcre_tables_keep_their_own_semantics(tmp_path):
    ruleset, conversion = imported(tmp_path, """\
/^Date: .* 200\\d/ DISCARD digits work in PCRE
/^Subject: a b # comment/x DISCARD extended
/^X-Look: (?!good)/ DISCARD lookahead
/^X-Anch/A DISCARD anchored
""", fmt="pcre")
    names = [r.name for r in ruleset.rules]
    assert names == ["DIGITS_WORK_IN_PCRE", "EXTENDED", "ANCHORED"]
    assert "lookaround" in {n.line: n.text for n in conversion.notes}[3]
    from tests.unit.test_header_check import msg

    date, extended, anchored = ruleset.rules
    assert date.check.observe(msg(b"Date: 1 Jan 2005 10:00\n\n")) is not None
    assert extended.check.observe(msg(b"Subject:ab\n\n")) is not None  # x: every space goes
    assert anchored.check.observe(msg(b"X-Anchor: 1\n\n")) is not None


def test_an_unusable_if_block_is_reported_line_by_line(tmp_path):
    ruleset, conversion = imported(tmp_path, "if /^X-(a)\\1/\n/b/ DISCARD\nendif\n/^X-C/ WARN c\n")
    notes = {note.line: note.text for note in conversion.notes}
    assert "inside the if at line 1" in notes[2]
    assert [r.name for r in ruleset.rules] == ["C"]
    assert ruleset.rules[0].mode is Mode.WARN  # line 2 may have taken X-C... headers first


def test_command_line_errors(tmp_path, capsys):
    from smtpfilter.cli import main

    assert main(["import-header-checks", str(tmp_path / "nope")]) == 66
    assert "nope: No such file" in capsys.readouterr().err


def test_lines_for_mime_headers_are_flagged(tmp_path):
    _, conversion = imported(tmp_path, "/^Content-Type: .*name=.*\\.exe/ REJECT no exe\n")
    [note] = conversion.notes
    assert "headers of every MIME part" in note.text and not note.skipped


def test_non_ascii_patterns_survive_the_yaml(tmp_path):
    ruleset, _ = imported(tmp_path, "/^Subject: .*(caf\u00e9|\U0001F600)/ DISCARD unicode\n")
    from tests.unit.test_header_check import msg

    [rule] = ruleset.rules
    assert rule.check.observe(msg("Subject: un caf\u00e9\n\n".encode())) is not None
    assert rule.check.observe(msg("Subject: \U0001F600\n\n".encode())) is not None


# --- check: header_checks, the table used as it is ----------------------------------------------
from smtpfilter.config.options import ConfigError  # noqa: E402


def table_rules(tmp_path, table: str, extra: str = ""):
    (tmp_path / "header_checks").write_text(table)
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - name: HC\n    check: header_checks\n    table: regexp:header_checks\n" + extra)
    return load_rules([tmp_path / "rules.yaml"])


async def decide(ruleset, raw: bytes):
    from smtpfilter.config.settings import HeadersConfig, PolicyConfig
    from smtpfilter.engine.pipeline import evaluate
    from smtpfilter.engine.policy import Policy
    from tests.unit.test_header_check import msg

    return await evaluate(ruleset, msg(raw), Policy(PolicyConfig(), HeadersConfig()))


async def test_table_rule_decides_like_cleanup(tmp_path):
    from smtpfilter.core import replies

    ruleset = table_rules(tmp_path, """\
/^Subject: (.*) offer/  REJECT 5.7.1 no $1 offers
/^X-Hold:/              HOLD
/^X-Warn:/              WARN
/^X-Pass:/              PASS
/^X-Bulk:/              DISCARD
if /^Received:/
!/by mx\\.example/      REJECT 4.7.1 unknown relay
""")  # the if has no endif: it ends with the file, as in Postfix
    decision = await decide(ruleset, b"Subject: special offer\n\n")
    assert replies.for_decision(decision) == "550 5.7.1 no special offers"
    assert (await decide(ruleset, b"X-Hold: 1\nX-Bulk: 1\n\n")).action is Action.DISCARD
    assert (await decide(ruleset, b"X-Hold: 1\nX-Warn: 1\n\n")).action is Action.QUARANTINE
    assert (await decide(ruleset, b"X-Warn: 1\n\n")).action is Action.ACCEPT
    assert (await decide(ruleset, b"X-Pass: 1\nX-Bulk: 1\n\n")).action is Action.ACCEPT
    decision = await decide(ruleset, b"Received: from a by b.example\n\n")
    assert decision.action is Action.TEMPFAIL and decision.rule == "HC"


async def test_table_rule_in_warn_mode_only_observes(tmp_path):
    ruleset = table_rules(tmp_path, "/^X-Bulk:/ DISCARD\n", "    mode: warn\n")
    decision = await decide(ruleset, b"X-Bulk: yes\n\n")
    assert decision.action is Action.ACCEPT and decision.intended is Action.DISCARD


def test_table_rule_problems(tmp_path):
    with pytest.raises(ConfigError) as caught:
        table_rules(tmp_path, "/^X-A: (a)\\1/ DISCARD\n", "    action: reject\n")
    text = str(caught.value)
    assert "header_checks:1: backreference" in text and "cannot be used exactly" in text
    assert "action: a header_checks table's own lines decide" in text
    (tmp_path / "missing.yaml").write_text(
        "rules:\n  - {name: HC, check: header_checks, table: /nonexistent/header_checks}\n")
    with pytest.raises(ConfigError, match="No such file"):
        load_rules([tmp_path / "missing.yaml"])


# --- the golden corpus (tests/corpus/) -------------------------------------------------------
@pytest.mark.parametrize("name", corpus.MESSAGES)
async def test_corpus_findings_of_the_header_checks_kind(name):
    """Every corpus message through the corpus's header_checks rules: their findings, as expected."""
    rules = corpus.ruleset(["header_checks"])
    assert rules.rules, "the corpus has rules of this kind"
    assert await corpus.findings(name, rules) == corpus.expected_findings(name, rules)
