"""Sampling from a policy: the shared batched sampler every stage draws with, and the optional
vLLM rollout engine behind it (``vllm_engine``)."""
