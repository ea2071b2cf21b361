"""Completion parsing and the chat template."""

import dataclasses

import pytest
import torch

from rl.data import prompts
from rl.data.prompts import parse_completion


@pytest.mark.parametrize("text, think, answer, well_formed", [
    ("<think>\n\n</think>\n\n<answer>yes</answer><|im_end|>", "", "yes", True),
    ("<think>\nSound 1: a high tone.\n</think>\n\n<answer> the first </answer>", "Sound 1: a high tone.",
     "the first", True),
    ("<answer>no</answer>", "", "no", False),  # no think block
    ("<think>a</think><answer>x</answer><answer>y</answer>", "a", "y", False),  # two answers: last one counts
    ("<think>unfinished", "", None, False),
    ("<think>a</think> stray <answer>x</answer>", "a", "x", False),
])
def test_parse_completion(text, think, answer, well_formed):
    c = parse_completion(text)
    assert (c.think, c.answer, c.well_formed) == (think, answer, well_formed)
    assert c.thought == bool(think)


def test_template_renders_qwen3_layout(tokenizer):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "audio"},
                                                                             {"type": "text", "text": "Q?"}]}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|>Q?"
                    "<|im_end|>\n<|im_start|>assistant\n")
    no_think = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert no_think.endswith("<|im_start|>assistant\n" + prompts.EMPTY_THINK)


def test_base_targets_never_reason(items):
    for it in items:
        for mode in ("answer", "describe"):
            assert parse_completion(prompts.target(it, mode)).think == ""


def test_skill_transfer_prompt_variants_only_move_or_drop_the_choices(items):
    """The benchmark's ablations change the prompt in exactly one way each (``benchmarks.skill_transfer``)."""
    from benchmarks import skill_transfer

    for it in items:
        for mode in ("answer", "think"):
            original = prompts.user_text(it, mode)
            choices = prompts.format_choices(it.choices)
            assert sorted(skill_transfer.question_last(it, mode).split()) == sorted(original.split())
            assert skill_transfer.question_last(it, mode).endswith(it.question)
            hidden = skill_transfer.without_choices(it, mode)
            assert choices not in hidden and hidden.split() == original.replace(choices, "").split()
        assert skill_transfer.without_choices(it, "describe") == prompts.user_text(it, "describe")


def test_lookup_depth_distinct_words_give_every_level_a_token_of_its_own():
    """``benchmarks.lookup_depth --distinct-words``: each attribute level is one token of the shipped tokenizer that
    no other level shares, and only the attribute words change."""
    from benchmarks import lookup_depth
    from rl import organism
    from rl.data.tasks import ATTRIBUTES
    from rl.organism.recipe import BaseTrainConfig

    tok = organism.load_processor().tokenizer
    rename = lookup_depth.DISTINCT_WORDS
    levels = [rename.get(w, w) for names, _, _ in ATTRIBUTES.values() for w in names]
    pieces = [tok.tokenize(" " + w) for w in levels]
    assert all(len(p) == 1 for p in pieces), dict(zip(levels, pieces))
    assert len({p[0] for p in pieces}) == len(set(levels))  # "medium" is a duration only, once
    cfg = BaseTrainConfig(batch_size=16)
    for plain, renamed in zip(lookup_depth.skill_texts(cfg, 3), lookup_depth.skill_texts(cfg, 3, distinct=True)):
        assert plain != renamed
        for a, b in zip(plain, renamed):
            assert not any(w in b for w in rename)
            back = b
            for old, new in rename.items():
                back = back.replace(new, old)
            assert back == a


def test_lookup_depth_config_overrides_parse_json_values_and_refuse_a_bare_key():
    from benchmarks.lookup_depth import config_overrides

    assert config_overrides(["num_attention_heads=8", 'rope_parameters={"mrope_section": [2, 3, 3]}', "act=silu"]) \
        == {"num_attention_heads": 8, "rope_parameters": {"mrope_section": [2, 3, 3]}, "act": "silu"}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        config_overrides(["num_attention_heads"])


