"""The `adt-probe` console script: its target exists and every subcommand's module has a main()."""

import importlib
from pathlib import Path

import pytest
import tomllib

from analyses.cli import COMMANDS, main


def test_console_script_target_resolves():
    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["adt-probe"].split(":")
    assert callable(getattr(importlib.import_module(module), func))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_a_main(name):
    assert callable(importlib.import_module(COMMANDS[name][0]).main)


def test_unknown_command_names_the_choices(capsys):
    with pytest.raises(SystemExit, match="unknown command 'nope'"):
        main(["nope"])
    main(["--help"])
    assert "reproduce" in capsys.readouterr().out
