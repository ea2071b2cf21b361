"""Training: the GRPO loop (``grpo``), sampling completions (``rollout``), run configs (``config``), atomic resumable
checkpoints (``checkpoint``) and the two-stage curriculum (``curriculum``)."""
