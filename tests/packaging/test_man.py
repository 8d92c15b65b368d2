"""smtpfilter(8): regenerated from the parser it equals the committed page, and groff renders it
without a warning. After a help text changes: python3 man/make.py, and commit the page."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import pytest

from smtpfilter.cli import build_parser
from tests.packaging.conftest import ROOT, missing, run

PAGE = ROOT / "man" / "smtpfilter.8"


def _generated() -> str:
    result = run([sys.executable, ROOT / "man" / "make.py", "--stdout"])
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_committed_page_is_what_make_py_writes_today():
    assert _generated() == PAGE.read_text("utf-8"), (
        "man/smtpfilter.8 is out of date: run python3 man/make.py and commit it"
    )


def test_make_py_check_says_when_the_page_is_stale(tmp_path):
    # The copy lives in a tree of its own, so the real page is never touched.
    for name in ("man", "smtpfilter"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "CHANGELOG.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    check = [sys.executable, tmp_path / "man" / "make.py", "--check"]
    assert run(check).returncode == 0
    (tmp_path / "man" / "smtpfilter.8").write_text("stale\n", "utf-8")
    stale = run(check)
    assert stale.returncode == 1 and "out of date" in stale.stderr


def test_groff_renders_it_without_warnings():
    if shutil.which("groff") is None:
        missing("groff is not installed (apt-get install groff-base)")
    # -ww: every warning; -z: format, print nothing but the diagnostics.
    result = run(["groff", "-man", "-Tutf8", "-ww", "-z", PAGE])
    assert (result.returncode, result.stderr) == (0, "")


def _commands(parser: argparse.ArgumentParser, prefix: str = "smtpfilter") -> list[str]:
    names = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                names += _commands(sub, f"{prefix} {name}") or [f"{prefix} {name}"]
    return names


def test_the_page_has_a_section_for_every_command_and_every_option():
    if shutil.which("groff") is None:
        missing("groff is not installed (apt-get install groff-base)")
    rendered = subprocess.run(
        ["groff", "-man", "-Tutf8", "-P-cbu", PAGE], capture_output=True, check=True
    ).stdout.decode()
    # Whichever glyphs this groff gives a minus sign and a hyphen, they are typed as '-'.
    rendered = rendered.replace("\u2212", "-").replace("\u2010", "-")
    for command in _commands(build_parser()):
        assert command in rendered, command
    for option in ("--received-hop", "--postfix-config", "--reject-as", "--workers", "--sender"):
        assert option in rendered, option


@pytest.mark.parametrize("unit", ["smtpfilter.service", "smtpfilter-milter.service",
                                  "smtpfilter.socket"])
def test_each_systemd_unit_points_at_the_page(unit):
    lines = (ROOT / "systemd" / unit).read_text("utf-8").splitlines()
    documentation = " ".join(line for line in lines if line.startswith("Documentation="))
    assert "man:smtpfilter(8)" in documentation.split("=", 1)[1].split()
