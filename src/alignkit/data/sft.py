"""SFT data preparation: read -> validate -> tokenise -> split, with clear errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from alignkit.data.mixture import Draw
from alignkit.data.readers import read_records
from alignkit.data.schemas import parse_sft, problem_of, validate
from alignkit.data.tokenize import TokenizedExample, tokenize_sft
from alignkit.errors import DataError, UserError, in_file_order


@dataclass
class SFTData:
    train: list[TokenizedExample]
    heldout: list[TokenizedExample]
    skipped: list[str]  # problems of records dropped by --skip-invalid
    drawn: dict = field(default_factory=dict)  # a mixture's or --oversample's draw (Draw.report)


def tokenize_file(spec: str, tokenizer, chat: str, train_on_prompt: bool, max_length: int,
                  skip_invalid: bool, draw: Draw | None = None
                  ) -> tuple[list[TokenizedExample], list[str]]:
    problems: list[str] = []
    records = read_records(spec, problems, draw, check=problem_of(parse_sft))
    if not records and not problems:
        raise UserError(f"{spec}: no records")
    # collect reader, record and tokenisation problems together: one pass fixes a file
    examples, problems = validate(records, parse_sft, skip_invalid=True, problems=problems)
    tokenized = []
    done: dict[str, TokenizedExample] = {}  # a record drawn several times is tokenised once
    for ex in examples:
        tok = done.get(ex.where) or tokenize_sft(ex, tokenizer, chat=chat,
                                                 train_on_prompt=train_on_prompt)
        done[ex.where] = tok
        if len(tok) > max_length:
            problems.append(f"{ex.where}: example is {len(tok)} tokens, longer than --max-length "
                            f"{max_length}")
        elif tok.num_targets == 0:
            problems.append(f"{ex.where}: nothing to learn (the response is empty after "
                            "tokenisation)")
        else:
            tokenized.append(tok)
    problems = in_file_order(list(dict.fromkeys(problems)))  # a record drawn twice: once
    if problems and not skip_invalid:
        raise DataError(problems)
    return tokenized, problems


def load_sft_data(cfg, tokenizer) -> SFTData:
    """Training and held-out examples: held out by ``--eval-data`` or by ``--eval-fraction``
    (a seeded shuffle, so the split is the same in every run with the same seed). The split is
    by record: every copy of a record drawn several times (``data.mixture``) lands on one side,
    and the held-out side keeps one copy."""
    if not cfg.data:
        raise UserError("--data is required (a .jsonl/.parquet/.csv file, a datasets folder, or "
                        "'demo')")
    draw = Draw.of(cfg)
    train, skipped = tokenize_file(cfg.data, tokenizer, cfg.chat, cfg.train_on_prompt,
                                   cfg.max_length, cfg.skip_invalid, draw)
    if cfg.eval_data:
        heldout, more = tokenize_file(cfg.eval_data, tokenizer, cfg.chat, cfg.train_on_prompt,
                                      cfg.max_length, cfg.skip_invalid, draw.for_eval())
        return SFTData(train, heldout, skipped + more, draw.report)
    if not 0.0 <= cfg.eval_fraction < 1.0:
        raise UserError(f"--eval-fraction must be in [0, 1), got {cfg.eval_fraction}")
    records = list(dict.fromkeys(e.where for e in train))
    n_eval = int(round(len(records) * cfg.eval_fraction))
    if cfg.eval_fraction > 0 and len(records) > 1:
        n_eval = min(max(n_eval, 1), len(records) - 1)
    order = torch.randperm(len(records),
                           generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    held = {records[i] for i in order[:n_eval]}
    return SFTData([e for e in train if e.where not in held],
                   list({e.where: e for e in train if e.where in held}.values()), skipped,
                   draw.report)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch: a pure function of (seed, epoch), so a resumed run
    finds its place from the step number alone."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def stream_batch_indices(k: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Indices of batch ``k`` when batches are cut from the endless stream of shuffled epochs:
    every batch is full (an epoch's tail continues into the next epoch's order), as RL rollout
    batches should be. A pure function of (k, seed), so a resumed run finds its place."""
    out: list[int] = []
    start = k * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        order = epoch_order(n, seed, epoch)
        out.extend(order[offset:offset + batch_size - len(out)])
    return out


def micro_batch_indices(k: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Example indices of global micro-batch ``k`` (epochs roll over; the last partial batch of an
    epoch is kept)."""
    per_epoch = -(-n // batch_size)
    epoch, i = divmod(k, per_epoch)
    return epoch_order(n, seed, epoch)[i * batch_size:(i + 1) * batch_size]


def token_budget_split(indices: list[int], lengths: Sequence[int], budget: int, ranks: int,
                       rank: int) -> list[list[int]]:
    """A step's examples (``indices`` into ``lengths``) cut into micro-batches by memory rather
    than by count: first shared out over ``ranks`` processes so that each gets about the same
    number of tokens (longest first, each to the process holding the fewest so far), then this
    ``rank``'s share cut, longest first, into micro-batches whose padded size (examples x the
    longest) stays within ``budget`` tokens. An example longer than the budget is a micro-batch
    of its own. Deterministic, and the same examples whatever the split: the losses are
    normalised by the whole step's counts, so only float rounding depends on it."""
    # by length, ties in step order (an example can appear twice when a step spans two epochs)
    by_length = [i for _, i in sorted(enumerate(indices), key=lambda p: (-lengths[p[1]], p[0]))]
    loads = [0] * ranks
    mine: list[int] = []
    for i in by_length:
        target = min(range(ranks), key=lambda r: (loads[r], r))
        loads[target] += lengths[i]
        if target == rank:
            mine.append(i)
    micro: list[list[int]] = []
    for i in mine:  # longest first: a micro-batch's first example is its longest
        if micro and (len(micro[-1]) + 1) * lengths[micro[-1][0]] <= budget:
            micro[-1].append(i)
        else:
            micro.append([i])
    return micro
