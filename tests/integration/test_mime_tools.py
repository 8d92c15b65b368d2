"""The README's "Attachments and message text" commands, run as written: smtpfilter test and
scan show part-level findings, import-header-checks --kind body, the mime: config section."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from smtpfilter.cli import main
from smtpfilter.engine.rules import load_rules
from tests.support import corpus

README = Path(__file__).resolve().parents[2] / "README.md"
RECEIVED = (b"Received: from mx.billing.example (mx.billing.example [192.0.2.7])\r\n"
            b"\tby mail.example.com (Postfix) with ESMTP id 4F2B1; Mon, 04 Mar 2024 11:00:05 +0000\r\n")


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    return text[start : text.index("\n## ", start + 1)]


def console_block(text: str, command: str) -> list[str]:
    """The lines a README console block shows after ``$ command``."""
    start = text.index(f"$ {command}\n") + len(command) + 3
    lines = text[start : text.index("```", start)].rstrip("\n").split("\n")
    return lines[: next((i for i, line in enumerate(lines) if line.startswith("$ ")), len(lines))]


def statement(tmp_path: Path) -> Path:
    path = tmp_path / "statement.eml"
    path.write_bytes(RECEIVED + corpus.content("16-disguised-exe.eml"))
    return path


def test_smtpfilter_test_shows_the_part_its_name_and_detected_type(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    statement(tmp_path)
    assert main(["test", "statement.eml"]) == 0  # the shipped rules
    out = capsys.readouterr().out.rstrip("\n").split("\n")
    shown = console_block(section("Attachments and message text"), "smtpfilter test statement.eml")
    for line in shown:
        if line.strip() != "...":
            assert line in out, (line, out)


def test_smtpfilter_test_json_has_the_parts(tmp_path, capsys):
    assert main(["test", "--json", str(statement(tmp_path))]) == 0
    [report] = json.loads(capsys.readouterr().out)
    assert report["parts"] == [{
        "part": "2", "name": "statement.pdf", "declared": "application/pdf",
        "detected": "pe: Windows PE exe", "families": ["executable"], "members": 0,
    }]
    [hit] = [r for r in report["rules"] if r["finding"]]
    assert (hit["rule"], hit["finding"], hit["label"]) == ("DISGUISED_EXECUTABLE", "TYPE",
                                                           "statement.pdf")


def test_smtpfilter_scan_lists_part_findings(tmp_path, capsys):
    box = tmp_path / "box"
    box.mkdir()
    statement(box)
    (box / "scan.eml").write_bytes(RECEIVED + corpus.content("17-zip-with-script.eml"))
    assert main(["scan", str(box)]) == 0
    out = capsys.readouterr().out
    assert "DISGUISED_EXECUTABLE(statement.pdf)" in out and "BANNED_ATTACHMENT(scan_0304.js)" in out
    part_findings = out.split("Part findings (which part, its name, its type):\n", 1)[1]
    assert (f"{box / 'scan.eml'}\n  BANNED_ATTACHMENT: part 2 'Scan vom 04.03.zip' (declared "
            f"application/zip, detected zip) contains \"scan/scan_0304.js\", which matches *.js"
            ) in part_findings
    assert main(["scan", "--json", str(box)]) == 0
    flagged = json.loads(capsys.readouterr().out)["not_delivered"]
    assert any("detected pe: Windows PE exe" in d for f in flagged for d in f["details"])


def test_import_body_checks_as_the_readme_shows(tmp_path, capsys, monkeypatch):
    text = section("Operator tools")
    [table_line] = console_block(text, "cat /etc/postfix/body_checks")
    table = tmp_path / "body_checks"
    table.write_text(table_line + "\n")
    assert main(["import-header-checks", "--kind", "body", f"regexp:{table}"]) == 0
    captured = capsys.readouterr()
    produced = captured.out.split("rules:\n", 1)[1].rstrip("\n").split("\n")
    shown = console_block(text, "smtpfilter import-header-checks --kind body "
                                "regexp:/etc/postfix/body_checks | sed -n '/^rules:/,$p'")
    assert ["rules:", *[line.replace(str(table), "/etc/postfix/body_checks") for line in produced],
            *captured.err.rstrip("\n").split("\n")] == shown


def test_the_readme_rules_and_config_load(tmp_path, capsys):
    text = section("Attachments and message text")
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "rules.yaml").write_text(block)
    assert [r.kind for r in load_rules([tmp_path / "rules.yaml"]).rules] == [
        "attachment", "attachment", "body", "mime_header"]
    # The header_checks block of "Bring your header_checks", with its tables present.
    hc = re.search(r"```yaml\n(rules:\n  - name: POSTFIX_CHECKS\n.*?)```",
                   README.read_text(), re.S).group(1)
    (tmp_path / "header_checks").write_text("/^Subject: x/ REJECT\n")
    (tmp_path / "body_checks").write_text("/^TVqQ/ REJECT\n")
    hc = hc.replace("/etc/postfix/", "")
    (tmp_path / "hc.yaml").write_text(hc)
    [rule] = load_rules([tmp_path / "hc.yaml"]).rules
    assert rule.check.needs_body and not rule.check.by_class["mime_header"]
    # The mime: section of the Configuration block, as written, and a mistake in it.
    config = re.search(r"\nmime: .*?\n(?=```)", section("Configuration"), re.S).group(0)
    assert set(yaml.safe_load(config)["mime"]) == {
        "max_parts", "max_depth", "header_size", "boundary_length", "text_size", "text_total",
        "content_size", "zip_entries", "archive_depth"}
    path = tmp_path / "smtpfilter.yaml"
    path.write_text(f"rules: [rules.yaml]{config}")
    assert main(["check-config", "--config", str(path)]) == 0
    path.write_text("mime:\n  max_part: 10\n")
    assert main(["check-config", "--config", str(path)]) == 78
    err = capsys.readouterr().err
    assert f"{path}:2: unknown key 'mime.max_part'; did you mean 'mime.max_parts'?" in err
    assert "Traceback" not in err
