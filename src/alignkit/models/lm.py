"""Forward helpers shared by the stages: backbone hidden states and logits only where needed."""

from __future__ import annotations

import torch


def backbone(model):
    """The decoder stack of a causal LM (works through a peft wrapper: LoRA layers live inside)."""
    inner = model.get_decoder() if hasattr(model, "get_decoder") else None
    if inner is None:
        inner = getattr(model, getattr(model, "base_model_prefix", "model"))
    return inner


def output_head(model):
    return model.get_output_embeddings()


def hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  position_ids: torch.Tensor) -> torch.Tensor:
    """(R, L) ids -> (R, L, H) final hidden states (after the final norm)."""
    out = backbone(model)(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def logits_at(model, hidden: torch.Tensor) -> torch.Tensor:
    """(N, H) hidden states -> (N, V) logits, with the model's final soft-capping if it has one.
    Applying the LM head only at target positions skips the vocabulary projection of prompt
    tokens (a fifth of SmolLM2's compute)."""
    logits = output_head(model)(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