def test_chat_skill_batches_label_exactly_the_target():
    """The chat-skill phase (and ``benchmarks.lookup_depth --chat``): the labelled tokens of a chat-format batch decode
    to its target (the answer sentence, then ``</think>`` and the answer when training), and the prompt ends with
    ``<think>``."""
    from benchmarks import lookup_depth
    from rl import organism
    from rl.organism.recipe import BaseTrainConfig
    from rl.organism.train_base import chat_skill_texts, skill_items

    processor = organism.load_processor()
    cfg = BaseTrainConfig(batch_size=6)
    for answers in (True, False):
        prompts_, targets = chat_skill_texts(processor, skill_items(cfg, 2), answers=answers)
        batch = lookup_depth.collate.encode_plain(processor, prompts_, targets)
        for p, t, ids, labels in zip(prompts_, targets, batch["input_ids"], batch["labels"]):
            assert p.endswith("<think>\n") and "Sounds: Sound 1:" in p
            assert t.startswith(("Sound ", "The ")) and t.endswith("<|im_end|>") == answers
            assert processor.tokenizer.decode(ids[labels >= 0]) == t
    plain = lookup_depth.training_batch(processor, cfg, 2)
    chat = lookup_depth.training_batch(processor, cfg, 2, "chat")
    assert chat["input_ids"].shape[1] > plain["input_ids"].shape[1]


def test_lookup_inside_a_chain_labels_the_look_up_of_the_sound_the_chain_selected():
    """``benchmarks.lookup_depth.chain_lookup_batch``: the facts in the prompt, the chain teacher-forced up to the
    look-up, and only the look-up sentence of the sound the previous step selected labelled; ``--unnamed`` batches
    ask their look-ups about "a sound"."""
    import re

    from benchmarks import lookup_depth
    from rl import organism
    from rl.organism.recipe import BaseTrainConfig

    processor = organism.load_processor()
    tok = processor.tokenizer
    batch = lookup_depth.chain_lookup_batch(processor, n=6)
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        target = tok.decode(ids[labels >= 0])
        context = tok.decode(ids[labels < 0], skip_special_tokens=False)
        selected = re.findall(r"The loudest sound is Sound (\d)\.", context)
        k = selected[0]
        assert "Sounds: Sound 1:" in context and context.rstrip().endswith(f"Sound {k}. Sound {k} is a")
        m = re.fullmatch(r" (.+) tone\.", target)
        assert m and f"Sound {k}: a {m.group(1)} tone," in context  # the facts hold the answer
    unnamed = lookup_depth.training_batch(processor, BaseTrainConfig(batch_size=6), 2, "unnamed")
    text = [tok.decode(ids) for ids in unnamed["input_ids"]]
    assert sum("of a sound?" in t for t in text) == 3 and not any(re.search(r"of Sound \d\?", t) for t in text)


def test_chain_phase_trains_every_inference_step_then_the_answer():
    """The base training's chain phase (and ``benchmarks.lookup_depth --chains``, the same batches): both multi-step
    families, the facts in the prompt, and exactly the whole chain and the answer labelled."""
    from benchmarks import lookup_depth
    from rl import organism
    from rl.organism.recipe import BaseTrainConfig
    from rl.organism.train_base import decoder_batch, phase_of

    processor = organism.load_processor()
    cfg = BaseTrainConfig(batch_size=4, perception_steps=1, skill_steps=1, chain_steps=8)
    assert phase_of(cfg, 5) == "chain"
    batch = decoder_batch(processor, cfg, 5)
    for name, tensor in lookup_depth.training_batch(processor, cfg, 5, "chains").items():
        torch.testing.assert_close(batch[name], tensor, rtol=0, atol=0, msg=name)
    targets = [processor.tokenizer.decode(ids[labels >= 0]) for ids, labels in zip(batch["input_ids"],
                                                                                    batch["labels"])]
    assert any("The highest tone is Sound" in t for t in targets) and any("The loudest sound is" in t for t in targets)
    for t in targets:
        chain, _, answer = t.partition("\n</think>\n\n<answer>")
        assert chain.startswith("Sound ") and chain.endswith(".") and answer.endswith("</answer><|im_end|>")


