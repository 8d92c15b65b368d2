"""The README's "Sender authentication" section, run: its rules and config load, its
`smtpfilter test` example prints exactly what the README shows (on the corpus's forged bank mail,
against the test DNS server), and its header is that output folded as we send it; the shipped
example rules load."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import textwrap

import yaml

from smtpfilter.config.settings import config_from_mapping, shipped_rules_dir
from smtpfilter.config.yamlfile import load_text
from smtpfilter.core.wire import fold_header
from smtpfilter.engine.rules import load_rules
from tests.support import corpus
from tests.support.service import REPO, child_env

SECTION = (REPO / "README.md").read_text().split("## Sender authentication: SPF, DKIM, DMARC\n")[1]
SECTION = SECTION.split("\n## ")[0]
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", SECTION, re.S)


def block(kind: str, index: int = 0) -> str:
    return [text for k, text in BLOCKS if k == kind][index]


def test_the_readme_config_and_rules_load(tmp_path):
    text = block("yaml")
    data = yaml.safe_load(text)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"rules": data["rules"]}))
    mapping = load_text(yaml.safe_dump({"authentication": data["authentication"],
                                        "rules": ["rules.yaml"]}), "smtpfilter.yaml")
    config = config_from_mapping(mapping, tmp_path, "smtpfilter.yaml")
    assert config.authentication.authserv_id == "mx.example.org"
    ruleset = load_rules(config.rules)
    assert [(r.name, r.kind) for r in ruleset.rules] == [
        ("SPF_FAIL", "spf"), ("DKIM_BROKEN", "dkim"), ("DMARC_REJECT", "dmarc")
    ]


def test_the_shipped_example_loads_and_never_rejects():
    ruleset = load_rules([shipped_rules_dir() / "examples" / "auth.yaml"])
    assert {r.kind for r in ruleset.rules} == {"spf", "dkim", "dmarc"}
    assert all(r.action is None or r.action.value in ("tag", "quarantine") for r in ruleset.rules)


async def test_the_readme_smtpfilter_test_example(tmp_path, dns_server):
    console = block("console")
    command, *expected = console.rstrip("\n").split("\n")
    assert command == "$ smtpfilter test --config /etc/smtpfilter/smtpfilter.yaml forged.eml"
    shutil.copy(corpus.CORPUS / "23-forged-dmarc.eml", tmp_path / "forged.eml")
    shutil.copy(shipped_rules_dir() / "examples" / "auth.yaml", tmp_path / "auth.yaml")
    config = tmp_path / "smtpfilter.yaml"
    config.write_text(textwrap.dedent(f"""\
        rules: [auth.yaml]
        authentication: {{authserv_id: mx.example.org}}
        dns: {{nameservers: ["127.0.0.1:{dns_server.port}"]}}
        """))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smtpfilter", "test", "--config", str(config), "forged.eml",
        cwd=tmp_path, env=child_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert out.decode().rstrip("\n").split("\n") == expected
    # The folded header the README shows is that header line as it leaves for 10026.
    header = next(line for line in expected if line.startswith("  header:"))
    name, value = header.split(":   ", 1)[1].split(": ", 1)
    assert fold_header(name, value).decode().replace("\r\n", "\n") == block("")
