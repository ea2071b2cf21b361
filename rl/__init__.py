"""RL: items, rewards and training for audio multiple-choice reasoning."""
