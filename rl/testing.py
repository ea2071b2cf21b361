"""Tiny causal LMs for the judge and reward tests and the training benchmarks: a byte-level BPE tokenizer trained
here with ``tokenizers`` (ChatML template, digits single tokens) and a random ``LlamaForCausalLM`` (2 layers, hidden
32), optionally taught a fixed reply so that it says something definite (a JSON score, a well-formed completion); and
a random tiny ``Qwen3MoeForCausalLM`` (8 layers, hidden 128, 8 experts, top-2) for the MoE training benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus() -> list[str]:
    """Text the tokenizer learns its merges from: judge prompts, reference chains, completions (no "Yes"/"No")."""
    from rl.data.tasks import generate_items
    from rl.judge import PROMPTS

    lines = []
    for it in generate_items(21, seed=3):
        lines += it.reference_chain + [it.question, " ".join(it.choices),
                                       f"<think>{' '.join(it.reference_chain)}</think><answer>{it.answer}</answer>"]
    for p in PROMPTS.values():
        if p.scale != "yes-no":
            lines += [p.system, p.task, p.question, p.json_question, p.cue]
    lines += ['{"score": 7}', "<candidate> </candidate> <reference> </reference>", "Score: 0 1 2 3 4 5 6 7 8 9"]
    return lines * 3


def build_tokenizer():
    """The byte-level BPE tokenizer (vocabulary 700) trained on ``corpus()``, with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHATML
    return fast


def build_model(tokenizer, seed: int = 0):
    """A random ``LlamaForCausalLM`` (2 layers, hidden 32) for ``tokenizer``, seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def build_moe_model(tokenizer, seed: int = 0, *, layers: int = 8, hidden: int = 128, experts: int = 8, top_k: int = 2):
    """A random ``Qwen3MoeForCausalLM`` for ``tokenizer``, seeded: every layer sparse (``experts`` experts of width
    ``hidden``, top-``top_k``, probabilities renormalised over the chosen), 4 heads of 32 (2 key-value heads)."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3MoeConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         moe_intermediate_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=hidden // 4, num_experts=experts, num_experts_per_tok=top_k,
                         decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                         tie_word_embeddings=False)
    return Qwen3MoeForCausalLM(cfg).eval()


def teach(model, tokenizer, prompts: Sequence[str], replies: Sequence[str], steps: int = 60, lr: float = 3e-2,
          seed: int = 0):
    """Fit ``model`` to answer ``prompts[i]`` with ``replies[i]`` + EOS (loss on the reply only), a few Adam steps."""
    torch.manual_seed(seed)
    rows, labels = [], []
    for p, r in zip(prompts, replies):
        a = tokenizer.encode(p, add_special_tokens=False)
        b = tokenizer.encode(r, add_special_tokens=False) + [tokenizer.eos_token_id]
        rows.append(a + b)
        labels.append([-100] * len(a) + b)
    L = max(map(len, rows))
    ids = torch.full((len(rows), L), tokenizer.pad_token_id)
    lab = torch.full((len(rows), L), -100)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, (r, y) in enumerate(zip(rows, labels)):
        ids[i, :len(r)], lab[i, :len(y)], mask[i, :len(r)] = torch.tensor(r), torch.tensor(y), 1
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def save(model, tokenizer, path: Path) -> Path:
    """Write ``model`` and ``tokenizer`` to ``path`` (a folder ``from_pretrained`` loads); returns ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
