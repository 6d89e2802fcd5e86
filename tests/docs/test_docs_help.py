"""Every ``regsearch ... --help`` prints its usage: the argparse tree is walked, so a new command is covered
by construction (argparse formats help texts with %, so one stray % breaks a whole command's --help)."""

from __future__ import annotations

import argparse

import pytest

from service.cli import build_parser, main


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """``path`` and the path of every subcommand below it, depth first."""
    found = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _commands(child, (*path, name))
    return found


COMMANDS = _commands(build_parser())


def test_the_walk_finds_the_commands_and_their_subcommands():
    assert {("submit",), ("serve",), ("retrain",), ("token", "create"), ("token", "show")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "regsearch")
def test_help_works(path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    out, err = capsys.readouterr()
    assert exited.value.code == 0, err
    assert out.startswith(f"usage: regsearch {' '.join(path)}".rstrip()), out[:300]
    assert err == ""
