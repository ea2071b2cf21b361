"""The command-line options of the ``rl`` entry points (``python -m rl.evaluate``, ``python -m rl.train.grpo``,
``python -m rl.organism.train_base``),
declared apart from those modules so that ``--help`` (here and in ``adt-probe eval|train --help``) answers without
importing torch. Each function adds its options to a parser; the module's ``main`` parses with it.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from rl.data.prompts import MAX_NEW_TOKENS
from rl.organism.recipe import MODES, BaseTrainConfig

#: the shipped organism (rl.organism.ORGANISM_DIR, named here without importing torch)
ORGANISM_DIR = Path(__file__).resolve().parent / "assets" / "organism"


def evaluate_arguments(ap: argparse.ArgumentParser) -> None:
    """Options of ``rl.evaluate``."""
    ap.add_argument("--model", help="model folder (default: the shipped organism, rl/assets/organism)")
    ap.add_argument("--data", help="JSONL items (rl.data.items format); default: a held-out synthetic set")
    ap.add_argument("--n-per-cell", type=int, default=20, help="synthetic items per family x difficulty")
    ap.add_argument("--seed", type=int, default=10_007, help="seed of the synthetic held-out set")
    ap.add_argument("--judge", default="smollm2",
                    help="judge of the process score: 'smollm2' (in-process), a folder with a causal LM, "
                         "an OpenAI-compatible URL (http://...), or 'none' to skip the process score")
    ap.add_argument("--judge-model", help="model name on the judge server (with a URL)")
    ap.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="longest completion generated per item")
    ap.add_argument("--no-sampled", action="store_true", help="skip the think prompt sampled at temperature 1")
    ap.add_argument("--no-facts-and-notes", action="store_true",
                    help="skip the answers from the facts written out and from correct notes (synthetic items)")
    ap.add_argument("--out", help="write the JSON report here")


def train_arguments(ap: argparse.ArgumentParser) -> None:
    """Options of ``rl.train.grpo``."""
    ap.add_argument("--config", required=True, help="TOML or YAML run configuration (examples: rl/configs/*.toml)")
    ap.add_argument("--out", required=True, help="output folder: log.jsonl, completions.jsonl, checkpoints/")
    ap.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set grpo.temperature=0.7 --set stages.0.steps=3")
    ap.add_argument("--stop-after", type=int, help="stop after this global step (no final checkpoint)")


def _weights(text: str) -> tuple[float, ...]:
    """``"0.2,0.3,0.1,0.3,0.1"`` -> one weight per skill of ``MODES``, summing to 1."""
    weights = tuple(float(x) for x in text.split(","))
    if len(weights) != len(MODES) or abs(sum(weights) - 1) > 1e-6 or min(weights) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give {len(MODES)} non-negative weights summing to 1, one per "
                                         f"skill ({', '.join(MODES)})")
    return weights


def train_base_arguments(ap: argparse.ArgumentParser) -> None:
    """Options of ``rl.organism.train_base``: the output, resuming, and every number of :class:`BaseTrainConfig`."""
    ap.add_argument("--out", default=str(ORGANISM_DIR), help="output folder (default: the shipped organism)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing model in --out")
    ap.add_argument("--evaluate-only", action="store_true",
                    help="measure the model already in --out on the held-out set (--eval-per-cell, --eval-seed) and "
                         "update its manifest")
    for f in dataclasses.fields(BaseTrainConfig):
        kind = {"int": {"type": int}, "float": {"type": float}, "float | None": {"type": float},
                "bool": {"action": argparse.BooleanOptionalAction}}.get(f.type)
        if kind is not None:
            ap.add_argument(f"--{f.name.replace('_', '-')}", **kind, default=f.default,
                            help=f"base-training setting BaseTrainConfig.{f.name}")
    ap.add_argument("--mode-weights", type=_weights, default=BaseTrainConfig.mode_weights,
                    help=f"weights of the skills {', '.join(MODES)}, comma-separated (e.g. 0.2,0.3,0.1,0.3,0.1)")
    ap.add_argument("--tune-mode-weights", type=_weights, default=None,
                    help="the tune phase's weights of the same skills (default: --mode-weights)")
    ap.add_argument("--checkpoint-dir", default="runs/train_base",
                    help="where checkpoints go (every --checkpoint-minutes; the newest two are kept)")
    ap.add_argument("--resume", action="store_true",
                    help="continue from the newest complete checkpoint in --checkpoint-dir (same options)")
    ap.add_argument("--log", help="also append progress lines to this file (default: train.log in --checkpoint-dir)")


def parser(arguments, description: str | None = None, epilog: str | None = None) -> argparse.ArgumentParser:
    """A parser with ``arguments`` for ``python -m ...`` use (defaults shown)."""
    ap = argparse.ArgumentParser(description=description, epilog=epilog,
                                 formatter_class=type("Formatter", (argparse.RawDescriptionHelpFormatter,
                                                                     argparse.ArgumentDefaultsHelpFormatter), {}))
    arguments(ap)
    return ap
