"""python -m build: no deprecation warning, and the sdist and wheel carry what issue 13 lists."""

from __future__ import annotations

import tarfile
import zipfile

import pytest

from smtpfilter import __version__
from tests.packaging.conftest import ROOT, Built

pytestmark = pytest.mark.packaging


def test_the_build_prints_no_deprecation_warning(built: Built):
    # setuptools' own words for what it will stop accepting: "project.license as a TOML table
    # is deprecated", "SetuptoolsDeprecationWarning: License classifiers are deprecated".
    lowered = built.output.lower()
    assert "setuptoolsdeprecationwarning" not in lowered, built.output
    assert "deprecat" not in lowered, built.output


def _sdist_names(built: Built) -> set[str]:
    with tarfile.open(built.sdist) as sdist:
        # smtpfilter-0.2.0/tests/corpus/01-plain.eml -> tests/corpus/01-plain.eml
        return {name.partition("/")[2] for name in sdist.getnames()}


def _tracked(pattern: str) -> set[str]:
    return {str(path.relative_to(ROOT)) for path in ROOT.glob(pattern) if path.is_file()}


def test_the_sdist_carries_tests_examples_units_and_docs(built: Built):
    names = _sdist_names(built)
    wanted = {
        "README.md", "LICENSE", "CHANGELOG.md", "pyproject.toml", "MANIFEST.in",
        "main.cf.example", "master.cf.example", "smtpfilter.yaml.example",
        "man/make.py", "man/smtpfilter.8",
    }
    for pattern in ("systemd/*", "rules/**/*.yaml", "tests/**/*", "bench/*.py", "bench/README.md"):
        wanted |= {name for name in _tracked(pattern) if "__pycache__" not in name}
    assert sorted(wanted - names) == []
    assert "tests/corpus/expected.yaml" in names and "tests/data/rfc7208-tests.yml" in names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


def test_the_wheel_installs_data_files_under_share(built: Built):
    data = f"smtpfilter-{__version__}.data/data/"
    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
    shared = {name[len(data):] for name in names if name.startswith(data)}
    wanted = {
        "share/smtpfilter/main.cf.example",
        "share/smtpfilter/master.cf.example",
        "share/smtpfilter/smtpfilter.yaml.example",
        "share/man/man8/smtpfilter.8",
        "share/doc/smtpfilter/README.md",
        "share/doc/smtpfilter/CHANGELOG.md",
    }
    wanted |= {f"share/smtpfilter/{name}" for name in _tracked("systemd/*")}
    wanted |= {f"share/smtpfilter/{name}" for name in _tracked("rules/**/*.yaml")}
    assert sorted(wanted - shared) == []
    assert f"smtpfilter-{__version__}.dist-info/licenses/LICENSE" in names
    # The package and nothing of the tree around it.
    assert not [name for name in names if name.startswith(("tests/", "bench/", "rules/"))]


def test_the_wheel_metadata_states_the_license_as_spdx(built: Built):
    with zipfile.ZipFile(built.wheel) as wheel:
        metadata = wheel.read(f"smtpfilter-{__version__}.dist-info/METADATA").decode()
    headers = metadata.split("\n\n", 1)[0].splitlines()
    assert "License-Expression: MIT" in headers
    assert "License-File: LICENSE" in headers
    assert f"Version: {__version__}" in headers
