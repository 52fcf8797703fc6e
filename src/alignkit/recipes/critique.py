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
and counted. The file is written atomically (temp + rename).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from alignkit.config import CritiqueConfig
from alignkit.errors import UserError
from alignkit.recipes.common import log

REVISION_SUFFIX = " Reply with the revised response only."


def critique_messages(prompt, answer: str, principle) -> list[dict]:
    from alignkit.data.tokenize import as_messages

    return as_messages(prompt, "user") + [{"role": "assistant", "content": answer},
                                          {"role": "user", "content": principle.critique}]


def revision_messages(prompt, answer: str, principle, critique: str) -> list[dict]:
    return critique_messages(prompt, answer, principle) + [
        {"role": "assistant", "content": critique},
        {"role": "user", "content": principle.revision + REVISION_SUFFIX}]


def main(cfg: CritiqueConfig) -> dict:
    from alignkit.generation.simple import generate
    from alignkit.judges.constitution import load_constitution
    from alignkit.models.loading import load_model_and_tokenizer, pick_device
    from alignkit.recipes.label import read_prompts

    if not cfg.data:
        raise UserError("--data is required")
    if cfg.revisions < 1:
        raise UserError(f"--revisions must be >= 1, got {cfg.revisions}")
    if cfg.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {cfg.max_new_tokens}")
    constitution = load_constitution(cfg.constitution)
    items = read_prompts(cfg.data, cfg.max_prompts)
    if not items:
        raise UserError(f"{cfg.data}: no prompts")
    model, tokenizer = load_model_and_tokenizer(cfg.model, pick_device(cfg.device))
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{cfg.model}: critique and revision are chat turns, and this model's "
                        "tokenizer has no chat template")

    def ask(conversations: list, seed: int) -> list[str]:
        gens = generate(model, tokenizer, conversations, cfg.max_new_tokens,
                        do_sample=cfg.temperature > 0, temperature=cfg.temperature or 1.0,
                        top_p=cfg.top_p, batch_size=cfg.batch_size, seed=seed)
        return [g.text for g in gens]

    prompts = [i["prompt"] for i in items]
    # 1. First answers.
    originals = ask(prompts, cfg.seed)
    answers = list(originals)
    used: list[list[str]] = [[] for _ in items]
    critiques = [""] * len(items)
    for rnd in range(cfg.revisions):
        principles = [constitution.draw(cfg.seed, f"{n}:{rnd}") for n in range(len(items))]
        # 2. Critique against the drawn principle.
        critiques = ask([critique_messages(p, a, pr) for p, a, pr in
                         zip(prompts, answers, principles)], cfg.seed + 1 + 2 * rnd)
        # 3. Revise in its light.
        answers = ask([revision_messages(p, a, pr, c) for p, a, pr, c in
                       zip(prompts, answers, principles, critiques)], cfg.seed + 2 + 2 * rnd)
        for n, pr in enumerate(principles):
            used[n].append(pr.name)
        log.info("round %d of %d: critiqued and revised %d answers", rnd + 1, cfg.revisions,
                 len(items))
    records, dropped = [], 0
    for n, item in enumerate(items):
        if not answers[n].strip():
            dropped += 1
            continue
        rec = {"prompt": item["prompt"], "completion": answers[n], "principle": used[n][-1],
               "original": originals[n], "critique": critiques[n]}
        if cfg.revisions > 1:
            rec["principles"] = used[n]
        if item.get("category") is not None:
            rec["category"] = item["category"]
        records.append(rec)
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    tmp.replace(out)
    counts = Counter(p for names in used for p in names)
    print(f"wrote {len(records)} revised answer(s) -> {out} ({dropped} empty revision(s) "
          f"dropped; constitution {constitution.name!r}, {cfg.revisions} round(s))")
    for name, k in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {name:<32} {k}")
    return {"output": out, "records": len(records), "dropped": dropped,
            "principles": dict(counts)}
