"""K sampled responses per prompt, for stages that have people or judges compare them
(``alignkit label``, ``alignkit annotate add-tasks``, the demo's labelling stage)."""

from __future__ import annotations

from alignkit.data.tokenize import use_chat_template
from alignkit.utils.logs import log


def sample_responses(model, tokenizer, items: list[dict], num_responses: int,
                     max_new_tokens: int, temperature: float, top_p: float, batch_size: int,
                     seed: int) -> None:
    """Fill ``responses`` (and ``ended``) of the items that have none with K policy samples."""
    from alignkit.generation.simple import generate

    need = [i for i in items if i.get("responses") is None]
    if not need:
        return
    for item in need:  # a chat-message prompt on a model without a chat template: name its line
        use_chat_template(tokenizer, "auto", isinstance(item["prompt"], list),
                          item.get("where", ""))
    flat = [i["prompt"] for i in need for _ in range(num_responses)]
    gens = generate(model, tokenizer, flat, max_new_tokens, do_sample=True,
                    temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed)
    for n, item in enumerate(need):
        chunk = gens[n * num_responses:(n + 1) * num_responses]
        item["responses"] = [g.text for g in chunk]
        item["ended"] = [g.ended for g in chunk]
    log.info("sampled %d responses for %d prompts", len(gens), len(need))


def sample_missing(items: list[dict], cfg):
    """Load the policy ``cfg.model`` only when some item has no ``responses``, and sample them
    with the config's sampling fields (``num_responses``, ``max_new_tokens``, ``temperature``,
    ``top_p``, ``batch_size``, ``seed``, ``device``). Returns the policy's tokenizer (it counts
    tokens for the gold scorer), or None when nothing was sampled. The model is freed on
    return."""
    if all(i.get("responses") is not None for i in items):
        return None
    from alignkit.models.loading import load_model_and_tokenizer, pick_device

    model, tokenizer = load_model_and_tokenizer(cfg.model, pick_device(cfg.device))
    sample_responses(model, tokenizer, items, cfg.num_responses, cfg.max_new_tokens,
                     cfg.temperature, cfg.top_p, cfg.batch_size, cfg.seed)
    return tokenizer
