"""The `adt-probe` console script: its target exists and every subcommand's module has a main()."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from analyses.cli import COMMANDS, _module_doc, command_parser, main


def test_console_script_target_resolves():
    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["adt-probe"].split(":")
    assert callable(getattr(importlib.import_module(module), func))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_a_main(name):
    assert callable(importlib.import_module(COMMANDS[name][0]).main)


def test_unknown_command_names_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["nope"])
    assert exit_info.value.code == 2 and "unknown command 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "reproduce" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("adt-probe ")


def _options(parser):
    return [a for a in parser._actions if a.option_strings and a.dest not in ("help", "version")]


@pytest.mark.parametrize("name", [n for n, (_, _, args) in COMMANDS.items() if args is not None])
def test_every_option_has_help_and_shows_its_default_in_plain_text(name):
    parser = command_parser(name, _module_doc(COMMANDS[name][0]))
    for action in _options(parser):
        assert action.help, f"{name} {action.option_strings[0]} has no help text"
    text = parser.format_help()
    assert "``" not in text and ":func:" not in text  # no raw reStructuredText
    for action in _options(parser):
        if action.default not in (None, False):
            assert f"(default: {action.default})" in " ".join(text.split()), (name, action.dest)


@pytest.mark.parametrize("argv", [["--help"], ["--version"], *([name, "--help"] for name in COMMANDS)])
def test_help_imports_no_model_library(argv):
    """A fresh interpreter: --help of every command must not import torch or transformers (seconds on their own;
    the time itself is measured in benchmarks, not here)."""
    code = ("import sys; from analyses.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "heavy = sorted({'torch', 'transformers', 'xarray'} & set(sys.modules))\n"
            "assert not heavy, f'imported {heavy}'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
