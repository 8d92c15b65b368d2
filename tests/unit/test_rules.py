"""Rule files: what loads, and what an admin is told when it does not."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from smtpfilter.config.options import ConfigError
from smtpfilter.config.settings import shipped_rules_dir
from smtpfilter.core.verdict import Action, Mode
from smtpfilter.engine.rules import load_rules


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_rules([write(tmp_path, text)])
    return [str(p) for p in caught.value.problems]


def test_issue_forms_load_as_written(tmp_path):
    from tests.conftest import ISSUE_RULES

    ruleset = load_rules([write(tmp_path, ISSUE_RULES)])
    assert [(r.name, r.kind, r.action) for r in ruleset.rules] == [
        ("OLD_DATE", "date", Action.REJECT),
        ("NO_DATE", "date", Action.REJECT),
        ("SPAM_MAILER", "header", Action.DISCARD),
    ]


def test_shipped_rules_load_and_hold_the_seed_x_mailers():
    ruleset = load_rules([shipped_rules_dir()])
    names = [r.name for r in ruleset.rules]
    assert names[:5] == ["OLD_DATE", "FUTURE_DATE", "NO_DATE", "BAD_DATE", "DUPLICATE_DATE"]
    mailer = next(r for r in ruleset.rules if r.name == "SPAM_MAILER")
    assert len(mailer.check.patterns.patterns) == 17


def test_directories_load_in_name_order(tmp_path):
    write(tmp_path, "rules:\n  - {name: SECOND, check: date, missing: true, score: 1}\n", "20-b.yaml")
    write(tmp_path, "rules:\n  - {name: FIRST, check: date, missing: true, score: 1}\n", "10-a.yml")
    write(tmp_path, "not yaml: [", "notes.txt")
    assert [r.name for r in load_rules([tmp_path]).rules] == ["FIRST", "SECOND"]


def test_every_problem_is_reported_with_file_line_and_rule(tmp_path):
    problems = errors(
        tmp_path,
        """\
        rules:
          - name: OLD_DATE
            check: date
            older_then: 30d
            action: reject
          - name: lower_case
            check: date
            missing: true
            action: reject
          - name: BAD_ACTION
            check: header
            header: Subject
            match: x
            action: bounce
          - name: NOTHING
            check: date
            missing: true
          - name: KIND
            check: sfp
            action: reject
        """,
    )
    text = "\n".join(problems)
    # Each key on its own line; the typo is the one mistake (older_than unset follows from it).
    assert "rules.yaml:4: rule OLD_DATE: unknown key 'older_then'; did you mean 'older_than'?" in text
    assert "rule OLD_DATE: a date rule needs at least one of" not in text
    assert "rules.yaml:6" in text and "UPPER_SNAKE_CASE" in text
    assert "rule BAD_ACTION: action: 'bounce' is not one of" in text
    assert "rule NOTHING: a rule needs an action, a score, or both" in text
    assert "rule KIND: check: unknown rule kind 'sfp'" in text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("rules: [\n", "not valid YAML"),
        ("rules:\n  - {name: A, check: date, missing: yes, action: reject}\n", "expected true or false"),
        ("rules:\n  - {name: A, check: date, older_than: 30x, action: reject}\n", "not a duration"),
        ("rules:\n  - {name: A, check: date, missing: true, action: reject}\n  - {name: A, check: date, missing: true, action: reject}\n", "duplicate rule name"),
        ("rules:\n  - {name: A, check: date, missing: true, action: reject, action: discard}\n", "duplicate key"),
        ("rule:\n  - {name: A}\n", "one top-level key: rules"),
        ("rules: {name: A}\n", "expected a list"),
        ("rules:\n  - just a string\n", "each rule is a mapping"),
        ("rules:\n  - {name: A, check: date, missing: true, action: reject, text: '4.7.1 later'}\n", "starts with 5.x.x"),
        ("rules:\n  - {name: A, check: date, missing: true, action: discard, text: 'x'}\n", "reject or tempfail only"),
        ("rules:\n  - {name: A, check: date, missing: true, action: reject, mode: loud}\n", "not one of"),
        ("rules:\n  - {name: A, check: date, missing: true, score: lots}\n", "expected a number"),
    ],
)
def test_bad_rule_files(tmp_path, text, problem):
    assert any(problem in p for p in errors(tmp_path, text)), errors(tmp_path, text)


def test_missing_path_and_empty_file(tmp_path):
    write(tmp_path, "", "empty.yaml")
    empty = load_rules([tmp_path / "empty.yaml"])
    assert len(empty) == 0
    assert [str(w) for w in empty.warnings] == [f"{tmp_path / 'empty.yaml'}:1: empty file: no rules in it"]
    with pytest.raises(ConfigError, match="nope.yaml: No such file or directory"):
        load_rules([tmp_path / "nope.yaml"])


def test_mode_and_text(tmp_path):
    ruleset = load_rules(
        [
            write(
                tmp_path,
                "rules:\n  - {name: A, check: date, missing: true, action: reject, mode: warn,"
                " text: '5.7.0 go away'}\n",
            )
        ]
    )
    rule = ruleset.rules[0]
    assert rule.mode is Mode.WARN and rule.text == "5.7.0 go away"
