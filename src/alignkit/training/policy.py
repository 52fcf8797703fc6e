"""The policy a trainer trains: loaded, with LoRA adapters when asked, dropout off unless kept,
and its reference (the model the KL / DPO terms compare with)."""

from __future__ import annotations

import copy

from alignkit.errors import UserError
from alignkit.models.loading import load_model_and_tokenizer
from alignkit.models.lora import add_lora, disable_dropout, is_lora, load_lora


def load_policy(cfg, device: str, *, dropout_off: bool | None = None):
    """``--model`` with LoRA adapters when ``--lora`` (fresh, or ``--lora-init``'s). Dropout is
    switched off unless ``--keep-dropout`` (or ``dropout_off=False``): the reference log-probs
    come from an eval-mode forward, and training forwards with dropout would compute another
    function (the first DPO loss would not be ln 2, PPO's first ratio not 1). Returns (model in
    train mode, tokenizer)."""
    if cfg.lora_init and not cfg.lora:
        raise UserError(f"--lora-init {cfg.lora_init}: goes on training LoRA adapters; add "
                        "--lora")
    model, tokenizer = load_model_and_tokenizer(cfg.model, device)
    if cfg.lora_init:
        model = load_lora(model, cfg.lora_init, cfg.lora_r, cfg.lora_alpha, cfg.lora_targets)
    elif cfg.lora:
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    if dropout_off is None:
        dropout_off = not getattr(cfg, "keep_dropout", True)
    if dropout_off:
        disable_dropout(model)
    model.train()
    return model, tokenizer


def frozen_reference(model):
    """The reference of a policy about to train: none with LoRA (the adapter-free policy is the
    reference, no second copy), else a frozen copy of the starting weights."""
    if is_lora(model):
        return None
    return copy.deepcopy(model).eval().requires_grad_(False)


def reference_mode(model) -> str:
    """How the reference is held, for the run's set-up row."""
    return ("lora: reference = adapters disabled (one model copy)" if is_lora(model)
            else "full: frozen reference copy")
