"""The verdict rules of both findings: written before any result was seen, in this one module.

Every ``findings.json`` and report carries the rule texts and :data:`RULES_HASH` (sha256 of this file), so a
reader can tell which rules made a verdict and that they were not edited after the fact. A verdict is one of
:data:`VERDICTS`. The functions take numbers only (never models or files), so each rule is tested on its own and on
planted and control changes of the organism (``tests/test_verdicts.py``).

Finding 1, "RL mainly reshapes the routers of the upper layers", is about the routers themselves: it rests on the
router term of the exact split ``z_r - z_b = (ΔW x̄ + Δb) + W̄ Δx`` (``adt_probe.decompose``), i.e. how much the
routers' logits move *at fixed input*, in scale-free units. Layers differ in sensitivity (the same relative weight
change moves the logits of some layers more), so the upper/lower ratio is read against random router updates of one
uniform relative size in every layer, evaluated on the same tokens.

Finding 2, "reasoning tokens crystallize progressively in the upper layers", rests on where think tokens settle:
the first stream (the embedding, then each block's output) from which the logit lens's top-1 equals the model's
output and stays so; tokens whose prediction appears only at the output are counted apart.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

VERDICTS = ("reproduces", "not shown", "reversed", "inconclusive")

#: finding 1: how far beyond the largest random-update ratio the RL ratio's lower bound must lie
ROUTER_MARGIN = 1.5
#: both findings: fewer sequences than this carrying the tokens a rule reads -> inconclusive
MIN_SEQUENCES = 8
#: finding 2: share of settled think tokens that must settle in the upper band
UPPER_SHARE = 0.5
#: finding 2: smallest RL-minus-base shift of that share that counts (a random weight change of a few percent moves
#: it by about 0.01 on the organism)
MIN_SHIFT = 0.05

UPPER_ROUTERS_RULE = (
    "Finding 1 (RL mainly reshapes the routers of the upper layers). Statistic R: the relative router-logit change at "
    "fixed input, sum_t ||dW xbar_t + db|| / sum_t ||Wbar xbar_t + bbar|| (logits centred over experts for softmax "
    "routers), pooled over the upper half of the MoE layers, divided by the same over the lower half, on think tokens "
    "of the RL model's completions (all tokens when there are none); 95% BCa interval over sequences (hierarchical "
    "over runs, then sequences, with several RL runs). Calibration: K random router updates of one uniform relative "
    "size (the RL update's pooled relative router change) in every MoE layer, evaluated on the same tokens, give "
    f"ratios R_1..R_K. Verdict: 'not shown' if no router tensor changed; 'inconclusive' if fewer than {MIN_SEQUENCES} "
    f"sequences carry the tokens or the interval is undefined; 'reproduces' if the interval's lower bound exceeds "
    f"{ROUTER_MARGIN} x max(R_k); 'reversed' if its upper bound is below min(R_k) / {ROUTER_MARGIN}; 'not shown' if "
    f"the whole interval lies within [min(R_k) / {ROUTER_MARGIN}, {ROUTER_MARGIN} x max(R_k)]; otherwise "
    "'inconclusive'. Reported beside it, not part of the rule: the input term, the router share of the total change, "
    "top-k change and top-1 flip rates, JS, and matched-norm random-update controls.")

CRYSTALLIZATION_RULE = (
    "Finding 2 (reasoning tokens crystallize progressively in the upper layers). Per token and model, the settling "
    "stream is the first of (embedding, block 0, ..., block L-2) from which the logit lens's top-1 equals the model's "
    "output top-1 and stays equal; a token whose prediction appears only at the output is 'never settled before the "
    "output' and is counted apart. Statistic U: among think tokens of the RL model's completions that settled before "
    "the output, the share settling in a block of the upper half of the layers; dU = U(RL) - U(base) on the same "
    "tokens (paired); 95% BCa intervals over sequences (hierarchical with several RL runs). Verdict: 'inconclusive' "
    f"if fewer than {MIN_SEQUENCES} sequences carry think tokens or an interval is undefined; 'reproduces' if "
    f"U(RL)'s lower bound exceeds {UPPER_SHARE}, dU's lower bound exceeds 0 and dU >= {MIN_SHIFT}; 'reversed' if "
    f"U(RL)'s upper bound is below {UPPER_SHARE}, dU's upper bound is below 0 and dU <= -{MIN_SHIFT}; otherwise "
    "'not shown'.")

RULES = {"upper_routers": UPPER_ROUTERS_RULE, "crystallization": CRYSTALLIZATION_RULE}
#: sha256 of this module's source: changes with any rule text, threshold or decision function
RULES_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _finite(*values: float) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def upper_routers(ratio: dict, null_ratios: Sequence[float], *, routers_moved: bool, n_sequences: int) -> dict:
    """The verdict of finding 1.

    Parameters
    ----------
    ratio : ``{"value", "lo", "hi", ...}``: upper-over-lower relative router-logit change at fixed input.
    null_ratios : the same ratio for K random router updates of uniform relative size (same tokens).
    routers_moved : whether any router tensor differs between the models.
    n_sequences : sequences carrying the tokens the ratio was computed on.

    Returns
    -------
    dict ``verdict``, ``rule``, ``why`` (the comparison that decided), ``numbers`` (everything used).
    """
    nulls = [float(r) for r in null_ratios if r is not None and math.isfinite(r)]
    numbers = {"ratio": ratio, "null_ratios": nulls, "margin": ROUTER_MARGIN, "n_sequences": int(n_sequences)}
    if not routers_moved:
        return _verdict("upper_routers", "not shown", "no router tensor changed: the router effect is exactly 0",
                        numbers)
    if n_sequences < MIN_SEQUENCES or not nulls or not _finite(ratio.get("lo"), ratio.get("hi")):
        return _verdict("upper_routers", "inconclusive",
                        f"{n_sequences} sequences (need {MIN_SEQUENCES}), {len(nulls)} finite null ratios, interval "
                        f"[{ratio.get('lo')}, {ratio.get('hi')}]", numbers)
    up, down = ROUTER_MARGIN * max(nulls), min(nulls) / ROUTER_MARGIN
    numbers.update(upper_threshold=up, lower_threshold=down)
    if ratio["lo"] > up:
        return _verdict("upper_routers", "reproduces", f"the upper/lower ratio's lower bound {ratio['lo']:.3g} exceeds "
                        f"{up:.3g} ({ROUTER_MARGIN:g} x the largest random-update ratio)", numbers)
    if ratio["hi"] < down:
        return _verdict("upper_routers", "reversed", f"the upper/lower ratio's upper bound {ratio['hi']:.3g} is below "
                        f"{down:.3g} (the smallest random-update ratio / {ROUTER_MARGIN:g})", numbers)
    if ratio["lo"] >= down and ratio["hi"] <= up:
        return _verdict("upper_routers", "not shown",
                        f"the upper/lower ratio's interval [{ratio['lo']:.3g}, {ratio['hi']:.3g}] lies within "
                        f"[{down:.3g}, {up:.3g}], the random-update ratios' range widened by {ROUTER_MARGIN:g}",
                        numbers)
    return _verdict("upper_routers", "inconclusive",
                    f"the upper/lower ratio's interval [{ratio['lo']:.3g}, {ratio['hi']:.3g}] crosses a threshold "
                    f"({down:.3g} or {up:.3g})", numbers)


def crystallization(upper_share_rl: dict, delta_upper_share: dict, *, n_sequences: int) -> dict:
    """The verdict of finding 2.

    Parameters
    ----------
    upper_share_rl : ``{"value", "lo", "hi"}``: U(RL), share of settled think tokens settling in the upper band.
    delta_upper_share : U(RL) - U(base) on the same tokens, paired interval.
    n_sequences : sequences with think tokens.
    """
    u, d = upper_share_rl, delta_upper_share
    numbers = {"upper_share_rl": u, "delta_upper_share": d, "threshold": UPPER_SHARE, "min_shift": MIN_SHIFT,
               "n_sequences": int(n_sequences)}
    if n_sequences < MIN_SEQUENCES or not _finite(u.get("lo"), u.get("hi"), d.get("lo"), d.get("hi")):
        return _verdict("crystallization", "inconclusive",
                        f"{n_sequences} sequences with think tokens (need {MIN_SEQUENCES}) or an undefined interval",
                        numbers)
    if u["lo"] > UPPER_SHARE and d["lo"] > 0 and d["value"] >= MIN_SHIFT:
        return _verdict("crystallization", "reproduces",
                        f"U(RL) lower bound {u['lo']:.3g} > {UPPER_SHARE}, dU = {d['value']:.3g} [{d['lo']:.3g}, "
                        f"{d['hi']:.3g}] above 0 and >= {MIN_SHIFT}",
                        numbers)
    if u["hi"] < UPPER_SHARE and d["hi"] < 0 and d["value"] <= -MIN_SHIFT:
        return _verdict("crystallization", "reversed",
                        f"U(RL) upper bound {u['hi']:.3g} < {UPPER_SHARE}, dU = {d['value']:.3g} [{d['lo']:.3g}, "
                        f"{d['hi']:.3g}] below 0 and <= -{MIN_SHIFT}",
                        numbers)
    return _verdict("crystallization", "not shown",
                    f"U(RL) = {u['value']:.3g} [{u['lo']:.3g}, {u['hi']:.3g}], dU = {d['value']:.3g} "
                    f"[{d['lo']:.3g}, {d['hi']:.3g}]", numbers)


def _verdict(finding: str, verdict: str, why: str, numbers: dict) -> dict:
    assert verdict in VERDICTS
    return {"verdict": verdict, "rule": RULES[finding], "rules_hash": RULES_HASH, "why": why, "numbers": numbers}


def stamp() -> dict:
    """What every findings file and report carries: the rule texts and their hash."""
    return {"rules": dict(RULES), "rules_hash": RULES_HASH, "module": "analyses.verdicts"}
