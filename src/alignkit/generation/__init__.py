"""Sampling from a policy (grows into the shared sampler of the PPO stage)."""
