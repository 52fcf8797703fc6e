"""The training engine: the one loop every trainer runs on (``engine``), the policy and its
reference (``policy``), rollouts (``rollout``), and the pieces of each kind of training that
more than one stage or tool uses: supervised fine-tuning (``sft``), reward models (``reward``),
preference optimisation (``preference``, ``online``), PPO (``ppo``) and the reward-hacking
monitor (``monitor``)."""
