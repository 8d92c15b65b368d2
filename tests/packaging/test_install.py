"""The built wheel, installed as users install it, finds its shipped rules and knows its version.

Each install scheme puts the data files elsewhere (shipped_rules_dir() must follow): a venv
under sys.prefix, ``pip install --user`` under site.USER_BASE (here a fresh HOME), ``--prefix``
under a prefix that is not the interpreter's, as a system install into /usr/local does; and a
source tree run uninstalled. What a user sees is asserted: ``smtpfilter check-config`` with
no config reports the shipped rules, ``--version`` the version of pyproject.toml.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from smtpfilter.engine.rules import load_rules
from tests.packaging.conftest import ROOT, Built, base_python, clean_env, missing, pip_install, run

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["version"]
PYTHON_DIR = f"python{sys.version_info.major}.{sys.version_info.minor}"
SHIPPED = sorted(path.name for path in (ROOT / "rules").glob("*.yaml"))
WHERE = "from smtpfilter.config.settings import shipped_rules_dir; print(shipped_rules_dir())"

pytestmark = pytest.mark.packaging


def _rule_count() -> int:
    return len(load_rules([ROOT / "rules"]).rules)


def _assert_check_config_uses_shipped_rules(result: subprocess.CompletedProcess[str]) -> None:
    """check-config without --config: the defaults, and every shipped rule loaded."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "ok; listen 127.0.0.1:10025, forward 127.0.0.1:10026" in result.stdout
    assert f"{_rule_count()} rules from {len(SHIPPED)} files" in result.stdout


def _assert_installed(python: Path, script: Path, share: Path, env: dict[str, str]) -> None:
    where = run([python, "-c", WHERE], env=env, cwd=env["HOME"])
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()) == share / "smtpfilter" / "rules"
    assert sorted(p.name for p in (share / "smtpfilter" / "rules").glob("*.yaml")) == SHIPPED
    assert (share / "smtpfilter" / "rules" / "examples" / "auth.yaml").is_file()
    _assert_check_config_uses_shipped_rules(run([script, "check-config"], env=env, cwd=env["HOME"]))
    version = run([script, "--version"], env=env, cwd=env["HOME"])
    assert (version.returncode, version.stdout) == (0, f"smtpfilter {VERSION}\n"), version.stderr


def test_pip_install_user_into_a_fresh_home(built: Built, dependencies: Path, tmp_path: Path):
    home, userbase = tmp_path / "home", tmp_path / "home" / ".local"
    home.mkdir()
    # --break-system-packages: Debian's Python refuses --user installs without it (PEP 668).
    env = clean_env(home, PYTHONUSERBASE=str(userbase), PYTHONPATH=str(dependencies))
    pip_install(base_python(), built.wheel, env, "--user", "--break-system-packages")
    assert (userbase / "lib" / PYTHON_DIR / "site-packages" / "smtpfilter" / "cli.py").is_file()
    _assert_installed(base_python(), userbase / "bin" / "smtpfilter", userbase / "share", env)
    # The installed annotated example is a working config: the defaults, the shipped rules.
    example = userbase / "share" / "smtpfilter" / "smtpfilter.yaml.example"
    _assert_check_config_uses_shipped_rules(
        run([userbase / "bin" / "smtpfilter", "check-config", "--config", example], env=env)
    )
    # Without a RECORD (a copy a distribution package made), the schemes' data directories.
    site = userbase / "lib" / PYTHON_DIR / "site-packages"
    (record,) = site.glob("smtpfilter-*.dist-info/RECORD")
    record.unlink()
    where = run([base_python(), "-c", WHERE], env=env, cwd=home)
    assert Path(where.stdout.strip()) == userbase / "share" / "smtpfilter" / "rules", where.stderr
    # The man page where man looks for a prefix's pages.
    if shutil.which("man") is None:
        missing("man is not installed (apt-get install man-db)")
    man = run(["man", "-w", "smtpfilter"], env={**env, "MANPATH": str(userbase / "share/man")})
    assert man.stdout.strip() == str(userbase / "share/man/man8/smtpfilter.8"), man.stderr


def test_pip_install_into_a_venv(built: Built, dependencies: Path, tmp_path: Path):
    home, venv = tmp_path / "home", tmp_path / "venv"
    home.mkdir()
    # No pip inside: this venv's pip installs into it (pip --python).
    created = run([base_python(), "-m", "venv", "--without-pip", venv])
    assert created.returncode == 0, created.stderr
    env = clean_env(home, PYTHONPATH=str(dependencies))
    pip_install(venv / "bin" / "python", built.wheel, env)
    _assert_installed(venv / "bin" / "python", venv / "bin" / "smtpfilter", venv / "share", env)


def test_pip_install_prefix_as_a_system_install_does(
    built: Built, dependencies: Path, tmp_path: Path
):
    """Like /usr/local, a prefix that is not the interpreter's: only the RECORD knows it."""
    home, prefix = tmp_path / "home", tmp_path / "usr-local"
    home.mkdir()
    env = clean_env(home)
    pip_install(base_python(), built.wheel, env, "--prefix", str(prefix))
    # Where the scheme put each part (Debian's Python adds local/ to a prefix: posix_local).
    (package,) = prefix.rglob("smtpfilter/cli.py")
    (script,) = prefix.rglob("bin/smtpfilter")
    (rules,) = prefix.rglob("share/smtpfilter/rules")
    env["PYTHONPATH"] = f"{package.parents[1]}:{dependencies}"
    _assert_installed(base_python(), script, rules.parents[1], env)


def test_an_uninstalled_source_tree(dependencies: Path, tmp_path: Path):
    """PYTHONPATH=tree python -m smtpfilter: the tree's rules/, and __version__."""
    tree, home = tmp_path / "tree", tmp_path / "home"
    home.mkdir()
    for name in ("smtpfilter", "rules"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree)
    env = clean_env(home, PYTHONPATH=f"{tree}:{dependencies}")
    where = run([base_python(), "-c", WHERE], env=env, cwd=home)
    assert Path(where.stdout.strip()) == tree / "rules", where.stderr
    _assert_check_config_uses_shipped_rules(
        run([base_python(), "-m", "smtpfilter", "check-config"], env=env, cwd=home)
    )
    version = run([base_python(), "-m", "smtpfilter", "--version"], env=env, cwd=home)
    assert version.stdout == f"smtpfilter {VERSION}\n", version.stderr


def test_the_editable_install_of_this_checkout_uses_its_rules():
    from smtpfilter.config.settings import shipped_rules_dir

    if not (ROOT / ".git").exists() and not (ROOT / "pyproject.toml").exists():
        pytest.skip("not run from a source tree")
    assert shipped_rules_dir() == ROOT / "rules"
