"""The ``adt-probe`` command line. Each subcommand hands its arguments to the module that does the work.

It lives in ``analyses`` (the top of the data flow) because it reaches both ``rl`` and ``adt_probe``, and
``adt_probe`` itself never imports ``rl``.

This module imports nothing heavy (no torch, transformers, xarray): ``adt-probe --help`` and ``adt-probe COMMAND
--help`` answer without loading a model library. The options of the ``analyses`` subcommands are declared here (one
``*_arguments`` function each, used by the subcommand module's ``main``), those of ``eval`` and ``train`` in
``rl.cli_options``, so their help needs no import of the module.

Conventions: every option has help text and shows its default; help is plain text; an error is one line on stderr
and exit status 2 (``--debug`` shows the traceback); messages go through ``logging``, progress through tqdm.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata
import importlib.util
import logging
import re
import sys
from collections.abc import Callable

from rl import cli_options  # the rl entry points' options (light: argparse only)
from rl.data.prompts import MAX_NEW_TOKENS

log = logging.getLogger("adt_probe.cli")

#: the shipped base model, the default of ``--base`` (named by rl.cli_options, without importing torch)
ORGANISM = str(cli_options.ORGANISM_DIR)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Plain-text help: descriptions keep their line breaks, RST markup (````x````, ```x```, ``:func:`x```) is shown
    as plain words, and every option shows its default."""

    _ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
    _LITERAL = re.compile(r"``([^`]+)``")
    _TICKS = re.compile(r"`([^`]+)`")

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return super()._fill_text(plain(text), width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = plain(action.help or "")
        if action.required or action.default in (None, False, argparse.SUPPRESS) or "%(default)" in text:
            return text
        return text + " (default: %(default)s)"


def plain(text: str) -> str:
    """``text`` with reStructuredText inline markup and line-continuation backslashes removed."""
    text = HelpFormatter._ROLE.sub(r"\1", text)
    text = HelpFormatter._LITERAL.sub(r"\1", text)
    text = HelpFormatter._TICKS.sub(r"\1", text)
    return text.replace("\\\\\n", "\n").replace(" \\\n", "\n")


# --- options shared by the commands that load models ----------------------------------------------------------------

def add_model_options(ap: argparse.ArgumentParser, *, batch: bool = True, generation: bool = True) -> None:
    """``--dtype`` and ``--device-map`` (how models load), optionally ``--batch-size`` and ``--max-new-tokens``."""
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "auto"], default="float32",
                    help="dtype the models are loaded in ('auto': the checkpoint's own)")
    ap.add_argument("--device-map", default=None,
                    help="where the weights go, as transformers' device_map ('auto', 'cpu', 'cuda:0'); "
                         "none: the CPU")
    if batch:
        ap.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    if generation:
        ap.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS,
                        help="longest completion generated per item")


def _heldout_options(ap: argparse.ArgumentParser, n_per_cell: int = 4) -> None:
    ap.add_argument("--data", help="JSONL items (default: a synthetic held-out set)")
    ap.add_argument("--n-per-cell", type=int, default=n_per_cell,
                    help="synthetic items per task family and difficulty (without --data)")
    ap.add_argument("--seed", type=int, default=30_011, help="seed of the synthetic held-out items")


def add_checkpoint_options(ap: argparse.ArgumentParser, *, overwrite: bool = True) -> None:
    """``--allow-unverified`` (and ``--overwrite``), the same in every command that reads models and writes ``--out``
    (``analyses.checkpoints`` verifies the folders, ``adt_probe.outputs`` guards ``--out``)."""
    ap.add_argument("--allow-unverified", action="store_true",
                    help="load model folders that have no manifest.json (your own model) without checksum "
                         "verification; a warning is printed")
    if overwrite:
        ap.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out that this command did not write; only the files it "
                             "writes are replaced, others are left alone")


# --- the analyses subcommands' options --------------------------------------------------------------------------------

def record_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--base", default=ORGANISM, help="base model folder (any transformers model)")
    ap.add_argument("--rl", required=True, help="RL model folder (a checkpoint of the same architecture)")
    ap.add_argument("--out", required=True, help="output folder")
    _heldout_options(ap)
    ap.add_argument("--source", choices=["rl", "base"], default="rl", help="whose completions are teacher-forced")
    ap.add_argument("--routing", choices=["topk", "full"], default="full",
                    help="what is stored of the routers: top-k experts only, or the full logits too")
    add_model_options(ap)
    add_checkpoint_options(ap)


def transplant_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--base", default=ORGANISM, help="base model folder (any transformers MoE model)")
    ap.add_argument("--rl", required=True, help="RL model folder (a checkpoint of the same architecture)")
    ap.add_argument("--out", required=True, help="output folder")
    _heldout_options(ap)
    ap.add_argument("--bands", type=int, default=2, help="number of equal layer bands")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the paired intervals")
    add_model_options(ap)
    add_checkpoint_options(ap)


def decompose_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--base", required=True, help="base model folder")
    ap.add_argument("--rl", required=True, help="RL model folder")
    ap.add_argument("--recordings", required=True, help="an `adt-probe record --routing full` folder")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the intervals")
    add_model_options(ap, generation=False)
    add_checkpoint_options(ap)


def weights_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--base", required=True, help="base model folder")
    ap.add_argument("--rl", required=True, help="RL model folder")
    ap.add_argument("--out", required=True, help="output folder")
    add_model_options(ap, batch=False, generation=False)
    add_checkpoint_options(ap)


def findings_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--recordings", required=True, help="folder with base.zarr, rl.zarr, base_noise.zarr")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the intervals")


