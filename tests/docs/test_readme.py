"""The README cannot drift: every command it shows is run by a test (issue 13).

What counts as a command: every line of every ```sh block of README.md. ```console blocks are
transcripts (a command and what it printed), ```yaml, ```text and bare ``` blocks are files and
log lines; none of those is a command to paste. Inline `code` in prose is not a block either.

How a block is "run by a test": some test takes the block's text from the README itself with
``tests.support.readme.shell_block("a literal unique to that block")``, rewrites only what must
differ on a test machine (``substitute``: paths, ports, the Postfix instance, the account) and
runs it. A line that cannot run on a CI machine (``systemctl start`` without an init) is
compared word for word instead, and its test's docstring says why. This module finds the
takers statically, by parsing every test module under tests/ (no test order, no registry file
to go stale), and fails when

- a ```sh block is taken by no test, or by more than one (two tests would each run half of it);
- a ``shell_block`` argument is not a literal string, or matches no block or several;
- the call is not inside a ``test_*`` function (directly, or in a module-level helper that a
  ``test_*`` function of the same module names);
- such a test would not run in CI: marked skip, skipif, xfail or slow (pyproject's addopts
  deselects slow), in a module whose ``pytestmark`` says so, or calling ``pytest.skip`` itself
  (a missing tool must fail under CI=true, as ``require_postfix`` does);
- the README's test command is not in .ci/run word for word.

To add a block: write it, then a test that calls ``shell_block("...")`` on it and runs it (the
tests in tests/docs/test_commands.py, tests/integration/test_readme_commands.py and
tests/postfix/test_readme_commands.py show the pattern). This module then passes by itself.
A block of smtpfilter commands needs no more than::

    def test_check_config_show(tmp_path):
        config = tmp_path / "smtpfilter.yaml"
        config.write_text("listen: 127.0.0.1:10025\\n")
        done = run_block(substitute(shell_block("check-config --show"), {
            "/etc/smtpfilter/smtpfilter.yaml": str(config),
            "smtpfilter ": f"{sys.executable} -m smtpfilter ",
        }))
        assert done.returncode == 0, done.stderr
        assert "listen = 127.0.0.1:10025" in done.stdout   # what the README says it prints

(``run_block`` is bash -euo pipefail; Postfix commands get ``-c`` of a private instance, see
tests/postfix/test_readme_commands.py, and need the ``mail_system`` fixture and root.)
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.readme import README, sh_blocks, shell_block

REPO = README.parent
TESTS = REPO / "tests"
CI_RUN = REPO / ".ci" / "run"

# Markers with which a test does not run in CI (pyproject: addopts = "-m 'not slow'").
NOT_IN_CI = {"skip", "skipif", "xfail", "slow"}


@dataclass(frozen=True)
class Taker:
    """One ``shell_block("containing")`` call and the tests that run it."""

    where: str  # path:line of the call
    containing: str | None  # None: not a literal
    tests: tuple[str, ...]  # module::test names that make the call (directly or via a helper)
    problems: tuple[str, ...]  # why it does not count


def _marker_names(node: ast.expr) -> set[str]:
    """pytest.mark.X, pytest.mark.X(...), and lists of them (pytestmark = [...])."""
    names: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Attribute) \
                and sub.value.attr == "mark":
            names.add(sub.attr)
    return names


def _skips_itself(function: ast.AST) -> bool:
    return any(isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute)
               and isinstance(sub.func.value, ast.Name) and sub.func.value.id == "pytest"
               and sub.func.attr in {"skip", "importorskip", "xfail"}
               for sub in ast.walk(function))


def _is_shell_block_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Name) and node.func.id == "shell_block")
        or (isinstance(node.func, ast.Attribute) and node.func.attr == "shell_block"))


def takers_in(source: str, name: str) -> list[Taker]:
    """The ``shell_block`` calls of one module's source, each with the tests that run it."""
    tree = ast.parse(source)
    module_marks: set[str] = set()
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "pytestmark" for target in node.targets):
            module_marks |= _marker_names(node.value)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions[node.name] = node
    tests = {n: f for n, f in functions.items() if n.startswith("test_")}

    def ci_problems(test: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
        problems = [f"{test.name} is marked {mark}" for decorator in test.decorator_list
                    for mark in sorted(_marker_names(decorator) & NOT_IN_CI)]
        problems += [f"the module's pytestmark says {mark}" for mark in sorted(module_marks & NOT_IN_CI)]
        if _skips_itself(test):
            problems.append(f"{test.name} calls pytest.skip/importorskip/xfail (fail under CI=true instead)")
        return problems

    owner_of: dict[int, str] = {}
    for function in functions.values():
        for sub in ast.walk(function):
            owner_of[id(sub)] = function.name
    takers = []
    for node in ast.walk(tree):
        if not _is_shell_block_call(node):
            continue
        assert isinstance(node, ast.Call)
        where = f"{name}:{node.lineno}"
        argument = node.args[0] if len(node.args) == 1 and not node.keywords else None
        literal = argument.value if isinstance(argument, ast.Constant) \
            and isinstance(argument.value, str) else None
        problems = [] if literal is not None else ["its argument is not one literal string"]
        owner = owner_of.get(id(node))
        if owner is None:
            problems.append("it is not inside a function (module level runs at collection)")
            runners = []
        elif owner in tests:
            runners = [owner]
        else:  # a helper: the tests of this module that name it
            runners = [t for t, f in tests.items() if any(
                isinstance(sub, ast.Name) and sub.id == owner for sub in ast.walk(f))]
            if not runners:
                problems.append(f"no test_* function of the module calls its helper {owner}()")
        for runner in runners:
            problems += ci_problems(tests[runner])
        takers.append(Taker(where, literal, tuple(f"{name}::{r}" for r in runners), tuple(problems)))
    return takers


def all_takers() -> list[Taker]:
    takers = []
    for path in sorted(TESTS.rglob("test_*.py")):
        takers += takers_in(path.read_text(), str(path.relative_to(REPO)))
    return takers


def test_every_sh_block_is_run_by_exactly_one_test_that_runs_in_ci():
    takers = all_takers()
    problems = [f"{t.where}: shell_block({t.containing!r}): {p}" for t in takers for p in t.problems]
    blocks = sh_blocks()
    for taker in takers:
        if taker.containing is None:
            continue
        matched = [block for block in blocks if taker.containing in block.text]
        if len(matched) != 1:
            problems.append(f"{taker.where}: shell_block({taker.containing!r}) matches "
                            f"{len(matched)} README sh blocks, not one")
    for block in blocks:
        by = [t for t in takers if t.containing is not None and t.containing in block.text]
        first = block.text.splitlines()[0] if block.text.strip() else "(empty)"
        if not by:
            problems.append(f"README.md:{block.line}: ```sh block `{first}` is run by no test: "
                            "take it with shell_block() in a test (see this module's docstring)")
        elif len(by) > 1:
            problems.append(f"README.md:{block.line}: ```sh block `{first}` is taken by "
                            f"{len(by)} calls ({', '.join(t.where for t in by)}): one test owns a block")
    assert not problems, "\n".join(problems)


def test_the_readme_test_command_is_what_ci_runs():
    """.ci/run installs the packages, then runs the README's test command, word for word."""
    command = shell_block("-m pytest").strip()
    assert len(command.splitlines()) == 1, command
    assert command in CI_RUN.read_text().splitlines(), f"{command!r} is not a line of .ci/run"


def ci_packages() -> set[str]:
    found = re.search(r"(?m)^packages=\((.*)\)$", CI_RUN.read_text())
    assert found, ".ci/run has no packages=(...) line"
    return set(found.group(1).split())


def test_every_package_the_readme_names_is_one_ci_installs():
    """Inline `apt install X Y` and `apt-get install X` in the prose (the skip causes of the test
    suite, the Quick start): each package is one .ci/run installs, so the tests that need it ran."""
    named = set()
    for command in re.findall(r"`(apt(?:-get)? install [^`]+)`", README.read_text()):
        named |= {word for word in shlex.split(command)[2:] if not word.startswith("-")}
    assert named, "the README names no package any more"
    assert named <= ci_packages(), f"not installed by .ci/run: {sorted(named - ci_packages())}"


def transcript_commands(text: str) -> list[tuple[int, list[str]]]:
    """(line, argv after the program) of every ``$ smtpfilter ...`` of the ```console blocks."""
    found = []
    for block in re.finditer(r"(?ms)^```console\n(.*?)^```", text):
        first = text.count("\n", 0, block.start()) + 2
        lines = block.group(1).splitlines()
        for number, line in enumerate(lines):
            if not line.startswith("$ "):
                continue
            command, following = line[2:], number
            while command.endswith("\\"):
                following += 1
                command = command[:-1] + lines[following]
            argv = shlex.split(command, comments=True)
            argv = argv[:argv.index("|")] if "|" in argv else argv
            if Path(argv[0]).name == "smtpfilter" and argv[1:2] != ["pipe"]:
                found.append((first + number, argv[1:]))
    return found


def test_every_smtpfilter_command_in_a_transcript_parses(capsys):
    """The ```console blocks are transcripts (command and output), not run by a test as a
    whole: their output is an example. Their ``smtpfilter`` commands must at least be ones
    this smtpfilter accepts, subcommand and options, so that a renamed option shows here."""
    from smtpfilter.cli import build_parser

    commands = transcript_commands(README.read_text())
    assert len(commands) >= 5, commands
    problems = []
    for line, argv in commands:
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            problems.append(f"README.md:{line}: smtpfilter {shlex.join(argv)}: "
                            f"{capsys.readouterr().err.strip().splitlines()[-1]}")
    assert not problems, "\n".join(problems)


def test_a_transcript_command_that_no_longer_parses_is_found(capsys):
    from smtpfilter.cli import build_parser

    text = "```console\n$ smtpfilter scan --nope \\\n    ~/Maildir | head\nout\n```\n"
    [(line, argv)] = transcript_commands(text)
    assert (line, argv) == (2, ["scan", "--nope", "~/Maildir"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert "unrecognized arguments: --nope" in capsys.readouterr().err


# The scan itself, on made-up modules: each way a README block could silently stop being run.
GOOD = '''
import pytest
from tests.support.readme import shell_block

def helper():
    return shell_block("via a helper")

def test_direct():
    shell_block("direct")

async def test_through_helper():
    helper()
'''


@pytest.mark.parametrize(("source", "problem"), [
    pytest.param("from tests.support.readme import shell_block\n"
                  "@pytest.mark.skip\ndef test_a():\n    shell_block('x')\n",
                  "test_a is marked skip", id="skipped"),
    pytest.param("@pytest.mark.slow\ndef test_a():\n    shell_block('x')\n",
                 "test_a is marked slow", id="slow"),
    pytest.param("pytestmark = [pytest.mark.postfix, pytest.mark.skipif(True, reason='')]\n"
                 "def test_a():\n    shell_block('x')\n",
                 "the module's pytestmark says skipif", id="module-skipif"),
    pytest.param("def test_a():\n    if 1:\n        pytest.skip('no tool')\n    shell_block('x')\n",
                 "test_a calls pytest.skip", id="skips-itself"),
    pytest.param("BLOCK = shell_block('x')\ndef test_a():\n    BLOCK\n",
                 "not inside a function", id="module-level"),
    pytest.param("def helper():\n    shell_block('x')\ndef test_a():\n    pass\n",
                 "no test_* function of the module calls its helper helper()", id="orphan-helper"),
    pytest.param("NAME = 'x'\ndef test_a():\n    shell_block(NAME)\n",
                 "not one literal string", id="not-literal"),
])
def test_the_scan_notices_a_block_that_would_not_run(source, problem):
    [taker] = takers_in(source, "t.py")
    assert any(problem in p for p in taker.problems), taker.problems


def test_the_scan_accepts_direct_calls_and_helpers():
    takers = takers_in(GOOD, "t.py")
    assert sorted((t.containing, t.tests, t.problems) for t in takers) == [
        ("direct", ("t.py::test_direct",), ()),
        ("via a helper", ("t.py::test_through_helper",), ()),
    ]


def test_sh_blocks_are_only_sh_fences():
    text = "```sh\na\n```\n```console\n$ b\n```\n```yaml\nc: 1\n```\n```\nd\n```\n```sh\ne \\\n  f\n```\n"
    assert [(b.line, b.text) for b in sh_blocks(text)] == [(1, "a\n"), (13, "e \\\n  f\n")]
