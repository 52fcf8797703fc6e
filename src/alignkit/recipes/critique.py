"""``alignkit critique``: the supervised stage of Constitutional AI (Bai et al. 2022).

For every prompt the policy
1. answers it (sampled with the shared sampler, seeded);
2. critiques its own answer against a principle drawn from the constitution (seeded per prompt
   and round, so the draw does not depend on batching);
3. revises the answer in the light of that critique (``--revisions N`` repeats 2-3 with a fresh
   principle each time).

The final revisions are written as SFT records ``{"prompt", "completion"}`` -- what
``alignkit sft`` reads -- with the principle(s), the original answer and the last critique kept
in extra fields. A revision that comes back empty cannot be learned from; its prompt is dropped
and counted. The file is written atomically (temp + rename). The pieces live in
``alignkit.judges.revision``.
"""

from __future__ import annotations

from collections import Counter

from alignkit.config import CritiqueConfig
from alignkit.errors import UserError
from alignkit.utils.files import write_jsonl_atomic


def check_flags(cfg: CritiqueConfig) -> None:
    if not cfg.data:
        raise UserError("--data is required")
    if cfg.revisions < 1:
        raise UserError(f"--revisions must be >= 1, got {cfg.revisions}")
    if cfg.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {cfg.max_new_tokens}")


def main(cfg: CritiqueConfig) -> dict:
    from alignkit.data.prompts import read_prompts
    from alignkit.generation.simple import generate
    from alignkit.judges.constitution import load_constitution
    from alignkit.judges.revision import critique_and_revise, revision_records
    from alignkit.generation.vllm_engine import engine_for
    from alignkit.models.loading import load_model_and_tokenizer, load_tokenizer, pick_device

    # 1. Flags, the constitution and the prompts, checked before the model loads.
    check_flags(cfg)
    constitution = load_constitution(cfg.constitution)
    items = read_prompts(cfg.data, cfg.max_prompts)
    if not items:
        raise UserError(f"{cfg.data}: no prompts")

    # 2. The policy (or a vLLM engine serving it): critique and revision are chat turns, so it
    #    needs a chat template.
    engine = engine_for(cfg, cfg.model)
    if engine is None:
        model, tokenizer = load_model_and_tokenizer(cfg.model, pick_device(cfg.device))
    else:
        model, tokenizer = None, load_tokenizer(cfg.model)
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{cfg.model}: critique and revision are chat turns, and this model's "
                        "tokenizer has no chat template")

    def ask(conversations: list, seed: int) -> list[str]:
        gens = generate(model, tokenizer, conversations, cfg.max_new_tokens,
                        do_sample=cfg.temperature > 0, temperature=cfg.temperature or 1.0,
                        top_p=cfg.top_p, batch_size=cfg.batch_size, seed=seed, engine=engine)
        return [g.text for g in gens]

    # 3. Answer, then critique and revise --revisions times.
    revisions = critique_and_revise(ask, [i["prompt"] for i in items], constitution,
                                    cfg.revisions, cfg.seed)

    # 4. The revisions as SFT records, written atomically; a summary of the principles drawn.
    records, dropped = revision_records(items, revisions)
    out = write_jsonl_atomic(records, cfg.output)
    counts = Counter(p for names in revisions.principles for p in names)
    print(f"wrote {len(records)} revised answer(s) -> {out} ({dropped} empty revision(s) "
          f"dropped; constitution {constitution.name!r}, {cfg.revisions} round(s))")
    for name, k in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {name:<32} {k}")
    return {"output": out, "records": len(records), "dropped": dropped,
            "principles": dict(counts)}
