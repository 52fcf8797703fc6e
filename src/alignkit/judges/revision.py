"""The supervised stage of Constitutional AI (Bai et al. 2022): a policy answers, critiques its
own answer against a principle drawn from a constitution, and revises it in the light of that
critique, for one or more rounds; the final revisions become SFT records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from alignkit.utils.logs import log

REVISION_SUFFIX = " Reply with the revised response only."

# ask(conversations, seed) -> one answer per conversation (a prompt or a message list)
Ask = Callable[[list, int], list[str]]


def critique_messages(prompt, answer: str, principle) -> list[dict]:
    from alignkit.data.tokenize import as_messages

    return as_messages(prompt, "user") + [{"role": "assistant", "content": answer},
                                          {"role": "user", "content": principle.critique}]


def revision_messages(prompt, answer: str, principle, critique: str) -> list[dict]:
    return critique_messages(prompt, answer, principle) + [
        {"role": "assistant", "content": critique},
        {"role": "user", "content": principle.revision + REVISION_SUFFIX}]


@dataclass
class Revisions:
    originals: list[str]  # the first answer to each prompt
    answers: list[str]  # the last revision of each
    critiques: list[str]  # the last critique of each
    principles: list[list[str]]  # the principle drawn for each prompt, round by round


def critique_and_revise(ask: Ask, prompts: list, constitution, rounds: int,
                        seed: int) -> Revisions:
    """Answer every prompt, then ``rounds`` times critique the current answer against a
    principle drawn per prompt and round (seeded by position, so the draw does not depend on
    batching) and revise it. Each call of ``ask`` gets its own seed."""
    originals = ask(prompts, seed)
    answers = list(originals)
    used: list[list[str]] = [[] for _ in prompts]
    critiques = [""] * len(prompts)
    for rnd in range(rounds):
        principles = [constitution.draw(seed, f"{n}:{rnd}") for n in range(len(prompts))]
        critiques = ask([critique_messages(p, a, pr) for p, a, pr in
                         zip(prompts, answers, principles)], seed + 1 + 2 * rnd)
        answers = ask([revision_messages(p, a, pr, c) for p, a, pr, c in
                       zip(prompts, answers, principles, critiques)], seed + 2 + 2 * rnd)
        for n, pr in enumerate(principles):
            used[n].append(pr.name)
        log.info("round %d of %d: critiqued and revised %d answers", rnd + 1, rounds,
                 len(prompts))
    return Revisions(originals, answers, critiques, used)


def revision_records(items: list[dict], revisions: Revisions) -> tuple[list[dict], int]:
    """SFT records ``{prompt, completion}`` of the final revisions, with the principle(s), the
    original answer and the last critique kept in extra fields. A revision that came back empty
    cannot be learned from: its prompt is dropped (counted)."""
    records, dropped = [], 0
    for n, item in enumerate(items):
        if not revisions.answers[n].strip():
            dropped += 1
            continue
        used = revisions.principles[n]
        rec = {"prompt": item["prompt"], "completion": revisions.answers[n],
               "principle": used[-1], "original": revisions.originals[n],
               "critique": revisions.critiques[n]}
        if len(used) > 1:
            rec["principles"] = used
        if item.get("category") is not None:
            rec["category"] = item["category"]
        records.append(rec)
    return records, dropped
