"""``alignkit ppo``: stage 3 of RLHF. The policy samples responses to prompts, a reward model
scores them, a KL penalty to the frozen reference (the starting policy) keeps it honest, and
PPO's clipped objective takes a few careful steps on each batch (Ouyang et al. 2022; Ziegler et
al. 2019; Huang et al. 2024, "The N Implementation Details of RLHF with PPO").

One loop serves four advantage estimators (``--advantage``): GAE with a value head (PPO), RLOO
and GRPO (k samples per prompt, group baselines, no critic) and REINFORCE++ (global baseline).
The math lives in ``alignkit.losses.ppo``, the pieces in ``alignkit.training.ppo``; this file
only orchestrates.

Memory: with ``--lora`` the reference is the same weights with the adapters switched off (one
copy of the model) and the value head sits on the policy's backbone; full fine-tuning keeps a
frozen reference copy. ``metrics.jsonl`` names the mode of the run.
"""

from __future__ import annotations

from alignkit.config import PPOConfig
from alignkit.data.prompts import load_prompt_sets
from alignkit.data.sft import stream_batch_indices
from alignkit.errors import UserError
from alignkit.losses import ppo as rl
from alignkit.models.lora import disable_dropout
from alignkit.models.reward import RewardFunction
from alignkit.training.engine import Trainer, start_run
from alignkit.training.monitor import HackingMonitor
from alignkit.training.policy import frozen_reference, load_policy, reference_mode
from alignkit.training.ppo import (PolicyAndValue, RewardNormalisation, build_value_model,
                                   fit_reward_normalisation, optimizer_steps_per_batch,
                                   ppo_step, save_trained_policy)
from alignkit.training.rollout import rollout_engine
from alignkit.utils.distributed import launched_world



def check_flags(cfg: PPOConfig) -> None:
    if cfg.advantage in ("rloo", "grpo") and cfg.samples_per_prompt < 2:
        raise UserError(f"--advantage {cfg.advantage} compares samples of one prompt: set "
                        "--samples-per-prompt 2 or more")
    if cfg.ppo_epochs < 1 or cfg.batch_size < 1 or cfg.minibatch_size < 1:
        raise UserError("--ppo-epochs, --batch-size and --minibatch-size must be >= 1")
    if cfg.select_by == "gold" and not cfg.gold:
        raise UserError("--select-by gold needs the gold scorer (--gold); a run without it "
                        "selects by lcb or proxy")
    if cfg.eval_adversarial.lower() != "none" and not cfg.eval_data:
        raise UserError("--eval-adversarial is answered at each reading of the monitor: set "
                        "--eval-data (the monitor's held-out prompts)")
    if cfg.rollout_is_cap > 0 and cfg.rollout_engine != "vllm":
        raise UserError("--rollout-is-cap corrects for a rollout engine's numerics: it needs "
                        "--rollout-engine vllm")
    processes = launched_world().size
    if cfg.batch_size < processes:
        raise UserError(f"--batch-size {cfg.batch_size} is fewer prompts than the {processes} "
                        "processes that share them out; raise it or launch fewer")


