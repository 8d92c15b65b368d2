"""The README's shell blocks, for the tests that run the commands it shows.

An admin copies these blocks as they are; a test takes the same text, rewrites only what must
differ on a test machine (paths, the account, the Postfix instance: ``substitute``), and runs
it with bash. A README edit that breaks a command breaks its test.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["README", "shell_block", "substitute"]

README = Path(__file__).resolve().parents[2] / "README.md"


def shell_block(containing: str) -> str:
    """The one ```sh block of the README that contains ``containing``."""
    blocks = re.findall(r"(?ms)^```sh\n(.*?)^```", README.read_text())
    found = [block for block in blocks if containing in block]
    assert len(found) == 1, f"{len(found)} README sh blocks contain {containing!r}"
    return found[0]


def substitute(text: str, replacements: dict[str, str]) -> str:
    """Plain replacements, longest first (a path before its own prefix)."""
    for old in sorted(replacements, key=len, reverse=True):
        assert old in text, f"{old!r} is not in the README block any more"
        text = text.replace(old, replacements[old])
    return text
