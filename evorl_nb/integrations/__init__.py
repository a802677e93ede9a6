"""Found losses inside other RL libraries (optional extras; nothing here is imported by
``evorl_nb`` itself). ``evorl_nb.integrations.sb3``: Stable-Baselines3's DQN."""
