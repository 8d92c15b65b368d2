"""Postfix is the oracle for mime_header_checks, nested_header_checks and body_checks: which
line cleanup(8) looks up in which table class (engine.mime.cleanup_view), and what a
``check: header_checks`` rule with those tables decides.

Two independent views of the same messages:
- ``postmap -hmq`` / ``-bmq`` (postmap(1): -h header keys, -b body keys, -m MIME parsing): the
  exact lookup keys, in order; postmap prints empty body lines and cuts nothing.
- a private Postfix whose header_checks, mime_header_checks, nested_header_checks and
  body_checks each WARN every line with their class name: cleanup(8)'s log says which table
  class saw which line, with body_checks_size_limit and line_length_limit applied (the log
  shows 200 characters of a line, non-printables as "?").
Our engine.mime.cleanup_view must agree with both.
"""
from __future__ import annotations

import os
import re
import shutil
import smtplib
import subprocess
import tempfile
from pathlib import Path

import pytest

from smtpfilter.core.wire import to_wire
from smtpfilter.engine.mime import cleanup_view, walk
from smtpfilter.engine.pipeline import observe
from smtpfilter.engine.rules import load_rules
from tests.postfix import instance
from tests.support.mime import attach, context, message, pe_bytes, wire, zip_bytes

# Hand-written messages for the oracle: boundary prefixes, two boundary= parameters, garbage
# headers, 5,000-byte lines, > 50 KB body segments, a digest, dot-stuffing, an epilogue.
CASES_DIR = Path(__file__).resolve().parent / "mime_cases"
POSTMAP = instance.program("postmap")

pytestmark = pytest.mark.postfix


def _built() -> dict[str, bytes]:
    m = message("built", "wire transfer today\n")
    m.add_alternative("<p>wire <b>transfer</b></p>", subtype="html")
    attach(m, pe_bytes(600), "invoice.pdf.exe", "application/x-msdownload")
    attach(m, zip_bytes({"a.js": b"x"}), "a.zip", "application/zip")
    inner = message("inner", "inner\n")
    attach(inner, b"%PDF-1.4", "inner.pdf", "application/pdf")
    m.add_attachment(inner)
    return {"built": m.as_bytes()}


def corpus() -> dict[str, bytes]:
    cases = {path.stem: path.read_bytes() for path in sorted(CASES_DIR.glob("*.txt"))}
    cases.update(_built())
    return cases


CORPUS = corpus()


def _content(raw: bytes) -> bytes:
    """LF lines, as postmap and Postfix's queue file hold them."""
    return raw.replace(b"\r\n", b"\n")


def ours(raw: bytes, **limits) -> list[tuple[str, str]]:
    return list(cleanup_view(walk(to_wire(raw)), **limits))


@pytest.fixture(scope="module")
def postmap_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("postmap")
    (root / "main.cf").write_text("")
    (root / "all.regexp").write_text("/^/ HIT\n")
    return root


def postmap_keys(env: Path, flags: str, raw: bytes) -> list[str]:
    result = subprocess.run([POSTMAP, f"-{flags}q", "-", f"regexp:{env / 'all.regexp'}"],
                            input=_content(raw), capture_output=True, timeout=30,
                            env={**os.environ, "MAIL_CONFIG": str(env)}, check=True)
    out = result.stdout.decode("utf-8", "replace")
    keys = out.split("\tHIT\n")
    assert keys[-1] == ""
    return keys[:-1]


@pytest.mark.parametrize("name", list(CORPUS))
def test_header_keys_are_postmaps(postmap_env, name):
    raw = CORPUS[name]
    expected = postmap_keys(postmap_env, "hm", raw)
    assert [key for cls, key in ours(raw) if cls != "body"] == expected


