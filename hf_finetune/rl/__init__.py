"""Reinforcement-learning fine-tuning of causal language models: PPO, GRPO, RLOO and shared rewards."""
