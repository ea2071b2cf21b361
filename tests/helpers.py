"""Builders shared by test modules: tiny configs and models made from configs (fast, no downloads, seeded).

Test modules import builders from here, never from each other; benchmarks use ``rl.testing`` / ``adt_probe.testing``.
"""

import json

import numpy as np
import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from rl.rewards.registry import register_reward


@register_reward("test_tokens")
def tokens_reward(prompts, completions, completion_ids, **kwargs):
    """Mean token id: varies between completions of a random model, so advantages are non-zero. ``tiny_config``'s
    stage uses it."""
    return [float(np.mean(ids)) / 400 if ids else 0.0 for ids in completion_ids]


def tiny_config(model_dir, **sections) -> dict:
    cfg = {"model": str(model_dir), "seed": 0, "threads": 1,
           "grpo": {"num_generations": 2, "batch_size": 2, "max_new_tokens": 6, "allow_truncated_chains": True},
           "optim": {"lr": 1e-3}, "checkpoint": {"every": 1, "keep_last": 0},
           "logging": {"progress_bar": False, "completions_per_step": 3},
           "stages": [{"name": "s1", "steps": 2, "rewards": {"accuracy": 1.0, "format": 0.25, "test_tokens": 1.0},
                       "data": {"n_items": 3, "seed": 5, "families": ["pitch_compare"]}}]}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def to_toml(cfg: dict) -> str:
    """A tiny TOML writer for the test configs (tables, arrays of tables, scalars, inline tables)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        raise TypeError(v)

    lines = [f"{k} = {value(v)}" for k, v in cfg.items() if not isinstance(v, (dict, list)) or
             (isinstance(v, list) and not (v and isinstance(v[0], dict)))]
    for k, v in cfg.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {value(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for entry in v:
                lines.append(f"[[{k}]]")
                lines += [f"{kk} = {value(vv)}" for kk, vv in entry.items()]
    return "\n".join(lines) + "\n"


def tiny_moe(n_layers: int = 6) -> Qwen3MoeForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(vocab_size=96, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                         num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, max_position_embeddings=64)
    model = Qwen3MoeForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0, 1.0)  # decisive routing, as in a trained model
    return model
