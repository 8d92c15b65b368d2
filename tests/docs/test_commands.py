"""README blocks that need neither a Postfix instance nor root: the Quick start, the install
into a virtual environment of its own, the systemd step and the bench commands, each taken
from the README and run (tests/docs/test_readme.py checks that every block has its test)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from smtpfilter import __version__
from smtpfilter.config.settings import load_config, shipped_rules_dir
from smtpfilter.engine.rules import load_rules
from tests.docs.test_readme import ci_packages
from tests.support.readme import README, run_block, shell_block, substitute
from tests.support.service import REPO, free_port, poll


def require(*programs: str) -> None:
    """Skip without the programs, but fail under CI=true, where .ci/run installs them."""
    absent = [name for name in programs if shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin") is None]
    if not absent:
        return
    reason = f"{', '.join(absent)} not installed"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}: .ci/run must install it")
    pytest.skip(reason)


def bash(script: str, *, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_block(script, cwd=cwd, timeout=timeout)


def text_blocks_after(marker: str) -> list[str]:
    """The ```text blocks after ``marker`` (a block's text), up to the next ```sh block or section."""
    text = README.read_text()
    start = text.index(marker)
    end = min(i for i in (text.find("\n```sh\n", start + len(marker)), text.find("\n## ", start))
              if i != -1)
    return re.findall(r"(?ms)^```text\n(.*?)^```", text[start:end])


def shape(line: str) -> re.Pattern[str]:
    """A README sample log line as a pattern: its size=, message-id= (swaks makes one from the
    time and host) and delay= may differ."""
    variable = r"(size=\d+|message-id=<[^>]*>|delay=[\d.]+)"
    patterns = {"size": r"size=\d+", "message-id": r"message-id=<[^>]*>", "delay": r"delay=[\d.]+"}
    parts = re.split(variable, line)  # text, field, text, field, ... text
    return re.compile("".join(re.escape(part) if i % 2 == 0 else patterns[part.split("=")[0]]
                              for i, part in enumerate(parts)))


def test_quick_start_sends_one_message_through_the_filter():
    """The run command and the "send one message through it" block, as a user runs them.

    The run command's first two steps (make .venv, install this checkout into it) are those
    .ci/run has done before the tests start (the README's test command, checked word for word
    by tests/docs/test_readme.py): creating and installing a second venv here would need the
    package index, which tests do not reach. Its last step, ``.venv/bin/smtpfilter serve``, runs
    as written, on free ports instead of 10025/10026 (a real Postfix may hold those). As root
    (CI), smtp-sink gets ``-u nobody``, as the README says."""
    require("smtp-sink", "swaks")
    run = shell_block("&& .venv/bin/smtpfilter serve").strip()
    try_it = shell_block("/usr/sbin/smtp-sink -d")
    create, install, serve = run.split(" && ")
    assert create == "python3 -m venv .venv" and shlex.split(install) == [".venv/bin/pip", "install", "-e", "."]
    ci = (REPO / ".ci" / "run").read_text()
    assert f"{create} && .venv/bin/pip install -q -e '.[test]' && " in ci  # the same venv, this checkout

    # What the README says the defaults are, and so the ports the try-it block uses.
    defaults = load_config(None)
    assert "(listens on 127.0.0.1:10025,\nre-injects to 127.0.0.1:10026)" in README.read_text()
    assert (str(defaults.listen), str(defaults.forward)) == ("127.0.0.1:10025", "127.0.0.1:10026")

    filter_port, sink_port = free_port(), free_port()
    root = Path(tempfile.mkdtemp(prefix="smtpfilter-quickstart-"))
    root.chmod(0o777)  # smtp-sink -u nobody writes sink/ here
    log = root / "filter.log"
    venv_bin = Path(sys.prefix) / "bin"
    argv = shlex.split(substitute(serve, {".venv/bin/": f"{venv_bin}/"}))
    argv += ["--listen", f"127.0.0.1:{filter_port}", "--forward", f"127.0.0.1:{sink_port}"]
    with log.open("w") as stderr:
        process = subprocess.Popen(argv, cwd=root, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
    try:
        poll(lambda: "listening on" in log.read_text() or process.poll() is not None, 60,
             "the filter's 'listening on' line")
        assert process.poll() is None, log.read_text()
        replacements = {"127.0.0.1:10025": f"127.0.0.1:{filter_port}",
                        "127.0.0.1:10026": f"127.0.0.1:{sink_port}"}
        if os.geteuid() == 0:
            replacements["/usr/sbin/smtp-sink "] = "/usr/sbin/smtp-sink -u nobody "
        script = substitute(try_it, replacements)
        # smtp-sink must listen before swaks connects: the user's terminal gives it the time
        # it takes to type the next line; here, wait for its port.
        script = script.replace(" &\n", " &\n"
                                f"until (exec 3<>/dev/tcp/127.0.0.1/{sink_port}) 2>/dev/null; do sleep 0.05; done\n", 1)
        done = bash(script, cwd=root)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        process.terminate()
        process.wait(timeout=30)
    output, filter_log = done.stdout, log.read_text()

    # swaks: the 250 after the message, and the dialogue's end.
    assert re.search(r"(?m)^ -> \.\n<-  250 2\.0\.0 Ok$", output), output
    # The README's samples, numbers aside: the filter's line, and the headers as they arrived.
    log_sample, headers_sample = text_blocks_after(try_it + "```\n")
    assert shape(log_sample.strip()).search(filter_log), (log_sample, filter_log)
    message = output[output.index("Received: from"):]
    assert headers_sample in message, (headers_sample, message)
    assert "X-Client-Addr: 127.0.0.1" in output  # smtp-sink's own lines, as the README says
    shutil.rmtree(root, ignore_errors=True)


def test_step_1_installs_what_ci_installs_and_reports_the_version():
    """Step 1: the apt line names only packages .ci/run installs (so the tests that need them
    ran), and the installed program answers --version with the package's version.

    The ``pip install /path/to/smtpfilter`` of a non-editable checkout builds a wheel with
    setuptools from the package index, which tests do not reach; this test runs --version of
    the same program installed by .ci/run (editable) and compares the lines word for word, so
    an edit of them fails here and is looked at."""
    apt, venv, pip, version = shell_block("apt install python3-venv").strip().splitlines()
    assert shlex.split(apt)[:2] == ["apt", "install"]
    assert set(shlex.split(apt)[2:]) <= ci_packages()
    assert venv == "python3 -m venv /opt/smtpfilter"
    assert shlex.split(pip, comments=True) == ["/opt/smtpfilter/bin/pip", "install", "/path/to/smtpfilter"]
    done = subprocess.run(shlex.split(substitute(version, {"/opt/smtpfilter/bin/": f"{sys.prefix}/bin/"})),
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, f"smtpfilter {__version__}\n"), done


def test_step_3_enables_the_unit():
    """Step 3 against a scratch root: the unit is copied where the README says and ``systemctl
    --root=DIR enable`` (which needs no running systemd) wires it into multi-user.target.
    ``daemon-reload``, ``--now`` and ``status`` need systemd as PID 1, which a CI container does
    not have: those lines are compared word for word; tests/integration/test_systemd.py verifies
    the unit itself with systemd-analyze and runs the server under its socket activation."""
    require("systemctl")
    cp, reload, enable, status = shell_block("systemctl enable --now smtpfilter").strip().splitlines()
    assert (reload, enable) == ("systemctl daemon-reload", "systemctl enable --now smtpfilter")
    assert status.split("#")[0].strip() == "systemctl status smtpfilter"
    assert "Status: \"0 sessions, 11 rules" in status  # the shipped rules, counted below
    root = Path(tempfile.mkdtemp(prefix="smtpfilter-systemd-"))
    try:
        (root / "etc" / "systemd" / "system").mkdir(parents=True)
        done = bash(substitute(cp, {"/etc/systemd/system/": f"{root}/etc/systemd/system/"}), cwd=REPO)
        assert done.returncode == 0, done.stderr
        done = bash(substitute(enable, {"enable --now": f"--root={root} enable"}), cwd=REPO)
        assert done.returncode == 0, done.stderr
        link = root / "etc/systemd/system/multi-user.target.wants/smtpfilter.service"
        assert os.readlink(link) == "/etc/systemd/system/smtpfilter.service"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert len(load_rules([shipped_rules_dir()]).rules) == 11


def test_the_bench_commands():
    """The Performance block. Both lines together take minutes of both cores (``--quick``
    alone took 146 s on 2 loaded cores), too long for CI: the ``--quick`` line runs as written but
    narrowed to one workload and two peers (``--workloads 10k --peers baseline,smtpfilter``,
    a few seconds: the whole harness, smtp-source → smtpfilter → smtp-sink, with its table),
    and the full line runs with ``--help`` and with a typo'd workload, which must be one
    usage line before anything starts."""
    require("smtp-source", "smtp-sink")
    quick, full = (line.split("#")[0].strip() for line in shell_block("bench/run.py --quick").strip().splitlines())
    assert (quick, full) == (".venv/bin/python bench/run.py --quick", ".venv/bin/python bench/run.py")
    python = {".venv/bin/python": sys.executable}

    done = bash(substitute(quick, python) + " --workloads 10k --peers baseline,smtpfilter", cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = re.findall(r"(?m)^round 1 +10k (baseline|smtpfilter) +[\d.]+ msg/s .* lost (\d+)$", done.stderr)
    assert sorted(rows) == [("baseline", "0"), ("smtpfilter", "0")], done.stderr

    done = bash(substitute(full, python) + " --help", cwd=REPO)
    assert done.returncode == 0 and "--quick" in done.stdout, done.stdout + done.stderr
    done = bash(substitute(full, python) + " --workloads 10k,10m", cwd=REPO)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines()[-1] == (
        "run.py: error: unknown workload 10m (known: 10k, 1m, 25m, cpu, 10k-attach, 1m-attach, 25m-attach)")
    assert "Traceback" not in done.stderr
