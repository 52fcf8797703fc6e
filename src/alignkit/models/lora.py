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
