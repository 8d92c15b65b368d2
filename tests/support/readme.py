"""The README's shell blocks, for the tests that run the commands it shows.

An admin copies these blocks as they are; a test takes the same text, rewrites only what must
differ on a test machine (paths, the account, the Postfix instance, ports: ``substitute``), and
runs it with bash. A README edit that breaks a command breaks its test.

``shell_block("some text")`` is also how tests/docs/test_readme.py knows which test runs which
block: it scans tests/ for ``shell_block`` calls with a literal string, so call it with a literal,
from inside a test function (or a helper that a test function of the same module calls).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["README", "ShellBlock", "run_block", "sh_blocks", "shell_block", "substitute"]

README = Path(__file__).resolve().parents[2] / "README.md"

# A fenced block opened by exactly ```sh; ```console (a transcript), ```yaml, ```text and bare
# ``` blocks are not commands to run.
_SH_BLOCK = re.compile(r"(?ms)^```sh\n(.*?)^```")


@dataclass(frozen=True)
class ShellBlock:
    line: int  # of the opening ```sh, 1-based, for messages
    text: str


def sh_blocks(text: str | None = None) -> list[ShellBlock]:
    """Every ```sh block of the README (or of ``text``), in order."""
    text = README.read_text() if text is None else text
    return [ShellBlock(text.count("\n", 0, found.start()) + 1, found.group(1))
            for found in _SH_BLOCK.finditer(text)]


def shell_block(containing: str) -> str:
    """The one ```sh block of the README that contains ``containing``."""
    found = [block.text for block in sh_blocks() if containing in block.text]
    assert len(found) == 1, f"{len(found)} README sh blocks contain {containing!r}"
    return found[0]


def substitute(text: str, replacements: dict[str, str]) -> str:
    """Plain replacements, longest first (a path before its own prefix)."""
    for old in sorted(replacements, key=len, reverse=True):
        assert old in text, f"{old!r} is not in the README block any more"
        text = text.replace(old, replacements[old])
    return text


def run_block(script: str, *, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a (substituted) block with bash as a user pastes it, but stopping at the first
    failing command (-e, pipefail, -u); background jobs it leaves are killed on the way out."""
    guarded = "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script
    return subprocess.run(["bash", "-euo", "pipefail", "-c", guarded], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