def test_the_completion_budget_holds_every_reference_chain_of_the_shipped_tasks():
    from transformers import AutoTokenizer

    from rl.data.tasks import generate_items
    from rl.organism import ORGANISM_DIR

    tok = AutoTokenizer.from_pretrained(ORGANISM_DIR)
    items = generate_items(420, seed=7)  # every family x difficulty, 20 each
    lengths = [len(tok(prompts.reference_completion(it))["input_ids"]) for it in items]
    prompts.check_completion_budget(tok, items, prompts.MAX_NEW_TOKENS, "held-out")
    # the longest chain (a four-sound highest-longest) is what the budget is sized for; one token fewer is refused
    longest = max(lengths)
    assert 110 < longest <= prompts.MAX_NEW_TOKENS
    assert items[lengths.index(longest)].family == "highest_longest"
    with pytest.raises(ValueError, match=rf"held-out: \d+ of 420 items reason in more than max_new_tokens = "
                                         rf"{longest - 1} tokens .*at least {longest}, or leave out"):
        prompts.check_completion_budget(tok, items, longest - 1, "held-out")
    # items without a reference chain set no budget
    bare = [dataclasses.replace(it, reference_chain=None) for it in items[:3]]
    prompts.check_completion_budget(tok, bare, 1, "bare")
    assert prompts.reference_completion(bare[0]) is None


def test_notes_prefill_gives_the_facts_or_forces_the_block_open_and_names_a_wrong_value(items, processor):
    import doctest

    from rl.train.rollout import prompt_batch

    result = doctest.testmod(prompts)
    assert result.attempted > 0 and result.failed == 0
    it = items[0]
    given, _ = prompt_batch(processor, [it], "think", notes="given")
    own, _ = prompt_batch(processor, [it], "think", notes="own")
    plain, _ = prompt_batch(processor, [it], "think")
    assert given[0] == plain[0] + f"<think>\n{it.meta['description']}\n"
    assert own[0] == plain[0] + "<think>\n" + it.meta["description"].split(" ")[0]
    with pytest.raises(ValueError, match="'given' .* or 'own'"):
        prompt_batch(processor, [it], "think", notes=True)


def test_written_facts_and_notes_combine_into_one_text_only_prompt(items, processor):
    from rl.train.rollout import prompt_batch

    it = items[0]
    facts, facts_batch = prompt_batch(processor, [it], "think", written_facts=True)
    both, both_batch = prompt_batch(processor, [it], "think", written_facts=True, notes="own")
    assert f"Sounds: {it.meta['description']}" in facts[0] and "<|audio_pad|>" not in facts[0]
    assert both[0] == facts[0] + "<think>\nSound"  # the notes are not dropped for written facts
    assert "input_features" not in both_batch and both_batch["input_ids"].shape[1] > facts_batch["input_ids"].shape[1]


def test_every_completion_ends_with_the_same_answer_tail(items):
    from analyses.compare import reference_texts
    from rl.organism.train_base import think_close

    it = next(i for i in items if i.reference_chain)
    tail = prompts.answer_tail(it)
    assert prompts.target(it, "answer") == prompts.EMPTY_THINK + f"<answer>{it.answer}</answer><|im_end|>"
    assert prompts.reference_completion(it).endswith("\n" + tail)
    assert think_close(it) == tail + "<|im_end|>"
    assert reference_texts([it]) == [prompts.reference_completion(it)]
    assert parse_completion(prompts.reference_completion(it)).answer == it.answer