@pytest.mark.parametrize("name", list(CORPUS))
def test_body_keys_are_postmaps(postmap_env, name):
    raw = CORPUS[name]
    expected = [key for key in postmap_keys(postmap_env, "bm", raw) if key]  # cleanup skips ""
    got = [key for cls, key in ours(raw, body_limit=1 << 30, line_limit=1 << 30) if cls == "body"]
    assert got == expected


# --- the table classes, from a real cleanup(8) --------------------------------------------------
@pytest.fixture(scope="module")
def cleanup_log(tmp_path_factory):
    """Send the whole corpus through a private Postfix once; {case: [(class, logged line)]}."""
    # Not pytest's tmp_path: its parents are 0700, and Postfix's unprivileged daemons must
    # reach their files (as in tests/postfix/conftest.py).
    root = Path(tempfile.mkdtemp(prefix="smtpfilter-mime-oracle-"))
    root.chmod(0o755)
    postfix = instance.Postfix(root)
    port = instance.free_port()
    config = postfix.config_dir
    main_cf = postfix.base_main_cf(relay_port=instance.free_port()) + f"""
header_checks = regexp:{config}/h
mime_header_checks = regexp:{config}/m
nested_header_checks = regexp:{config}/n
body_checks = regexp:{config}/b
defer_transports = smtp
"""
    master = instance.MASTER_CF_DIST.read_text()
    master = re.sub(r"(?m)^smtp\s+inet.*$", f"127.0.0.1:{port} inet n - n - - smtpd", master)
    master = re.sub(r"(?m)^(\S+\s+(unix|inet|fifo)\s+\S+\s+\S+\s+)y", r"\1n", master)
    tables = {"h": "/^/ WARN header\n", "m": "/^/ WARN mime_header\n",
              "n": "/^/ WARN nested_header\n", "b": "/^/ WARN body\n"}
    postfix.write(main_cf, master, tables)
    postfix.start((port,))
    names = list(CORPUS)
    try:
        with smtplib.SMTP("127.0.0.1", port) as client:
            for number, name in enumerate(names, start=1):
                client.sendmail("a@example.org", ["b@example.org"], _content(CORPUS[name]))
                # cleanup logs the message-id line (or "from=" when there is none) last
                postfix.wait_log(r"postfix/qmgr\[\d+\]: \w+: from=<a@example.org>", count=number)
        log = postfix.log()
    finally:
        postfix.stop()
        shutil.rmtree(root, ignore_errors=True)
    by_queue: dict[str, list[tuple[str, str]]] = {}
    pattern = re.compile(r"cleanup\[\d+\]: (\w+): warning: (?:header|body) (.*) from \S+; "
                         r"from=<.*?> to=<.*?> proto=E?SMTP helo=<.*?>: (\w+)$")
    for line in log.splitlines():
        match = pattern.search(line)
        if match:
            by_queue.setdefault(match.group(1), []).append((match.group(3), match.group(2)))
    assert len(by_queue) == len(names), log[-3000:]
    return dict(zip(names, by_queue.values()))


def _as_logged(text: str) -> str:
    """What cleanup's log shows of a key: 200 characters, non-printables as "?"."""
    return "".join(c if " " <= c <= "~" or ord(c) > 127 else "?" for c in text)[:200]


@pytest.mark.parametrize("name", list(CORPUS))
def test_table_classes_are_cleanups(cleanup_log, name):
    logged = [(cls, text) for cls, text in cleanup_log[name]
              if not text.startswith("Received: from [127.0.0.1]")]  # added by the test smtpd
    got = [(cls, _as_logged(key)) for cls, key in ours(CORPUS[name])]
    assert got == [(cls, _as_logged(text)) for cls, text in logged]


# --- decisions: the same tables in cleanup(8) and in check: header_checks ---------------------
HEADER_TABLE = r"""
/^Subject: pass-me/ PASS
/^Content-Type:.*x-msdownload/ REJECT 5.7.1 part type
/^Subject: inner secret/ REJECT 5.7.1 nested subject
"""
BODY_TABLE = r"""
/^TVqQAAMAAAAEAAAA/ REJECT 5.7.1 executable body line
/wire transfer today/ REJECT 5.7.1 fraud
/needle-/ REJECT 5.7.1 needle
"""