def main(cfg: PPOConfig, reward_fn=None) -> dict:
    """Run stage 3. ``reward_fn`` (Python API only): any callable ``(prompts, responses) ->
    {"combined": (B,) tensor[, "mean", "std"]}`` used instead of ``--reward-model`` (a rule-based
    or programmatic reward)."""
    # 1. Flags, output folder, resolved config, seed, device.
    run = start_run(cfg, validate=lambda: check_flags(cfg))
    device = run.device

    # 2. Policy and reference (LoRA: the adapter-free policy; full: a frozen copy).
    policy, tokenizer = load_policy(cfg, device, dropout_off=False)
    if tokenizer.eos_token_id is None:
        raise UserError(f"{cfg.model}: the tokenizer has no EOS token; a policy must be able to "
                        "end its answer")
    reference = frozen_reference(policy)

    # 3. Prompts (train, held-out), the reward function, the KL controller.
    train, heldout = load_prompt_sets(cfg, tokenizer)  # held-out: None without --eval-data
    reward_fn = reward_fn or RewardFunction(cfg.reward_model, device, cfg.combine,
                                            cfg.uncertainty_penalty, cfg.reward_members)
    kl_ctl = (rl.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
              if cfg.adaptive_kl else rl.FixedKLController(cfg.kl_coef))
    engine = rollout_engine(cfg, policy)  # --rollout-engine vllm: it follows every update
    monitor = heldout and HackingMonitor(heldout, cfg, tokenizer, run.world, engine)

    # 4. The value model (GAE only); dropout off everywhere unless --keep-dropout.
    value_head, critic, critic_mode = build_value_model(policy, reference, reward_fn, tokenizer,
                                                        cfg, device)
    parts = PolicyAndValue(policy, value_head, critic)
    if not cfg.keep_dropout:
        disable_dropout(parts)
    parts.train()

    # 5. The loop: optimiser and schedule over every optimiser step of the run; resume restores
    #    the KL controller, the monitor and the refitted reward normalisation too.
    normalisation = RewardNormalisation(reward_fn, cfg.reward_normalization == "reference")
    state = {"kl_controller": kl_ctl, "reward_normalization": normalisation,
             **({"monitor": monitor} if monitor is not None else {})}
    trainer = Trainer(run, parts, max(1, cfg.max_steps), name="ppo", counter="rollouts",
                      optimizer_steps_per_step=optimizer_steps_per_batch(cfg),
                      extra_state=state, checkpoint_at_end=True)
    trainer.resume()
    trainer.hold_frozen(reference)  # under FSDP the reference copy is sharded too
    if cfg.reward_normalization == "reference" and trainer.start_step == 0:
        with trainer.unsharded():
            refit = fit_reward_normalisation(policy, reward_fn, tokenizer, train, cfg, engine)
        trainer.log(0, {"reward_offset_before": refit["before"]["offset"],
                        "reward_scale_before": refit["before"]["scale"],
                        "reward_offset": refit["after"]["offset"],
                        "reward_scale": refit["after"]["scale"]}, split="normalization")
    trainer.log_setup({"train_prompts": len(train.ids),
                       "heldout_prompts": len(heldout.ids) if heldout else 0,
                       "mode": reference_mode(policy) + critic_mode, "advantage": cfg.advantage,
                       **train.drawn})

    # 6. A step: sample -> score -> advantages -> PPO epochs -> the KL controller.
    def train_step(step: int) -> dict:
        indices = stream_batch_indices(step, len(train.ids), cfg.batch_size, cfg.seed)
        return ppo_step(parts, reference, reward_fn, tokenizer, train, indices, kl_ctl, trainer,
                        cfg, step, engine)

    # 7. The monitor before training, every --eval-every steps and at the end; it keeps best/.
    def run_monitor(step: int) -> dict | None:
        if monitor is None:
            return None
        row = monitor.reading(step, parts, reference, reward_fn, tokenizer, device)
        if monitor.improved(row):
            save_trained_policy(trainer, parts, tokenizer, "best", keep_training=True)
            trainer.log(step, monitor.best_row(), split="best")
        if row["warnings"] and cfg.stop_on_hacking:
            trainer.stop("--stop-on-hacking")
        return row

    trainer.fit(train_step, run_monitor,
                progress=lambda row: {"score": f"{row['score']:.2f}", "kl": f"{row['kl']:.2f}"})
    if monitor is not None and monitor.best is not None:  # the choice against every reading
        trainer.log(trainer.state.step, monitor.best_row(), split="best")
    trainer.finish()

    # 8. Final policy (LoRA merged) + value head (first process); the monitor kept best/.
    final = save_trained_policy(trainer, parts, tokenizer, "final", keep_training=False)
    best = run.output / "best"
    return {"final": final, "best": best if best.exists() else None,
            "metrics": run.output / "metrics.jsonl",
            "monitor": monitor.history if monitor else [],
            "stopped_by_monitor": trainer.stop_reason is not None}
