"""RL for audio language models, split by job (data flows one way: rl -> checkpoints -> adt_probe -> analyses).

``rl.data``      synthetic audio reasoning tasks, the JSONL item format, chat prompts, batching
``rl.organism``  the tiny Qwen3-Omni-MoE thinker: build, load, train the base model
``rl.rewards``   reward functions with TRL's signature and their registry; the sentence embedder
``rl.judge``     LLM judges (in-process or an OpenAI-compatible server) for the reasoning rewards
``rl.train``     the GRPO loop, rollouts, configs, checkpoints, the curriculum
``rl.evaluate``  held-out accuracy, think-rate and process scores with intervals
"""
