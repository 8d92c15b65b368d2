"""The operator side of rate limits: the README's examples and commands run as written
(``ratelimit show`` / ``reset`` against a real redis-server, ``policy`` as a daemon),
check-config's warnings, and mistakes answered on one line."""

from __future__ import annotations

import asyncio
import re
import shlex
import textwrap
from pathlib import Path

import pytest
import yaml

from smtpfilter.cli import EX_CONFIG, EX_USAGE, main
from smtpfilter.engine.state import Limit, RedisStore, new_ticket
from tests.support.readme import shell_block
from tests.support.redisserver import redis_server  # noqa: F401  (fixture)
from tests.support.service import REPO, FilterProcess, free_port

README = (REPO / "README.md").read_text()
_START = README.index("## Rate limits\n")
SECTION = README[_START:README.index("\n## ", _START + 1)]  # up to the next section
YAML_BLOCKS = re.findall(r"```yaml\n(.*?)```", SECTION, re.S)


def readme_commands() -> list[str]:
    """The section's commands: ``ratelimit show``/``reset``, then ``policy``."""
    blocks = [shell_block("smtpfilter ratelimit show"), shell_block("smtpfilter policy --config")]
    assert all(block in SECTION for block in blocks), "a block moved out of the Rate limits section"
    return [line for block in blocks for line in block.splitlines() if line.strip()]


CONFIG = "/etc/smtpfilter/smtpfilter.yaml"


def write_setup(tmp_path: Path, url: str) -> Path:
    """The README's rules and settings, with its Redis URL pointing at the test server."""
    first, *others = (yaml.safe_load(block) for block in YAML_BLOCKS)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"rules": first["rules"]}))
    settings: dict = {"rules": ["rules.yaml"]}
    for block in others:
        settings.update(block)
    settings["state"] = {**settings["state"], "redis": url}
    settings["policy_service"] = {**settings["policy_service"], "listen": f"127.0.0.1:{free_port()}"}
    path = tmp_path / "smtpfilter.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_the_readme_has_the_issue_shapes_and_commands():
    assert "key: client_ip" in YAML_BLOCKS[0] and "burst: 20" in YAML_BLOCKS[0]
    assert [shlex.split(c)[:2] for c in readme_commands()] == [
        ["smtpfilter", "ratelimit"], ["smtpfilter", "ratelimit"], ["smtpfilter", "policy"]]


