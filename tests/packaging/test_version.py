"""One version: pyproject.toml's, in smtpfilter.__version__, in CHANGELOG.md, and printed by
``smtpfilter --version`` from the installed metadata."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib

import smtpfilter
from tests.packaging.conftest import ROOT, run

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["version"]


def test_the_package_says_the_version_pyproject_says():
    assert smtpfilter.__version__ == VERSION


def test_the_changelog_has_a_dated_entry_for_it():
    changelog = (ROOT / "CHANGELOG.md").read_text("utf-8")
    assert re.search(rf"^## \[{re.escape(VERSION)}\] - \d{{4}}-\d\d-\d\d$", changelog, re.M)
    assert "## Version policy" in changelog


def test_smtpfilter_version_prints_it():
    # This venv's install of the checkout (README: pip install -e): after a version bump,
    # pip install -e . again, or the metadata still says the old one.
    result = run([sys.executable, "-m", "smtpfilter", "--version"])
    assert (result.returncode, result.stdout, result.stderr) == (0, f"smtpfilter {VERSION}\n", "")


def test_an_uninstalled_tree_falls_back_to_dunder_version(monkeypatch):
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert smtpfilter.installed_version() == smtpfilter.__version__
    monkeypatch.undo()
    assert smtpfilter.installed_version() == importlib.metadata.version("smtpfilter")