def _cases() -> dict[str, bytes]:
    cases = {}
    exe = bytearray(pe_bytes(600))
    exe[2:16] = b"\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00"  # a real MZ header start
    cases["exe-body"] = attach(message("exe"), bytes(exe), "a.dat").as_bytes()
    m = message("b64", "x\n")
    m.set_content("please do the wire transfer today\n", cte="base64")
    cases["encoded-text"] = m.as_bytes()
    cases["part-type"] = attach(message("pt"), b"x", "a.bin", "application/x-msdownload").as_bytes()
    m = message("outer", "see attached\n")
    m.add_attachment(message("inner secret", "inner\n"))
    cases["nested-subject"] = m.as_bytes()
    late = message("late", "y" * 70 + "\n")
    late.set_content(("y" * 70 + "\n") * 900 + "needle-late\n", cte="7bit")
    cases["needle-after-limit"] = late.as_bytes()
    late.add_attachment("needle-early\n", filename="n.txt", cte="7bit")
    cases["needle-in-next-part"] = late.as_bytes()
    cases["pass"] = message("pass-me", "needle-x\n").as_bytes()
    cases["clean"] = message("clean", "nothing\n").as_bytes()
    # A Subject in a multipart part's headers: mime_header_checks' class, not nested's.
    cases["part-subject"] = (
        b"From: a@example.org\nSubject: part subject\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="P"\n\n--P\nSubject: pass-me\n'
        b"Content-Type: text/plain\n\nhello\n--P--\n")
    return cases


CASES = _cases()


