"""pipe mode's last resort: whatever goes wrong, exit 75 and one line, never a traceback.

pipe(8) appends our stderr to its log line and its defer notice (pipe(8), DIAGNOSTICS); a Python
traceback there is a page of code in the admin's mail.log for every deferred message."""

from __future__ import annotations

import io

from smtpfilter.frontdoors.pipe import EX_TEMPFAIL, run


class BrokenStdin(io.RawIOBase):
    """stdin that fails as a vanished pipe or a bad disk does."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        raise OSError(5, "Input/output error")


def test_an_unexpected_error_is_one_line_and_a_deferral(tmp_path):
    config = tmp_path / "c.yaml"
    (tmp_path / "r.yaml").write_text("rules: []\n")
    config.write_text("rules: [r.yaml]\n")
    stdout, stderr = io.StringIO(), io.StringIO()
    status = run([f"--config={config}", "--sender=a@example.org", "--", "b@example.org"],
                 io.BufferedReader(BrokenStdin()), stdout, stderr)
    assert status == EX_TEMPFAIL
    assert stdout.getvalue().startswith("4.3.0 ")  # Postfix keeps the mail and retries
    [line] = stderr.getvalue().splitlines()
    assert line.startswith("smtpfilter pipe: OSError: [Errno 5] Input/output error (at "), line
