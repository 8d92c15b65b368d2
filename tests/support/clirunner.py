"""Run ``smtpfilter`` command lines in fresh processes, hundreds of them in seconds.

``python -m smtpfilter`` costs 0.5-1 s on this machine before it does anything (interpreter start
and the imports: python -X importtime shows 0.5 s for smtpfilter.cli under load). A table of
broken inputs run through every subcommand is some 500 command lines: minutes. So this helper is
started once (``python -m tests.support.clirunner``), imports what the commands import, and forks
one child per command line. Each child is a process of its own, as ``python -m smtpfilter``
would be after its imports: its own stdin (/dev/null), stdout and stderr (files), working
directory, exit status, and (``unprivileged``) the file permissions of a service user
(tests/support/unprivileged.py). Whatever escapes ``main()`` is printed as the interpreter prints
it, a "Traceback (most recent call last):" and status 1, so a test that looks for tracebacks
sees exactly what a user would.

Protocol, one JSON object per line: request ``{"argv": [...], "cwd": "...", "unprivileged":
bool, "timeout": seconds}``; answer ``{"status": int | null, "stdout": str, "stderr": str}``
(null: still running at the timeout, killed).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

__all__ = ["CliRunner", "Result"]


class Result:
    def __init__(self, status: int | None, stdout: str, stderr: str) -> None:
        self.status = status
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self) -> str:
        return f"Result(status={self.status}, stdout={self.stdout!r}, stderr={self.stderr!r})"


class CliRunner:
    """The test side: one runner process, many command lines."""

    def __init__(self) -> None:
        from tests.support.service import REPO, child_env

        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.clirunner"],
            cwd=REPO, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def run(self, argv: list[str], cwd: Path, *, unprivileged: bool = False,
            timeout: float = 20.0) -> Result:
        assert self.process.stdin is not None and self.process.stdout is not None
        request = {"argv": argv, "cwd": str(cwd), "unprivileged": unprivileged, "timeout": timeout}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the CLI runner died (status {self.process.wait()})")
        answer = json.loads(line)
        return Result(answer["status"], answer["stdout"], answer["stderr"])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=20)
        if self.process.stdout is not None:
            self.process.stdout.close()


# --- the runner process ----------------------------------------------------------------------
def _preload() -> None:
    """What the commands import lazily, imported once here rather than in every child."""
    import smtpfilter.cli  # noqa: F401
    import smtpfilter.delivery.quarantine  # noqa: F401
    import smtpfilter.frontdoors.milter.server  # noqa: F401
    import smtpfilter.frontdoors.pipe  # noqa: F401
    import smtpfilter.frontdoors.policyd  # noqa: F401
    import smtpfilter.frontdoors.smtp.server  # noqa: F401
    import smtpfilter.postfix.importer  # noqa: F401
    import smtpfilter.service.lifecycle  # noqa: F401
    import smtpfilter.tools.doctor  # noqa: F401
    import smtpfilter.tools.report  # noqa: F401
    import smtpfilter.tools.scan  # noqa: F401

    # Every config load asks postconf(1) for message_size_limit: 70 ms a run, the same answer
    # every time. Asked once here; the children get that answer (config_directory unset only).
    from smtpfilter.config import settings

    read_postfix = settings.read_postfix
    default = read_postfix()

    def once(config_directory=None):
        return default if config_directory is None else read_postfix(config_directory)

    settings.read_postfix = once


def _child(request: dict, out: int, err: int) -> None:
    """Never returns: becomes the command, then exits with its status."""
    status = 1
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.chdir(request["cwd"])
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        if request["unprivileged"]:
            from tests.support.unprivileged import drop_file_override

            drop_file_override()
        sys.argv = ["smtpfilter", *request["argv"]]
        from smtpfilter.cli import main

        try:
            status = main(request["argv"])
        except SystemExit as exit:  # argparse: as the interpreter would treat sys.exit
            code = exit.code
            status = code if isinstance(code, int) else (0 if code is None else 1)
            if not isinstance(code, int) and code is not None:
                print(code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()  # what the interpreter prints for an uncaught exception
        status = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status if isinstance(status, int) else 1)


def _serve() -> None:
    _preload()
    for line in sys.stdin:
        request = json.loads(line)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            pid = os.fork()
            if pid == 0:
                _child(request, out.fileno(), err.fileno())
            pidfd = os.pidfd_open(pid)
            try:
                ready, _, _ = select.select([pidfd], [], [], request["timeout"])
                if not ready:
                    os.kill(pid, signal.SIGKILL)
                _, wait_status = os.waitpid(pid, 0)
            finally:
                os.close(pidfd)
            status = os.waitstatus_to_exitcode(wait_status) if ready else None
            out.seek(0)
            err.seek(0)
            answer = {
                "status": status,
                "stdout": out.read().decode("utf-8", "replace"),
                "stderr": err.read().decode("utf-8", "replace"),
            }
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
