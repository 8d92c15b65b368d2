"""Every subcommand's --help: a one-line description in ``smtpfilter --help``, a description
of its own, and help for every argument (issue 13). Walks the parser the man page is made from,
so a new command or option without help fails here."""

from __future__ import annotations

import argparse

import pytest

from smtpfilter import cli


def commands(parser: argparse.ArgumentParser, prefix: str = "smtpfilter"):
    """(name, parser, summary) for every subcommand, nested ones (quarantine list) included."""
    for action in parser._actions:  # argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub, summaries.get(name)
                yield from commands(sub, f"{prefix} {name}")


ALL = list(commands(cli.build_parser()))


def test_every_command_is_walked():
    names = {name for name, _, _ in ALL}
    assert {"smtpfilter check-config", "smtpfilter quarantine show", "smtpfilter scan",
            "smtpfilter ratelimit reset", "smtpfilter pipe"} <= names


@pytest.mark.parametrize(("name", "parser", "summary"), ALL, ids=[n for n, _, _ in ALL])
def test_each_command_and_argument_has_help(name, parser, summary):
    assert summary and "\n" not in summary, f"{name}: no one-line summary in the parent's --help"
    assert parser.description, f"{name}: no description for its own --help"
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        assert action.help and action.help != argparse.SUPPRESS, (
            f"{name}: {'/'.join(action.option_strings) or action.dest} has no help")


@pytest.mark.parametrize(("name", "parser", "summary"), ALL, ids=[n for n, _, _ in ALL])
def test_config_help_names_the_default_file(name, parser, summary):
    for action in parser._actions:
        if "--config" in action.option_strings:
            assert "/etc/smtpfilter/smtpfilter.yaml when it exists" in action.help


def test_operator_commands_take_config():
    takes = {name for name, parser, _ in ALL
             if any("--config" in a.option_strings for a in parser._actions)}
    for name in ("serve", "milter", "check-config", "test", "scan", "doctor", "policy",
                 "quarantine list", "quarantine show", "quarantine release", "quarantine delete",
                 "ratelimit show", "ratelimit reset"):
        assert f"smtpfilter {name}" in takes


def test_the_default_config_file_is_used_when_present(tmp_path, monkeypatch, capsys):
    default = tmp_path / "smtpfilter.yaml"
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", default)
    assert cli.main(["check-config", "--no-connect"]) == 0
    assert capsys.readouterr().out.startswith("built-in defaults: ok; ")

    default.write_text("hostname: from-the-default-file.example\n")
    assert cli.main(["check-config", "--no-connect"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"{default}: ok; listen 127.0.0.1:10025, forward 127.0.0.1:10026")
    assert "hostname from-the-default-file.example" in first


@pytest.mark.parametrize(("name", "parser", "summary"),
                         [c for c in ALL if c[0] != "smtpfilter pipe"],  # its own parser's help
                         ids=[n for n, _, _ in ALL if n != "smtpfilter pipe"])
def test_help_prints_the_description_and_exits_0(name, parser, summary, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main([*name.split()[1:], "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {name}")
    assert " ".join(parser.description.split()[:4]) in " ".join(out.split())
