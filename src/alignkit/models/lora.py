"""LoRA adapters through ``peft``."""

from __future__ import annotations

from alignkit.errors import UserError


def add_lora(model, r: int, alpha: int, dropout: float, targets: str):
    from peft import LoraConfig, get_peft_model

    names = [t.strip() for t in targets.split(",") if t.strip()]
    present = {n.split(".")[-1] for n, _ in model.named_modules()}
    missing = [t for t in names if t not in present]
    if missing:
        raise UserError(f"--lora-targets: the model has no modules named {', '.join(missing)} "
                        f"(linear layers it has: {', '.join(sorted(_linear_names(model)))})")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=names,
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _linear_names(model) -> set[str]:
    import torch

    return {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


def merged_copy_for_saving(model):
    """Fold adapters into the base weights (in place) and return the plain transformers model."""
    return model.merge_and_unload() if is_lora(model) else model


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def disable_dropout(model) -> int:
    """Set every dropout probability of ``model`` to 0 and return how many modules changed.

    RL and preference training compare log-probs of the same tokens from several forwards
    (rollout, "old" policy, reference, training step). Rollouts and the reference run in eval
    mode, so a training forward with dropout on would see a different function: the first PPO
    ratio would not be 1 and the KL at step 0 would not be 0. TRL and OpenRLHF switch dropout off
    in the policy for the same reason. Covers ``nn.Dropout`` modules and the attention dropout
    that Hugging Face models read from their config (``attention_dropout``)."""
    import torch

    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p != 0.0:
            module.p = 0.0
            changed += 1
        if hasattr(module, "attention_dropout") and isinstance(module.attention_dropout, float) \
                and module.attention_dropout != 0.0:
            module.attention_dropout = 0.0
            changed += 1
    for config in {id(m.config): m.config for m in model.modules()
                   if hasattr(m, "config") and hasattr(m.config, "to_dict")}.values():
        for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop",
                    "attn_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob"):
            if isinstance(getattr(config, key, None), float) and getattr(config, key) != 0.0:
                setattr(config, key, 0.0)
                changed += 1
    return changed
