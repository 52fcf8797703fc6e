"""K sampled responses per prompt, for stages that have people or judges compare them
(``alignkit label``, ``alignkit annotate add-tasks``, the demo's labelling stage)."""

from __future__ import annotations

from alignkit.data.tokenize import use_chat_template
from alignkit.generation.sampler import SAMPLING_BATCH, row_seed
from alignkit.utils.distributed import World, gather_shares, share
from alignkit.utils.logs import log


def sample_responses(model, tokenizer, items: list[dict], num_responses: int,
                     max_new_tokens: int, temperature: float, top_p: float, batch_size: int,
                     seed: int, world: World = World(), engine=None,
                     progress: str | None = None) -> None:
    """Fill ``responses`` (and ``ended``) of the items that have none with K policy samples.
    Sample j of item i draws from its own stream, seeded by (``seed``, i, j), so an item's
    responses do not depend on the others. Under torchrun (``world``) each process samples its
    contiguous share of those items, and every process ends with all of them filled.
    ``engine``: a rollout engine that writes them (``model`` may then be None). ``progress``: the
    description of a progress bar over the answers (None: none; under torchrun the first process
    shows its own share)."""
    from alignkit.generation.simple import generate

    need = [n for n, i in enumerate(items) if i.get("responses") is None]
    if not need:
        return
    for n in need:  # a chat-message prompt on a model without a chat template: name its line
        use_chat_template(tokenizer, "auto", isinstance(items[n]["prompt"], list),
                          items[n].get("where", ""))
    mine = share(need, world)
    part: list[tuple[list[str], list[bool]]] = []
    if mine:
        gens = generate(model, tokenizer,
                        [items[n]["prompt"] for n in mine for _ in range(num_responses)],
                        max_new_tokens, do_sample=True, temperature=temperature, top_p=top_p,
                        batch_size=batch_size, seed=seed,
                        row_seeds=[row_seed(seed, n, j) for n in mine
                                   for j in range(num_responses)], engine=engine,
                        progress=progress if world.is_main else None)
        for p in range(len(mine)):
            chunk = gens[p * num_responses:(p + 1) * num_responses]
            part.append(([g.text for g in chunk], [g.ended for g in chunk]))
    for n, (texts, ended) in zip(need, gather_shares(part, world)):
        items[n]["responses"], items[n]["ended"] = texts, ended
    log.info("sampled %d responses for %d prompts", len(need) * num_responses, len(need))


def sample_diverse_responses(model, tokenizer, items: list[dict], num_responses: int,
                             max_new_tokens: int, temperatures: list[float], seed: int,
                             batch_size: int = SAMPLING_BATCH, base_model=None,
                             base_responses: int = 0,
                             engine=None, progress: str | None = None) -> None:
    """Fill each item's K = ``num_responses`` answers from several sources, as InstructGPT
    labelled answers of several policies and temperatures (Ouyang et al. 2022): the answers of
    one policy at one temperature are alike, and a reward model learns little from ranking
    near-twins. ``base_responses`` of them come from ``base_model`` (the model before
    fine-tuning, at temperature 1), the rest from ``model``, shared out over ``temperatures`` in
    turn. Source k draws its own streams, seeded by (``seed`` + 7919 k, item, sample); with one
    temperature and no base answers this is ``sample_responses`` exactly. ``engine``: writes
    ``model``'s answers (the base model's are its own)."""
    if not 0 <= base_responses < num_responses or not temperatures:
        raise ValueError("need at least one policy answer per prompt and one temperature")
    counts = [0] * len(temperatures)
    for j in range(num_responses - base_responses):
        counts[j % len(temperatures)] += 1
    sources = [(model, t, c, engine) for t, c in zip(temperatures, counts) if c]
    if base_responses:
        sources.append((base_model, 1.0, base_responses, None))
    filled = [dict(i, responses=[], ended=[]) for i in items]
    for k, (writer, temperature, count, eng) in enumerate(sources):
        part = [dict(i, responses=None, ended=None) for i in items]
        sample_responses(writer, tokenizer, part, count, max_new_tokens, temperature, 1.0,
                         batch_size, seed + 7919 * k, engine=eng,
                         progress=progress and f"{progress}, {count} at temperature "
                                               f"{temperature:g}"
                                               + (" (base model)" if writer is base_model
                                                  and base_responses else ""))
        for whole, some in zip(filled, part):
            whole["responses"] += some["responses"]
            whole["ended"] += some["ended"]
    for item, whole in zip(items, filled):
        item["responses"], item["ended"] = whole["responses"], whole["ended"]


def sample_missing(items: list[dict], cfg, world: World = World(), device: str | None = None):
    """Load the policy ``cfg.model`` only when some item has no ``responses``, and sample them
    with the config's sampling fields (``num_responses``, ``max_new_tokens``, ``temperature``,
    ``top_p``, ``batch_size``, ``seed``, ``device``), each process its share under torchrun
    (``world``; ``device``: this process's, default ``cfg.device``). Returns the policy's
    tokenizer (it counts tokens for the gold scorer), or None when nothing was sampled. The
    model is freed on return."""
    if all(i.get("responses") is not None for i in items):
        return None
    from alignkit.generation.vllm_engine import engine_for
    from alignkit.models.loading import load_model_and_tokenizer, load_tokenizer, pick_device

    engine = engine_for(cfg, cfg.model)
    if engine is None:
        model, tokenizer = load_model_and_tokenizer(cfg.model, device or pick_device(cfg.device))
    else:  # the engine holds the weights; alignkit only needs the tokenizer
        model, tokenizer = None, load_tokenizer(cfg.model)
    try:
        sample_responses(model, tokenizer, items, cfg.num_responses, cfg.max_new_tokens,
                         cfg.temperature, cfg.top_p, cfg.batch_size, cfg.seed, world, engine)
    finally:
        if engine is not None:
            engine.close()
    return tokenizer
