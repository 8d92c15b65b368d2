"""README commands run as the README shows them (paths aside): installing the configuration."""

from __future__ import annotations

import subprocess
import sys

from smtpfilter.config.settings import shipped_rules_dir
from tests.support.readme import shell_block, substitute


def test_step_2_copies_the_rules_once_and_keeps_edits_when_run_again(tmp_path):
    # Issue 12: "cp -r .../rules /etc/smtpfilter/rules" put a second copy inside the first when
    # run again (rules/rules/*.yaml, which the loader does not read: edits there do nothing).
    etc = tmp_path / "etc" / "smtpfilter"
    script = substitute(shell_block("check-config --config /etc/smtpfilter/smtpfilter.yaml"), {
        "/etc/smtpfilter": str(etc),
        "/opt/smtpfilter/share/smtpfilter/rules": str(shipped_rules_dir()),
        "/opt/smtpfilter/bin/smtpfilter": f"{sys.executable} -m smtpfilter",
    })
    shipped = sorted(path.name for path in shipped_rules_dir().glob("*.yaml"))

    def run() -> subprocess.CompletedProcess:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    first = run()
    assert "ok; listen 127.0.0.1:10025, forward 127.0.0.1:10026" in first.stdout
    assert sorted(path.name for path in (etc / "rules").iterdir()) == shipped
    edited = etc / "rules" / shipped[0]
    edited.write_text(edited.read_text().replace("older_than: 30d", "older_than: 60d"))

    run()
    assert sorted(path.name for path in (etc / "rules").iterdir()) == shipped  # nothing nested
    assert "older_than: 60d" in edited.read_text()  # the admin's edit survives
    for name in shipped[1:]:
        assert (etc / "rules" / name).read_bytes() == (shipped_rules_dir() / name).read_bytes()