def cleanup_verdicts(settings: dict[str, str], tables: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Every case through a private Postfix whose main.cf has ``settings`` (table files in its
    config directory, named by ``tables``): {case: ("accept"|"reject", reply)}."""
    root = Path(tempfile.mkdtemp(prefix="smtpfilter-mime-decisions-"))
    root.chmod(0o755)
    postfix = instance.Postfix(root)
    port = instance.free_port()
    config = postfix.config_dir
    main_cf = postfix.base_main_cf(relay_port=instance.free_port()) + "".join(
        f"{key} = {value.format(config=config)}\n" for key, value in settings.items()
    ) + "defer_transports = smtp\n"
    master = instance.MASTER_CF_DIST.read_text()
    master = re.sub(r"(?m)^smtp\s+inet.*$", f"127.0.0.1:{port} inet n - n - - smtpd", master)
    master = re.sub(r"(?m)^(\S+\s+(unix|inet|fifo)\s+\S+\s+\S+\s+)y", r"\1n", master)
    postfix.write(main_cf, master, tables)
    postfix.start((port,))
    verdicts = {}
    try:
        for name, raw in CASES.items():
            with smtplib.SMTP("127.0.0.1", port) as client:
                try:
                    client.sendmail("a@example.org", ["b@example.org"], raw)
                    verdicts[name] = ("accept", "")
                except smtplib.SMTPDataError as error:
                    verdicts[name] = ("reject", error.smtp_error.decode())
    finally:
        postfix.stop()
        shutil.rmtree(root, ignore_errors=True)
    return verdicts


@pytest.fixture(scope="module")
def postfix_verdicts():
    return cleanup_verdicts(
        {"header_checks": "regexp:{config}/header_checks", "body_checks": "regexp:{config}/body_checks"},
        {"header_checks": HEADER_TABLE, "body_checks": BODY_TABLE},
    )


@pytest.fixture(scope="module")
def ruleset(tmp_path_factory):
    path = tmp_path_factory.mktemp("tables")
    (path / "header_checks").write_text(HEADER_TABLE)
    (path / "body_checks").write_text(BODY_TABLE)
    (path / "rules.yaml").write_text(
        "rules:\n  - name: POSTFIX_CHECKS\n    check: header_checks\n"
        "    table: regexp:header_checks\n    body_table: regexp:body_checks\n")
    return load_rules([path / "rules.yaml"])


async def our_verdict(ruleset, raw: bytes) -> tuple[str, str]:
    for _, finding in await observe(ruleset, context(wire(raw))):
        if finding is not None and finding.action is not None and finding.code == "REJECT":
            return "reject", finding.text or ""
    return "accept", ""


@pytest.mark.parametrize("name", list(CASES))
async def test_same_verdict_as_cleanup(postfix_verdicts, ruleset, name):
    ours = await our_verdict(ruleset, CASES[name])
    theirs = postfix_verdicts[name]
    assert ours[0] == theirs[0], (ours, theirs)
    if ours[0] == "reject":
        assert theirs[1].endswith(ours[1].split(" ", 1)[1])  # the table's text, as Postfix says it


def test_the_cases_cover_both_outcomes(postfix_verdicts):
    assert {v[0] for v in postfix_verdicts.values()} == {"accept", "reject"}
    assert postfix_verdicts["encoded-text"][0] == "accept"  # body_checks never decode
    assert postfix_verdicts["needle-after-limit"][0] == "accept"  # body_checks_size_limit
    assert postfix_verdicts["needle-in-next-part"][0] == "reject"  # a new body segment


# --- import-header-checks --kind: the rules it writes decide as cleanup(8) does ----------------
MIME_TABLE = r"""
/^Content-Type:.*x-msdownload/ REJECT 5.7.1 part type
/^Subject: inner secret/ REJECT 5.7.1 not a MIME header
"""
NESTED_TABLE = r"""
/^Subject: inner secret/ REJECT 5.7.1 nested subject
/^Subject: pass-me/ REJECT 5.7.1 not nested
"""


@pytest.fixture(scope="module")
def class_verdicts():
    """header_checks empty; mime_header_checks, nested_header_checks and body_checks each
    their own table."""
    return cleanup_verdicts(
        {"header_checks": "", "mime_header_checks": "regexp:{config}/mime",
         "nested_header_checks": "regexp:{config}/nested", "body_checks": "regexp:{config}/body"},
        {"mime": MIME_TABLE, "nested": NESTED_TABLE, "body": BODY_TABLE},
    )


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from smtpfilter.cli import main

    path = tmp_path_factory.mktemp("imported")
    files = []
    for kind, table in (("mime_header", MIME_TABLE), ("nested_header", NESTED_TABLE),
                        ("body", BODY_TABLE)):
        (path / kind).write_text(table)
        out = path / f"{kind}.yaml"
        assert main(["import-header-checks", "--kind", kind, "--prefix", kind.upper() + "_",
                     "-o", str(out), f"regexp:{path / kind}"]) == 0
        files.append(out)
    return load_rules(files)


@pytest.mark.parametrize("name", list(CASES))
async def test_imported_table_classes_decide_as_cleanup(class_verdicts, imported, name):
    decision = None
    for rule, finding in await observe(imported, context(wire(CASES[name]))):
        if finding is not None and rule.action is not None:
            decision = ("reject", rule.text or "") if rule.action.value == "reject" else None
            break
    ours = decision or ("accept", "")
    theirs = class_verdicts[name]
    assert ours[0] == theirs[0], (ours, theirs)
    if ours[0] == "reject":
        assert theirs[1].endswith(ours[1].split(" ", 1)[1])


def test_the_class_cases_cover_each_class(class_verdicts):
    assert class_verdicts["part-type"][0] == "reject"  # mime_header_checks
    assert class_verdicts["nested-subject"] == ("reject", "5.7.1 nested subject")  # nested
    # A top-level Subject is in neither class: only the body's needle line rejects it.
    assert class_verdicts["pass"][1].endswith("5.7.1 needle")
    assert class_verdicts["exe-body"][0] == "reject"  # body_checks
