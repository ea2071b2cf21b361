"""The token sequences both models are recorded on: prompts plus a model's own completions, teacher-forced.

By default the sequences are the RL model's completions to held-out prompts (so reasoning tokens exist to measure);
the base model's own completions are the mirror check. Both models then read exactly the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

from rl.data import collate
from rl.data.items import Item
from rl.evaluate import generate


def completions(model, processor, items: Sequence[Item], *, mode: str = "think", temperature: float = 0.0,
                max_new_tokens: int = 96, seed: int = 0) -> list[str]:
    """``model``'s completions (greedy by default) to ``items`` prompted in ``mode``."""
    return generate(model, processor, items, mode, temperature=temperature, max_new_tokens=max_new_tokens,
                    seed=seed)


def teacher_forced_inputs(processor, items: Sequence[Item], texts: Sequence[str], mode: str = "think"):
    """Processor output for prompt + completion of every item (left padded, audio included).

    Completions are cut after their first ``<|im_end|>``; one that never ended keeps what was generated.
    """
    prompts = collate.prompt_texts(processor, items, mode)
    full = [p + t.split("<|im_end|>")[0] + "<|im_end|>" for p, t in zip(prompts, texts)]
    return collate.encode(processor, full, [it.audio for it in items])


def recorded_inputs(recordings, processor):
    """The teacher-forced inputs a recordings folder (``adt-probe record``) was made on: its ``items.jsonl`` and
    ``completions.jsonl``, through ``processor``."""
    import json
    from pathlib import Path

    from rl.data.items import load_items

    folder = Path(recordings)
    items = load_items(folder / "items.jsonl")
    by_id = {json.loads(line)["id"]: json.loads(line)["completion"]
             for line in (folder / "completions.jsonl").read_text().splitlines()}
    return teacher_forced_inputs(processor, items, [by_id[it.id] for it in items])