def trajectory_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--run", required=True, help="the run folder (checkpoints/step-N inside)")
    ap.add_argument("--base", required=True, help="base model folder (step 0)")
    ap.add_argument("--recordings", required=True, help="an `adt-probe record` folder: the sequences")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples of the intervals")
    add_checkpoint_options(ap)


def compare_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--base", required=True, help="base checkpoint folder")
    ap.add_argument("--rl", required=True, action="append",
                    help="RL checkpoint folder (repeat for several runs), or a folder of run checkpoints")
    ap.add_argument("--data", required=True, help="JSONL items (rl.data.items format)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random-update draws and the bootstrap")
    ap.add_argument("--nulls", type=int, default=5, help="random-update draws for calibration and controls")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the intervals")
    ap.add_argument("--source", choices=["rl", "reference"], default="rl",
                    help="teacher-force the RL model's completions or the items' reference chains")
    ap.add_argument("--no-mirror", action="store_true", help="skip the mirror on the base's own completions")
    ap.add_argument("--sft-control", choices=["auto", "on", "off"], default="auto",
                    help="the SFT control (base fine-tuned on the RL model's think text at RL's update norm); auto: "
                         "only for models of at most 50M parameters (it trains a copy of the base)")
    ap.add_argument("--tuned-lens", choices=["auto", "on", "off"], default="auto",
                    help="finding 2 also read through a tuned lens trained per model, with its held-out KL; auto: "
                         "only for models of at most 50M parameters")
    add_model_options(ap)
    add_checkpoint_options(ap, overwrite=False)


def reproduce_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", required=True, help="output folder (a re-run continues what is there)")
    ap.add_argument("--quick", action="store_true", help="the 3-minute version: fewer steps and held-out items")
    ap.add_argument("--config", help="GRPO config (default: rl/configs/demo.toml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value (repeatable)")
    ap.add_argument("--redo", metavar="STEP", help="run STEP and every later step again")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the analysis steps")
    ap.add_argument("--overwrite", action="store_true",
                    help="run in a non-empty --out that reproduce did not write (its other files are left alone)")


#: subcommand -> (module with a ``main(argv)``, one-line help, the options when declared here)
COMMANDS: dict[str, tuple[str, str, Callable[[argparse.ArgumentParser], None] | None]] = {
    "compare": ("analyses.compare", "any base vs RL checkpoint(s): verdicts, findings.json, figures, report.md",
                compare_arguments),
    "reproduce": ("analyses.reproduce", "the paper's pipeline end to end on the organism (what `make demo` runs)",
                  reproduce_arguments),
    "eval": ("rl.evaluate", "accuracy, think-rate, reference similarity and process score of a model on items",
             cli_options.evaluate_arguments),
    "train-base": ("rl.organism.train_base", "train the base model organism (refuses to overwrite the shipped one)",
                   cli_options.train_base_arguments),
    "train": ("rl.train.grpo", "GRPO training of an audio model from a TOML/YAML config", cli_options.train_arguments),
    "record": ("analyses.record_pair", "record a base and an RL model on the same token sequences", record_arguments),
    "findings": ("analyses.findings", "gating drift and crystallization from recordings, with figures",
                 findings_arguments),
    "transplant": ("analyses.transplant", "router transplant per layer band: change of accuracy and reward",
                   transplant_arguments),
    "decompose": ("analyses.decompose", "router-logit change split exactly into router term and input term",
                  decompose_arguments),
    "weights": ("analyses.weights", "router weight drift between two checkpoints", weights_arguments),
    "trajectory": ("analyses.trajectory", "drift from the base at every checkpoint of a run", trajectory_arguments),
}


def command_parser(name: str, description: str | None = None) -> argparse.ArgumentParser:
    """The parser of subcommand ``name`` (declared in this module), with ``description`` (the module docstring)."""
    ap = argparse.ArgumentParser(prog=f"adt-probe {name}", description=description, formatter_class=HelpFormatter)
    COMMANDS[name][2](ap)
    return ap


def _module_doc(module_name: str) -> str | None:
    """A module's docstring read from its source, without importing it (importing would load torch)."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        return None
    with open(spec.origin) as f:
        return ast.get_docstring(ast.parse(f.read()), clean=True)


def version() -> str:
    try:
        return importlib.metadata.version("adt-probe")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed; run from a checkout)"


def top_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="adt-probe", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--version", action="version", version=f"adt-probe {version()}")
    ap.add_argument("--debug", action="store_true", help="debug messages, and a traceback on errors")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text, _) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return ap


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv[:1] or ("--debug" in argv and argv.index("--debug") < _command_index(argv))
    if debug:
        argv.remove("--debug")
    parser = top_parser()
    if not argv or argv[0] not in COMMANDS:
        if argv and not argv[0].startswith("-"):
            parser.error(f"unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}")
        parser.parse_args(argv)  # --help, --version, or an unknown option (exit 2)
        parser.print_help()
        return
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(message)s", force=True)
    name, rest = argv[0], argv[1:]
    module_name, _, arguments = COMMANDS[name]
    if arguments is not None and any(a in ("-h", "--help") for a in rest):
        command_parser(name, _module_doc(module_name)).print_help()  # without importing torch
        return
    try:
        module = importlib.import_module(module_name)
        sys.argv = [f"adt-probe {name}", *rest]  # so each module's own parser names the subcommand
        module.main(rest)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # one message, exit status 2; the traceback with --debug
        if debug:
            raise
        sys.stderr.write(f"adt-probe {name}: error: {type(err).__name__}: {err}\n"
                         "(run `adt-probe --debug ...` for the traceback)\n")
        sys.exit(2)


def _command_index(argv: list[str]) -> int:
    return next((i for i, a in enumerate(argv) if a in COMMANDS), len(argv))


if __name__ == "__main__":
    main()
