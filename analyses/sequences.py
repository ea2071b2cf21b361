"""The token sequences both models are recorded on: prompts plus a model's own completions, teacher-forced.

By default the sequences are the RL model's completions to held-out prompts (so reasoning tokens exist to measure);
the base model's own completions are the mirror check. Both models then read exactly the same tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from adt_probe.teacher_forcing import teacher_force
from analyses.models import for_model
from rl.data import collate
from rl.data.items import SAMPLE_RATE, Item, load_items
from rl.data.prompts import MAX_NEW_TOKENS
from rl.evaluate import generate


def completions(model, processor, items: Sequence[Item], *, mode: str = "think", temperature: float = 0.0,
                max_new_tokens: int = MAX_NEW_TOKENS, seed: int = 0, batch_size: int = 32) -> list[str]:
    """``model``'s completions (greedy by default) to ``items`` prompted in ``mode``, ``batch_size`` at a time."""
    return generate(model, processor, items, mode, temperature=temperature, max_new_tokens=max_new_tokens,
                    seed=seed, batch_size=batch_size)


def given_completions(texts: Sequence[str] | None, items: Sequence[Item], what: str = "completions"
                      ) -> list[str] | None:
    """Completions a caller already generated, as a list, once checked to be one per item; None (generate them)
    stays None.

    Raises
    ------
    ValueError : not one per item (the message names both counts and the fix).
    """
    if texts is None:
        return None
    if len(texts) != len(items):
        raise ValueError(f"{len(texts)} {what} given for {len(items)} items; pass one per item, in the items' order "
                         "(or none, to generate them)")
    return list(texts)


def teacher_forced_inputs(processor, items: Sequence[Item], texts: Sequence[str], mode: str = "think"):
    """Processor output for prompt + completion of every item (left padded, audio included when the items have it).

    Completions are cut after their first end-of-turn token; one that never ended keeps what was generated. The
    public form, for prompts that are not items, is :func:`adt_probe.teacher_force`.
    """
    prompts = collate.prompt_texts(processor, items, mode)
    audio = [it.audio for it in items if it.audio is not None]
    if audio and len(audio) != len(items):
        raise ValueError("some items have audio and some do not: record them in separate batches")
    return teacher_force(processor, prompts, texts, audio=audio or None, sampling_rate=SAMPLE_RATE)


def recorded_inputs(recordings, processor):
    """The teacher-forced inputs a recordings folder (``adt-probe record``) was made on: its ``items.jsonl`` and
    ``completions.jsonl``, through ``processor``."""
    folder = Path(recordings)
    items = for_model(load_items(folder / "items.jsonl"), processor)  # as recorded: text-only for a text model
    by_id = {json.loads(line)["id"]: json.loads(line)["completion"]
             for line in (folder / "completions.jsonl").read_text().splitlines()}
    return teacher_forced_inputs(processor, items, [by_id[it.id] for it in items])
