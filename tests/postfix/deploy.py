"""Install this checkout's smtpfilter where an unprivileged account can run it.

pipe(8) runs ``smtpfilter pipe`` as a dedicated user, never as root. On a test machine the
Python that runs pytest may live where that user cannot go (pyenv under a 0700 /root), so the
pipe test installs what an admin would: smtpfilter and its dependencies in a directory of their
own, with a launcher script like the one pip writes into ``/opt/smtpfilter/bin``, run by the
first Python interpreter of the same version that the user can execute.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.postfix.examples import REPO

__all__ = ["deploy"]


def _dependencies() -> list[metadata.Distribution]:
    """smtpfilter's runtime dependencies (pyproject.toml), and theirs, as installed here."""
    with open(REPO / "pyproject.toml", "rb") as file:
        wanted = [Requirement(r).name for r in tomllib.load(file)["project"]["dependencies"]]
    found: dict[str, metadata.Distribution] = {}
    while wanted:
        name = canonicalize_name(wanted.pop())
        if name in found:
            continue
        dist = metadata.distribution(name)
        found[name] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.append(requirement.name)
    return list(found.values())


def _interpreters() -> list[str]:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [str(Path(sys.executable).resolve()), f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    return [c for i, c in enumerate(candidates) if Path(c).is_file() and c not in candidates[:i]]


def deploy(dest: Path, user: str = "nobody") -> Path:
    """Copy smtpfilter and its dependencies under ``dest``; return the launcher's path."""
    lib = dest / "lib"
    shutil.copytree(REPO / "smtpfilter", lib / "smtpfilter", ignore=shutil.ignore_patterns("__pycache__"))
    for dist in _dependencies():
        for file in dist.files or []:
            relative = Path(str(file))
            if ".." in relative.parts or "__pycache__" in relative.parts:
                continue  # console scripts outside site-packages; byte code is rebuilt
            target = lib / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(dist.locate_file(file), target)
    probe = f"import sys; sys.path.insert(0, {str(lib)!r}); import smtpfilter.cli, smtpfilter.frontdoors.pipe"
    tried = []
    for python in _interpreters():
        try:
            result = subprocess.run(
                [python, "-c", probe], user=user, capture_output=True, text=True, timeout=60
            )
        except OSError as error:  # e.g. an interpreter under a 0700 /root
            tried.append(f"{python}: {error}")
            continue
        if result.returncode == 0:
            break
        tried.append(f"{python}: {result.stderr.strip().splitlines()[-1:]}")
    else:
        raise RuntimeError(f"no Python interpreter that {user} can run smtpfilter with: {tried}")
    launcher = dest / "bin" / "smtpfilter"
    launcher.parent.mkdir(parents=True)
    launcher.write_text(
        f"#!{python}\n"
        "# Written by tests/postfix/deploy.py, like the launcher pip puts into a venv's bin/.\n"
        "import sys\n"
        f"sys.path.insert(0, {str(lib)!r})\n"
        "from smtpfilter.cli import main\n"
        "sys.exit(main())\n"
    )
    launcher.chmod(0o755)
    return launcher
