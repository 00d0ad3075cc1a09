"""SB3 agents (DQN, A2C, PPO) that read text observations through a pretrained LM encoder."""
