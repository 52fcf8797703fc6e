"""LoRA adapters through ``peft``."""

from __future__ import annotations

from alignkit.errors import UserError


def add_lora(model, r: int, alpha: int, dropout: float, targets: str,
             task_type: str = "CAUSAL_LM"):
    """``model`` wrapped by peft with trainable LoRA adapters on the ``targets`` modules (the
    rest frozen). ``task_type``: ``CAUSAL_LM`` for a policy, ``FEATURE_EXTRACTION`` for a bare
    backbone whose hidden states a head reads (a reward member)."""
    from peft import LoraConfig, get_peft_model

    names = [t.strip() for t in targets.split(",") if t.strip()]
    present = {n.split(".")[-1] for n, _ in model.named_modules()}
    missing = [t for t in names if t not in present]
    if missing:
        raise UserError(f"--lora-targets: the model has no modules named {', '.join(missing)} "
                        f"(linear layers it has: {', '.join(sorted(_linear_names(model)))})")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=names,
                        bias="none", task_type=task_type)
    return get_peft_model(model, config)


def read_adapter_config(adapter) -> dict:
    """``adapter_config.json`` of the peft adapter folder ``adapter``; unreadable or not JSON:
    a ``UserError`` naming the file."""
    import json
    from pathlib import Path

    config_file = Path(adapter) / "adapter_config.json"
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{config_file}: not readable ({e})") from None


def load_lora(model, folder: str, r: int, alpha: int, targets: str):
    """``model`` with the trainable peft LoRA adapters saved in ``folder`` (an adapter folder,
    or a saved model folder with ``adapter/`` inside). Their rank, alpha and target modules must
    be ``r``, ``alpha`` and ``targets`` (the run's --lora-* flags), so that a run's config says
    what it trains; the adapters were trained on ``model``'s weights."""
    from pathlib import Path

    from peft import PeftModel

    path = Path(folder)
    if not (path / "adapter_config.json").is_file() and (path / "adapter").is_dir():
        path = path / "adapter"
    if not (path / "adapter_config.json").is_file():
        raise UserError(f"--lora-init {folder}: no adapter_config.json there (a peft adapter "
                        "folder, or a saved model folder with adapter/ inside)")
    saved = read_adapter_config(path)
    wanted = {"r": r, "lora_alpha": alpha,
              "target_modules": sorted(t.strip() for t in targets.split(",") if t.strip())}
    found = {"r": saved.get("r"), "lora_alpha": saved.get("lora_alpha"),
             "target_modules": sorted(saved.get("target_modules") or [])}
    flags = {"r": "--lora-r", "lora_alpha": "--lora-alpha", "target_modules": "--lora-targets"}
    differ = [f"{flags[k]} {wanted[k]} but the adapters have {found[k]}"
              for k in wanted if wanted[k] != found[k]]
    if differ:
        raise UserError(f"{path / 'adapter_config.json'}: " + "; ".join(differ)
                        + " (pass the adapters' values)")
    return PeftModel.from_pretrained(model, str(path), is_trainable=True)


def _linear_names(model) -> set[str]:
    import torch

    return {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


def merged_copy_for_saving(model):
    """Fold adapters into the base weights (in place) and return the plain transformers model."""
    return model.merge_and_unload() if is_lora(model) else model


def merged_state_dict(model) -> dict:
    """The state dict of the plain transformers model under ``model``'s adapters, with each
    adapted weight replaced by W + scale * B @ A; ``model`` itself is left as it is (no merge
    and unmerge, whose float round trip would change the weights still being trained). A model
    without adapters: its own state dict."""
    if not is_lora(model):
        return model.state_dict()
    from peft.tuners.lora import LoraLayer

    inner = model.get_base_model()
    merged = {}
    for name, module in inner.named_modules():
        if isinstance(module, LoraLayer):
            delta = sum(module.get_delta_weight(a) for a in module.active_adapters
                        if a in module.lora_A)
            merged[f"{name}.weight"] = module.get_base_layer().weight.detach() + delta
    state = {}
    for key, value in inner.state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        state[key] = merged.get(key, value)
    return state


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
