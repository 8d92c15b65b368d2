"""The command line: check-config and test, on real files."""

from __future__ import annotations

import json
import textwrap

from smtpfilter.cli import EX_CONFIG, main


def test_check_config_defaults_list_the_shipped_rules(capsys):
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "built-in defaults: ok" in out
    assert "OLD_DATE" in out and "SPAM_MAILER" in out


def test_check_config_reports_problems_and_exits_78(tmp_path, capsys):
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - {name: X, check: date, older_than: soon, action: reject}\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"rules: [{rules.name}]\nlisten: nowhere\n")
    assert main(["check-config", "--config", str(config)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert f"{config}:2: listen: 'nowhere': missing port" in err
    assert "not starting" not in err and "not usable" in err


def test_test_command_explains_each_rule(tmp_path, capsys):
    eml = tmp_path / "old.eml"
    eml.write_text(
        textwrap.dedent(
            """\
            From spammer@example.net Fri Mar  1 10:00:00 2024
            Date: Mon, 1 Jan 2024 10:00:00 +0000
            From: <spammer@example.net>
            X-Mailer: MaxBulk.Mailer 12
            Subject: offer

            body
            """
        )
    )
    assert main(["test", str(eml)]) == 0
    out = capsys.readouterr().out
    # Judged as of its delivery (the mbox From line), not today: 60 days old then.
    assert "received: 2024-03-01 10:00:00 UTC (mbox From line)" in out
    assert "OLD_DATE" in out and "IN_PAST" in out and "Date is 60 days before receipt" in out
    assert "SPAM_MAILER" in out and "MATCH" in out
    assert "decision: discard by SPAM_MAILER" in out
    assert "reply:    250 2.0.0 Ok: discarded by content filter (SPAM_MAILER)" in out

    assert main(["test", "--json", str(eml)]) == 0
    [report] = json.loads(capsys.readouterr().out)
    assert report["decision"]["action"] == "discard"
    findings = {r["rule"]: r["finding"] for r in report["rules"]}
    assert findings["OLD_DATE"] == "IN_PAST" and findings["NO_DATE"] is None


def test_test_command_missing_file(tmp_path, capsys):
    assert main(["test", str(tmp_path / "nope.eml")]) == 66