def test_readme_commands_against_redis(tmp_path, redis_server, capsys):  # noqa: F811
    config = write_setup(tmp_path, redis_server.url)
    assert main(["check-config", "--no-connect", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert f"rate limits: counted in {redis_server.url}" in out and "warning" not in err

    async def count_one() -> None:
        store = RedisStore(redis_server.url)
        ticket = new_ticket("CLIENT_RATE:81.2.69.10")
        await store.reserve(ticket, Limit(30, 60.0))
        await store.confirm([ticket])
        await store.close()

    asyncio.run(count_one())
    outputs = []
    for command in readme_commands():
        argv = [str(config) if arg == CONFIG else arg for arg in shlex.split(command)[1:]]
        if argv[0] == "policy":
            port = yaml.safe_load(config.read_text())["policy_service"]["listen"].split(":")[1]
            process = FilterProcess(config, command="policy")  # --config is added by it
            process.start()
            try:
                process.wait_log(rf"listening on 127\.0\.0\.1:{port}")
                process.wait_log(r"policy service: 2 ratelimit rules, counting at end-of-message")
            finally:
                assert process.stop() == 0
                process.close()
            continue
        assert main(argv) == 0, command
        outputs.append(capsys.readouterr().out)
    show, reset = outputs
    assert show.startswith("CLIENT_RATE:81.2.69.10: 1/30 in the last 1m (client_ip 30/1m)")
    assert re.search(r"\n +\d+\.\ds ago\n", show)
    assert reset == "CLIENT_RATE:81.2.69.10: reset\n"
    assert main(["ratelimit", "show", "--config", str(config), "CLIENT_RATE:81.2.69.10"]) == 0
    assert "0/30" in capsys.readouterr().out


def test_show_normalises_the_value_as_the_rule_counts_it(tmp_path, redis_server, capsys):  # noqa: F811
    config = write_setup(tmp_path, redis_server.url)
    assert main(["ratelimit", "show", "-c", str(config), "SENDER_BURST:Alice@Example.ORG"]) == 0
    assert capsys.readouterr().out.startswith("SENDER_BURST:alice@example.org: 0/100")


def test_redis_down_is_one_line_not_a_traceback(tmp_path, capsys):
    config = write_setup(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    assert main(["ratelimit", "show", "-c", str(config), "CLIENT_RATE:81.2.69.10"]) == 69
    err = capsys.readouterr().err
    assert err.startswith("smtpfilter: ") and "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("key", ["CLIENT_RATE", "NOPE:1", "CLIENT_RATE:"])
def test_a_bad_key_is_a_usage_error(tmp_path, capsys, key):
    config = write_setup(tmp_path, "redis://127.0.0.1:9/0")
    assert main(["ratelimit", "reset", "-c", str(config), key]) == EX_USAGE
    err = capsys.readouterr().err
    assert "expected RULE:VALUE with a ratelimit rule (CLIENT_RATE, SENDER_BURST)" in err


def test_check_config_warns_about_memory_counters_and_sasl_user(tmp_path, capsys):
    (tmp_path / "rules.yaml").write_text(textwrap.dedent("""
        rules:
          - {name: CLIENT_RATE, check: ratelimit, key: client_ip, rate: 30/1m, action: tempfail}
          - {name: SASL_RATE, check: ratelimit, key: sasl_user, rate: 100/1d, action: reject}
        """))
    config = tmp_path / "c.yaml"
    config.write_text("rules: [rules.yaml]\n")
    assert main(["check-config", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert "with serve --workers N every limit is multiplied by N" in err
    assert "rules.yaml:4: rule SASL_RATE: key sasl_user is known to the policy service" in err


@pytest.mark.parametrize("text, problem", [
    ("state: {redis: 'http://127.0.0.1'}\n", "c.yaml:2: state.redis: 'http://127.0.0.1': expected redis://"),
    ("state: {redis: 'redis://127.0.0.1:99999/0'}\n", "c.yaml:2: state.redis: 'redis://127.0.0.1:99999/0': Port out of range"),
    ("state: {redis: 'redis://127.0.0.1/x'}\n", "the database after the host is a number"),
    ("state: {redis: 'redis://127.0.0.1:6379/0', timeout: 2m}\n", "c.yaml:2: state: timeout (120s) must be shorter than limits.scan_timeout"),
    ("state: {hold: 1m}\n", "hold (60s) must be longer than limits.scan_timeout + limits.data_timeout"),
    ("state: {on_error: fail}\n", "state.on_error: 'fail' is not one of ignore, tempfail"),
    ("policy_service: {count_at: data}\n", "policy_service.count_at: 'data' is not one of"),
    ("policy_service: {listen: nowhere}\n", "policy_service.listen: 'nowhere': missing port"),
])
def test_config_mistakes_are_one_line_each(tmp_path, capsys, text, problem):
    config = tmp_path / "c.yaml"
    config.write_text("rules: []\n" + text)
    assert main(["check-config", "--config", str(config)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert problem in err and "Traceback" not in err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "policy" in out and "ratelimit" in out
    with pytest.raises(SystemExit):
        main(["ratelimit", "show", "--help"])
    assert "RULE:VALUE" in capsys.readouterr().out


def test_the_shipped_example_loads_and_is_not_loaded_by_default(capsys):
    from smtpfilter.config.settings import shipped_rules_dir
    from smtpfilter.engine.rules import load_rules

    example = load_rules([shipped_rules_dir() / "examples" / "ratelimit.yaml"])
    assert [r.name for r in example.rules] == ["CLIENT_RATE", "SENDER_BURST", "SASL_RATE"]
    assert all(r.kind != "ratelimit" for r in load_rules([shipped_rules_dir()]).rules)
