"""Build the sdist and wheel once per run, and install the wheel the ways users do.

Builds run offline: ``python -m build --no-isolation`` uses the setuptools of this environment
(the test extra has it) instead of downloading one, from a copy of the tree so that build/ and
*.egg-info never appear in the checkout. The sdist is built first and the wheel from the
unpacked sdist, as pip does, so a file missing from the sdist also breaks the wheel.

Installs use this interpreter's base Python (not the venv: pip refuses ``--user`` inside one)
driven by this venv's pip (``pip --python``: the base Python needs no pip of its own, Debian's
has none), with ``--no-deps --no-index``: nothing is downloaded. The dependencies come from
this venv through PYTHONPATH, as links to everything in its site-packages except smtpfilter
itself, so that the smtpfilter that runs is the installed one and nothing else.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI") == "true"
# Never copied into the build tree: local state, not source.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".hypothesis",
    ".pytest_cache", "results",
)


def missing(what: str) -> None:
    """Skip for a missing tool, except in CI, where .ci/run installs it: fail there."""
    if IN_CI:
        pytest.fail(f"CI=true but {what}")
    pytest.skip(what)


def run(command: list[str | Path], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=120, **kwargs
    )


def base_python() -> Path:
    """The interpreter this venv was made from."""
    return Path(getattr(sys, "_base_executable", sys.executable))


@dataclass(frozen=True)
class Built:
    sdist: Path
    wheel: Path
    output: str  # what python -m build printed, stdout and stderr


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    try:
        import build  # noqa: F401  (the test extra has it)
    except ImportError:
        missing("the build package is missing: pip install -e '.[test]'")
    # --no-isolation builds with this environment's setuptools: pyproject.toml's minimum.
    setuptools = importlib.metadata.version("setuptools")
    if int(setuptools.split(".")[0]) < 77:
        missing(f"setuptools {setuptools} is older than 77: pip install -e '.[test]'")
    work = tmp_path_factory.mktemp("build")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE, symlinks=True)
    result = run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", work / "dist", source],
        env={**os.environ, "PIP_CONFIG_FILE": os.devnull},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    (sdist,) = (work / "dist").glob("*.tar.gz")
    (wheel,) = (work / "dist").glob("*.whl")
    return Built(sdist, wheel, output)


@pytest.fixture(scope="session")
def dependencies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for PYTHONPATH: this venv's site-packages without smtpfilter."""
    deps = tmp_path_factory.mktemp("deps")
    site = Path(sysconfig.get_path("purelib"))
    for entry in site.iterdir():
        name = entry.name.lower()
        if name.startswith(("smtpfilter", "__editable__", "_smtpfilter")) or name.endswith(".pth"):
            continue
        (deps / entry.name).symlink_to(entry)
    return deps


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment with nothing of this checkout or this user: a fresh HOME, no pip config."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update(extra)
    return env


def pip_install(python: Path, wheel: Path, env: dict[str, str], *options: str) -> None:
    """Install ``wheel`` for ``python`` with this venv's pip, offline, no dependencies."""
    result = run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         "--no-compile", *options, wheel],
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
