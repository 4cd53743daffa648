"""The command line's own rules, read off the real parser: every flag and verb says what it is
for, every command group without a verb lists its verbs, every list command takes the same
``--format``, and ``--version`` prints the installed version (lrobridge.cli)."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import pathlib
import tomllib
from collections.abc import Iterator

import pytest

from lrobridge.cli import output
from lrobridge.cli.main import build_parser, main

ROOT = pathlib.Path(__file__).resolve().parents[2]
LIST_COMMANDS = [
    ("watches", "list"),
    ("quarantine", "list"),
    ("webhooks", "list"),
    ("webhooks", "deliveries"),
]


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, (*path, name))


def _groups() -> list[tuple[tuple[str, ...], list[str]]]:
    groups = []
    for path, parser in _commands(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                groups.append((path, list(action.choices)))
    return groups


def test_every_flag_argument_and_verb_of_every_command_has_help_text() -> None:
    missing = []
    for path, parser in _commands(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {choice.dest for choice in action._choices_actions if choice.help}
                missing += [f"{' '.join((*path, v))}" for v in action.choices if v not in helped]
            elif not action.help or action.help == argparse.SUPPRESS:
                name = "/".join(action.option_strings) or action.dest
                missing.append(f"{' '.join(path) or 'lrobridge'} {name}")
    assert missing == []


@pytest.mark.parametrize(("path", "verbs"), _groups(), ids=lambda v: " ".join(v) or "lrobridge")
def test_a_command_group_without_a_verb_lists_the_verbs_that_exist(
    path: tuple[str, ...], verbs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(list(path))
    assert exited.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(" ".join(("lrobridge", *path)) + ": error: name a ")
    assert last.endswith(", ".join(verbs))


def test_every_list_command_takes_the_same_format_flag() -> None:
    commands = dict(_commands(build_parser()))
    # Every `... list` verb is a list command, whatever group it is in.
    assert {path for path in commands if path[-1:] == ("list",)} <= set(LIST_COMMANDS)
    flags = []
    for path in LIST_COMMANDS:
        (flag,) = [a for a in commands[path]._actions if "--format" in a.option_strings]
        flags.append((tuple(flag.choices or ()), flag.default, flag.help))
    assert flags == [(("table", "json"), "table", flags[0][2])] * len(LIST_COMMANDS)


def test_version_prints_the_version_of_the_installed_distribution(
    capsys: pytest.CaptureFixture[str],
) -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert importlib.metadata.version("lrobridge") == declared
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"lrobridge {declared}\n"


def test_a_table_aligns_columns_shows_details_and_json_is_the_response_unchanged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    response = {
        "things": [
            {"name": "things/a", "state": "ACTIVE", "tags": ["x", "y"], "note": "two\nlines"},
            {"name": "things/longer", "state": "FAILED", "tags": [], "note": None},
        ],
        "nextPageToken": "t",
    }
    columns: list[output.Column] = [
        ("NAME", lambda t: t["name"]),
        ("STATE", lambda t: t["state"]),
        ("TAGS", lambda t: t["tags"]),
        ("NOTE", lambda t: t["note"]),
    ]
    output.print_listing(
        response, "things", columns, "table", details=lambda t: [f"detail of {t['name']}"]
    )
    assert capsys.readouterr().out.splitlines() == [
        "NAME           STATE   TAGS  NOTE",
        "things/a       ACTIVE  x,y   two lines",
        "  detail of things/a",
        "things/longer  FAILED  -     -",
        "  detail of things/longer",
        "(2 shown; there are more)",
    ]
    output.print_listing(response, "things", columns, "json")
    assert json.loads(capsys.readouterr().out) == response
    output.print_listing({"things": []}, "things", columns, "table")
    assert capsys.readouterr().out == "no things\n"
