"""The ``adt-probe`` command line. Each subcommand hands its arguments to the module that does the work.

It lives in ``analyses`` (the top of the data flow) because it reaches both ``rl`` and ``adt_probe``, and
``adt_probe`` itself never imports ``rl``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module with a ``main(argv)``, one-line help)
COMMANDS = {
    "compare": ("analyses.compare", "any base vs RL checkpoint(s): verdicts, findings.json, figures, report.md"),
    "reproduce": ("analyses.reproduce", "the paper's pipeline end to end on the organism (what `make demo` runs)"),
    "eval": ("rl.evaluate", "accuracy, think-rate, reference similarity and process score of a model on items"),
    "train-base": ("rl.organism.train_base", "train the base model organism (refuses to overwrite the shipped one)"),
    "train": ("rl.train.grpo", "GRPO training of an audio model from a TOML/YAML config"),
    "record": ("analyses.record_pair", "record a base and an RL model on the same token sequences"),
    "findings": ("analyses.findings", "gating drift and crystallization from recordings, with figures"),
    "transplant": ("analyses.transplant", "router transplant per layer band: change of accuracy and reward"),
    "decompose": ("analyses.decompose", "router-logit change split exactly into router term and input term"),
    "weights": ("analyses.weights", "router weight drift between two checkpoints"),
    "trajectory": ("analyses.trajectory", "drift from the base at every checkpoint of a run"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="adt-probe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.print_help()
        if argv and argv[0] not in ("-h", "--help"):
            sys.exit(f"\nadt-probe: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}")
        return
    module = importlib.import_module(COMMANDS[argv[0]][0])
    sys.argv = [f"adt-probe {argv[0]}", *argv[1:]]  # so each module's --help names the subcommand
    module.main(argv[1:])


if __name__ == "__main__":
    main()
