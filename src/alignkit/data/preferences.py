"""Preference data for reward training: read -> validate -> tokenise -> group by prompt -> collate.

Pairwise records (``prompt, chosen, rejected``, optional ``margin``, ``annotator``, ``aspect``,
``tie``) and K-way rankings (``prompt, responses, ranking`` best first) become
``PreferenceGroup``s: one per prompt, holding the token ids of each distinct response once and
every comparison among them. A batch holds whole groups, so the K(K-1)/2 pairs of a ranking are
seen together and each prompt can weigh the same (InstructGPT, Ouyang et al. 2022, sec. 3.5; see
``alignkit.losses.reward.per_prompt_weights``), and a response that appears in several pairs is
run through the model once.

How a response is encoded depends on the reward model's backbone:
- ``causal``: prompt as the user turn and response as the assistant turn, rendered with the
  tokenizer's chat template when it has one (same rules as ``data.tokenize.use_chat_template``),
  else ``prompt + response + EOS``; the reward is read at the last non-padding token
  (``PreferenceBatch.last_index``).
- ``encoder`` (sequence classification, e.g. MiniLM): the (prompt, response) text pair, with the
  tokenizer's own special tokens and ``token_type_ids``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from alignkit.data.collate import pack_rows
from alignkit.data.mixture import Draw
from alignkit.data.readers import Record, read_records
from alignkit.data.schemas import (PreferenceExample, RankingExample, RecordProblem, SFTExample,
                                   Text, parse_preference, parse_ranking, problem_of, validate)
from alignkit.data.tokenize import IGNORE, as_messages, tokenize_sft, use_chat_template
from alignkit.errors import DataError, UserError, in_file_order
from alignkit.losses.reward import ranking_to_pairs

BACKBONES = ("causal", "encoder")  # reward-model backbones; "policy" encodes for DPO
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no", "")


# ----------------------------------------------------------------------------- records


@dataclass
class PreferencePair(PreferenceExample):
    """A pairwise record; ``tie`` (``"tie": true``) says neither response is better."""

    tie: bool = False


def _same(a: Text, b: Text) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    return a == b


def _tie(fields: dict) -> bool:
    value = fields.get("tie", False)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:  # CSV cells are text
        return value.strip().lower() in _TRUE
    raise RecordProblem("tie", 'field "tie" must be true or false')


def parse_pair(rec: Record) -> PreferencePair:
    """``schemas.parse_preference`` plus the checks a comparison needs: chosen and rejected must
    differ, and ``tie`` must be a boolean (a tie carries no margin)."""
    ex = parse_preference(rec)
    if _same(ex.chosen, ex.rejected):
        raise RecordProblem("rejected", 'field "rejected": chosen and rejected are identical (a '
                            'comparison needs two different responses; a tie is "tie": true)')
    tie = _tie(rec.fields)
    if tie and ex.margin != 0.0:
        raise RecordProblem("margin", 'field "margin" must be 0 for a tie ("tie": true)')
    return PreferencePair(ex.prompt, ex.chosen, ex.rejected, ex.margin, ex.annotator, ex.aspect,
                          where=ex.where, tie=tie)


def parse_ranked(rec: Record) -> RankingExample:
    """``schemas.parse_ranking`` plus: no two responses of a ranking may be identical."""
    ex = parse_ranking(rec)
    for j, r in enumerate(ex.responses):
        for i in range(j):
            if _same(ex.responses[i], r):
                raise RecordProblem("responses", f'field "responses"[{j}] is identical to '
                                    f'"responses"[{i}] (a ranking needs different responses)')
    return ex


def parse_comparison(rec: Record) -> PreferencePair | RankingExample:
    """A record with ``responses`` is a ranking, any other a pairwise preference; one with the
    fields of both is refused (which of them it means cannot be guessed)."""
    if "responses" in rec.fields:
        pair_fields = [f'"{name}"' for name in ("chosen", "rejected") if name in rec.fields]
        if pair_fields:
            raise RecordProblem("responses", f'a ranking ("responses") and a pair '
                                f'({" and ".join(pair_fields)}) in one record: keep one')
        return parse_ranked(rec)
    return parse_pair(rec)


# ----------------------------------------------------------------------------- tokenising


def _flat(text: Text) -> str:
    """Plain text of a field for an encoder: the string, or messages one per line (a single
    message as its bare content)."""
    if isinstance(text, str):
        return text
    if len(text) == 1:
        return text[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in text)


def encode_response(tokenizer, prompt: Text, response: Text, backbone: str = "causal",
                    chat: str = "auto", where: str = "") -> tuple[list[int], list[int] | None]:
    """Token ids (and token type ids, for an encoder that has them, else None) of one
    (prompt, response) for a reward model; see the module docstring. ``backbone="policy"``
    (DPO): the SFT encoding and its shifted targets (``data.tokenize``) instead of type ids."""
    if backbone == "encoder":
        enc = tokenizer(_flat(prompt), _flat(response), add_special_tokens=True)
        return list(enc["input_ids"]), (list(enc["token_type_ids"])
                                        if "token_type_ids" in enc else None)
    if backbone == "policy":  # DPO: the SFT encoding, targets on the response tokens only
        example = tokenize_sft(SFTExample("prompt_completion", prompt, response, where=where),
                               tokenizer, chat)
        return example.input_ids, example.targets
    if backbone != "causal":
        raise UserError(f"unknown reward-model backbone {backbone!r}; choose one of "
                        f"{', '.join(BACKBONES)}")
    needs_chat = isinstance(prompt, list) or isinstance(response, list)
    if use_chat_template(tokenizer, chat, needs_chat, where):
        messages = as_messages(prompt, "user") + as_messages(response, "assistant")
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        eos = tokenizer.eos_token_id
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        ids = ids + tokenizer(response, add_special_tokens=False)["input_ids"]
        ids = ids + ([eos] if eos is not None else [])
    return strip_padding_tail(ids, tokenizer.pad_token_id), None


def strip_padding_tail(ids: list[int], pad_id: int | None) -> list[int]:
    """A causal reward reads the last token that is not the padding token (as a
    ``*ForSequenceClassification`` does): trailing padding tokens (an EOS that doubles as padding)
    change nothing before them, so they are dropped rather than computed."""
    end = len(ids)
    while end > 1 and ids[end - 1] == pad_id:
        end -= 1
    return ids[:end]


# ----------------------------------------------------------------------------- groups


@dataclass
class Comparison:
    """``better`` beat ``worse`` (indices into the group's responses); ``label`` is the
    probability that ``better`` is preferred: 1, or 0.5 for a tie. ``weight``: the annotator's
    reliability weight (1 by default)."""

    better: int
    worse: int
    margin: float = 0.0
    weight: float = 1.0
    label: float = 1.0
    annotator: str | None = None
    aspect: str | None = None
    where: str = ""
    ranking: int = -1  # index in the group's rankings when the pair comes from one


@dataclass
class Ranking:
    """A full ranking (indices into the group's responses, best first), for a Plackett-Luce
    loss; its K(K-1)/2 pairs are also among the group's comparisons."""

    order: list[int]
    weight: float = 1.0
    annotator: str | None = None
    aspect: str | None = None
    where: str = ""


@dataclass
class PreferenceGroup:
    """All comparisons of one prompt. ``input_ids[i]`` encodes ``responses[i]`` (with the prompt);
    ``token_type_ids`` is set for encoders whose tokenizer has them. ``where``: the first record."""

    prompt: Text
    responses: list = field(default_factory=list)
    input_ids: list[list[int]] = field(default_factory=list)
    token_type_ids: list[list[int]] | None = None
    targets: list[list[int]] | None = None  # backbone "policy": shifted targets per response
    pairs: list[Comparison] = field(default_factory=list)
    rankings: list[Ranking] = field(default_factory=list)
    where: str = ""
    # groups of one unit (a prompt; a record without merge_prompts) are split together; copy:
    # which draw of its records a group holds (``data.mixture`` draws a record several times)
    unit: str = ""
    copy: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)


def _key(text: Text) -> str:
    return json.dumps(text, sort_keys=True, ensure_ascii=False)


def build_groups(examples: list, tokenizer, backbone: str = "causal", chat: str = "auto",
                 max_length: int | None = None, annotator_weights: dict[str, float] | None = None,
                 merge_prompts: bool = True, copies: list[int] | None = None
                 ) -> tuple[list[PreferenceGroup], list[str]]:
    """Tokenise validated ``PreferenceExample``/``PreferencePair``/``RankingExample``s into groups.

    merge_prompts: records with the same prompt (exactly) share one group and identical responses
    share one encoding; False gives one group per record. copies: for records drawn several
    times, which draw of its record each example is (0 first): draw k of a prompt's records
    makes a group of its own, so that a repeated record weighs as a further prompt would (the
    losses weigh each group the same), not as more pairs of one group. annotator_weights: a
    comparison's
    ``weight`` is its annotator's entry (1 when absent). max_length: a record with a response
    longer than this (prompt included) is reported, not truncated (a causal reward model reads the
    last token). Returns (groups in first-seen order, problems as ``file:line: message``)."""
    groups: list[PreferenceGroup] = []
    by_prompt: dict[str, PreferenceGroup] = {}
    index: dict[int, dict[str, int]] = {}  # id(group) -> response key -> response index
    problems: list[str] = []
    weights = annotator_weights or {}
    encodings: dict[str, tuple] = {}  # a drawn record's encoding, once for all its draws
    for n, ex in enumerate(examples):
        if isinstance(ex, RankingExample):
            texts = list(ex.responses)
            labels = [f'"responses"[{i}]' for i in range(len(texts))]
        else:
            texts = [ex.chosen, ex.rejected]
            labels = ['"chosen"', '"rejected"']
        copy = copies[n] if copies is not None else 0
        if copy and ex.where in encodings:
            encoded, too_long = encodings[ex.where]
        else:
            encoded, too_long = [], []
            for text, label in zip(texts, labels):
                ids, types = encode_response(tokenizer, ex.prompt, text, backbone, chat, ex.where)
                if max_length is not None and len(ids) > max_length:
                    too_long.append(f"field {label} is {len(ids)} tokens with the prompt")
                encoded.append((ids, types))
            if copies is not None:
                encodings[ex.where] = (encoded, too_long)
        if too_long:  # one problem per record, naming every field over the limit
            problems.append(f"{ex.where}: {'; '.join(too_long)}, longer than --max-length "
                            f"{max_length}")
            continue
        unit = (_key(ex.prompt) if merge_prompts else
                f"@{ex.where}" if copies is not None else f"#{len(groups)}")
        key = f"{copy}:{unit}"
        group = by_prompt.get(key)
        if group is None:
            group = PreferenceGroup(ex.prompt, where=ex.where, unit=unit, copy=copy)
            by_prompt[key] = group
            groups.append(group)
            index[id(group)] = {}
        seen = index[id(group)]
        rows = []
        for text, (ids, types) in zip(texts, encoded):
            k = _key(text)
            if k not in seen:
                seen[k] = len(group.responses)
                group.responses.append(text)
                group.input_ids.append(ids)
                if types is not None and backbone == "policy":
                    group.targets = (group.targets or []) + [types]
                elif types is not None:
                    if group.token_type_ids is None:
                        group.token_type_ids = []
                    group.token_type_ids.append(types)
            rows.append(seen[k])
        weight = float(weights.get(ex.annotator, 1.0)) if ex.annotator is not None else 1.0
        if isinstance(ex, RankingExample):
            order = [rows[i] for i in ex.ranking]
            group.rankings.append(Ranking(order, weight, ex.annotator, ex.aspect, ex.where))
            group.pairs.extend(Comparison(b, w, 0.0, weight, 1.0, ex.annotator, ex.aspect,
                                          ex.where, len(group.rankings) - 1)
                               for b, w in ranking_to_pairs(order))
        else:
            tie = bool(getattr(ex, "tie", False))
            group.pairs.append(Comparison(rows[0], rows[1], 0.0 if tie else float(ex.margin),
                                          weight, 0.5 if tie else 1.0, ex.annotator, ex.aspect,
                                          ex.where))
    return groups, problems


ANNOTATOR_WEIGHTS_FILE = "annotator_weights.json"


def annotator_weights_beside(spec: str | None) -> dict[str, float] | None:
    """The ``annotator_weights.json`` (``{annotator: weight}``) beside a data file, which
    ``alignkit annotate export`` writes with the labels, so that labels exported with their
    annotators' quality train with it without another flag; ``None`` when there is none."""
    from pathlib import Path

    if not spec or not Path(spec).is_file():
        return None
    beside = Path(spec).parent / ANNOTATOR_WEIGHTS_FILE
    if not beside.is_file():
        return None
    try:
        weights = json.loads(beside.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{beside}: not a JSON file of annotator weights ({e})") from None
    if not isinstance(weights, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            for v in weights.values()):
        raise UserError(f"{beside}: expected {{annotator: weight >= 0}}")
    return {str(k): float(v) for k, v in weights.items()}


def load_preference_groups(spec: str, tokenizer, backbone: str = "causal", chat: str = "auto",
                           max_length: int | None = None, skip_invalid: bool = False,
                           annotator_weights: dict[str, float] | None = None,
                           merge_prompts: bool = True, draw: Draw | None = None
                           ) -> tuple[list[PreferenceGroup], list[str]]:
    """Read a preference or ranking file (both kinds may be mixed), validate every record and
    tokenise it into groups. Record and length problems are collected together; ``DataError``
    lists them all unless ``skip_invalid`` (then they are dropped and returned). ``draw``: the
    run's seed, oversampling and mixture size (``data.mixture``); what was drawn goes in
    ``draw.report``."""
    problems: list[str] = []
    records = read_records(spec, problems, draw, check=problem_of(parse_comparison))
    if not records and not problems:
        raise UserError(f"{spec}: no records")
    examples, problems = validate(records, parse_comparison, skip_invalid=True, problems=problems)
    copies = _draw_numbers(examples)
    groups, more = build_groups(examples, tokenizer, backbone, chat, max_length,
                                annotator_weights, merge_prompts,
                                copies if any(copies) else None)
    # a record drawn several times (a mixture, --oversample) is reported once
    problems = in_file_order(list(dict.fromkeys(problems + more)))
    if problems and not skip_invalid:
        raise DataError(problems)
    return groups, problems


def _draw_numbers(examples: list) -> list[int]:
    """Which draw of its record each example is (0: the first; ``data.mixture`` may draw a
    record several times)."""
    seen: dict[str, int] = {}
    out = []
    for ex in examples:
        out.append(seen.get(ex.where, 0))
        seen[ex.where] = out[-1] + 1
    return out


def split_groups(groups: list[PreferenceGroup], eval_fraction: float,
                 seed: int) -> tuple[list[PreferenceGroup], list[PreferenceGroup]]:
    """(train, held-out) by whole groups (no prompt on both sides), seeded like SFT's split.
    The groups of one unit (the further draws of a prompt's records) go to one side; the
    held-out side keeps each record's first draw only."""
    if not 0.0 <= eval_fraction < 1.0:
        raise UserError(f"--eval-fraction must be in [0, 1), got {eval_fraction}")
    units = list(dict.fromkeys(g.unit or f"#{i}" for i, g in enumerate(groups)))
    n_eval = int(round(len(units) * eval_fraction))
    if eval_fraction > 0 and len(units) > 1:
        n_eval = min(max(n_eval, 1), len(units) - 1)
    order = torch.randperm(len(units), generator=torch.Generator().manual_seed(seed)).tolist()
    held = {units[i] for i in order[:n_eval]}
    unit_of = [g.unit or f"#{i}" for i, g in enumerate(groups)]
    return ([g for g, u in zip(groups, unit_of) if u not in held],
            [g for g, u in zip(groups, unit_of) if u in held and g.copy == 0])


# ----------------------------------------------------------------------------- batches


@dataclass
class PreferenceBatch:
    """N responses of G whole groups, P comparisons and R rankings among them.

    Two layouts of the responses:
    - padded (``position_ids`` None): input_ids, attention_mask (N, L), one response per row,
      right-padded (mask 1 = token); token_type_ids (N, L) or None; last_index (N,): the position
      of each response's last token in its row (a causal reward is read there).
    - packed (see ``collate_groups_packed``): input_ids, position_ids, token_type_ids (Rows, L)
      with several responses (and prompt prefixes they share) per row; attention_mask
      (Rows, 1, L, L) additive float mask; last_index (N,) flat index into Rows*L of each
      response's last token; token_response (Rows, L) the response each token belongs to (-1:
      a shared prefix or padding), for mean pooling.

    better, worse: (P,) response indices; margin, weight, label: (P,) float32; group: (P,) long,
    the group of each comparison (for ``per_prompt_weights``); aspects: P aspect names (None =
    untagged). ranking: (R, Kmax) response indices best first, ranking_mask: (R, Kmax) bool (False =
    padding, index 0 there); ranking_weight: (R,); ranking_aspects: R names; pair_ranking: (P,)
    the ranking each comparison was derived from (-1: a pairwise record). num_tokens: tokens of
    the N encoded responses (prompt included in each); computed_tokens: non-padding positions the
    model runs (fewer when responses share their prompt).

    For groups encoded for a policy (DPO, ``PreferenceGroup.targets``): target_index (M,) flat
    index into Rows*L of every position that predicts a response token, target_ids (M,) that
    token, target_response (M,) its response; in either layout."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    last_index: torch.Tensor
    better: torch.Tensor
    worse: torch.Tensor
    margin: torch.Tensor
    weight: torch.Tensor
    label: torch.Tensor
    group: torch.Tensor
    aspects: list
    ranking: torch.Tensor
    ranking_mask: torch.Tensor
    ranking_weight: torch.Tensor
    ranking_aspects: list
    num_groups: int
    pair_ranking: torch.Tensor | None = None
    num_tokens: int = 0
    computed_tokens: int = 0
    position_ids: torch.Tensor | None = None
    token_response: torch.Tensor | None = None
    target_index: torch.Tensor | None = None
    target_ids: torch.Tensor | None = None
    target_response: torch.Tensor | None = None

    @property
    def num_pairs(self) -> int:
        return int(self.better.numel())

    @property
    def num_responses(self) -> int:
        return int(self.last_index.numel())

    @property
    def packed(self) -> bool:
        return self.position_ids is not None

    def to(self, device) -> "PreferenceBatch":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return PreferenceBatch(**moved)


def _comparison_fields(groups: list[PreferenceGroup]) -> dict:
    """The comparisons and rankings of ``groups`` as tensors over the batch's response indices
    (responses of group 0 first, in group order)."""
    offsets, total, rank_offsets, n_ranks = [], 0, [], 0
    for g in groups:
        offsets.append(total)
        total += len(g.input_ids)
        rank_offsets.append(n_ranks)
        n_ranks += len(g.rankings)
    pairs = [(gi, p) for gi, g in enumerate(groups) for p in g.pairs]
    ranks = [(offsets[gi], r) for gi, g in enumerate(groups) for r in g.rankings]
    k_max = max((len(r.order) for _, r in ranks), default=0)
    ranking = torch.zeros((len(ranks), k_max), dtype=torch.long)
    ranking_mask = torch.zeros((len(ranks), k_max), dtype=torch.bool)
    for i, (off, r) in enumerate(ranks):
        ranking[i, :len(r.order)] = torch.tensor([off + j for j in r.order], dtype=torch.long)
        ranking_mask[i, :len(r.order)] = True
    return dict(
        better=torch.tensor([offsets[gi] + p.better for gi, p in pairs], dtype=torch.long),
        worse=torch.tensor([offsets[gi] + p.worse for gi, p in pairs], dtype=torch.long),
        margin=torch.tensor([p.margin for _, p in pairs], dtype=torch.float32),
        weight=torch.tensor([p.weight for _, p in pairs], dtype=torch.float32),
        label=torch.tensor([p.label for _, p in pairs], dtype=torch.float32),
        group=torch.tensor([gi for gi, _ in pairs], dtype=torch.long),
        pair_ranking=torch.tensor([rank_offsets[gi] + p.ranking if p.ranking >= 0 else -1
                                   for gi, p in pairs], dtype=torch.long),
        aspects=[p.aspect for _, p in pairs], ranking=ranking, ranking_mask=ranking_mask,
        ranking_weight=torch.tensor([r.weight for _, r in ranks], dtype=torch.float32),
        ranking_aspects=[r.aspect for _, r in ranks], num_groups=len(groups))


def _target_fields(groups: list[PreferenceGroup], token_index: list[list[int]]) -> dict:
    """target_index / target_ids / target_response from each response's shifted targets and the
    flat index of each of its positions (``token_index[n][t]``) in the batch layout."""
    if not all(g.targets for g in groups):
        return {}
    index, ids, owner = [], [], []
    targets = [t for g in groups for t in g.targets]
    for n, (tgt, where) in enumerate(zip(targets, token_index)):
        for t, y in enumerate(tgt):
            if y != IGNORE:
                index.append(where[t])
                ids.append(y)
                owner.append(n)
    return {"target_index": torch.tensor(index, dtype=torch.long),
            "target_ids": torch.tensor(ids, dtype=torch.long),
            "target_response": torch.tensor(owner, dtype=torch.long)}


def collate_groups(groups: list[PreferenceGroup], pad_id: int) -> PreferenceBatch:
    """Stack whole groups into one right-padded batch, one response per row."""
    seqs = [s for g in groups for s in g.input_ids]
    types = [t for g in groups for t in (g.token_type_ids or [])]
    n, width = len(seqs), max((len(s) for s in seqs), default=0)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, :len(s)] = 1
    token_types = None
    if types and len(types) == n:
        token_types = torch.zeros((n, width), dtype=torch.long)
        for r, t in enumerate(types):
            token_types[r, :len(t)] = torch.tensor(t, dtype=torch.long)
    last = (mask.sum(1) - 1).clamp(min=0)
    tokens = int(mask.sum())
    token_index = [[r * width + t for t in range(len(s))] for r, s in enumerate(seqs)]
    return PreferenceBatch(ids, mask, token_types, last, **_comparison_fields(groups),
                           num_tokens=tokens, computed_tokens=tokens,
                           **_target_fields(groups, token_index))


def _common_prefix(seqs: list[list[int]]) -> int:
    k = min(len(s) for s in seqs)
    first = seqs[0]
    for s in seqs[1:]:
        j = 0
        while j < k and s[j] == first[j]:
            j += 1
        k = j
    return k


@dataclass
class _Segment:
    """A run of tokens in a packed row; it sees its ancestors (``parent`` chain) and itself."""

    ids: list[int]
    types: list[int] | None
    parent: int  # segment index in the row, -1 = none
    response: int  # response index in the batch, -1 = a shared prefix


def collate_groups_packed(groups: list[PreferenceGroup], pad_id: int, capacity: int,
                          causal: bool, share_prefix: bool = True) -> PreferenceBatch:
    """Padding-free layout of whole groups: responses share rows, each attending only to itself
    (and, for a causal backbone, to the prompt tokens it shares with the other responses of its
    group).

    With ``share_prefix`` (causal backbones only: an encoder's prompt attends to the response, so
    it cannot be shared) the tokens common to all responses of a group (the rendered prompt) are
    run once and its K responses follow, each attending to that prefix and causally to itself with
    positions continuing after it; a prefix common to every group of the batch (a chat template's
    system prompt) is run once per row in the same way. Because a causal token never sees what
    follows it, each response's hidden states are exactly those it gets alone, on fewer tokens:
    K responses of P prompt tokens and T response tokens run P + K*T positions instead of
    K*(P + T). Rows hold at most ``capacity`` positions (a wider group gets a row of its own).
    """
    share = causal and share_prefix
    # 1. Units that stay in one row: a group (prefix + responses) when sharing, else a response.
    units: list[tuple[int, list[int], list[tuple[int, list[int], list[int] | None]]]] = []
    response = 0
    for g in groups:
        seqs = g.input_ids
        types = g.token_type_ids or [None] * len(seqs)
        # leave each response >= 1 token of its own: its reward is read at its last token
        k = min(_common_prefix(seqs), min(len(s) for s in seqs) - 1) if share and len(seqs) > 1 \
            else 0
        items = []
        for s, t in zip(seqs, types):
            items.append((response, s[k:], None if t is None else t[k:]))
            response += 1
        if share:
            units.append((k, seqs[0][:k], items))
        else:
            units.extend((0, [], [item]) for item in items)
    # 2. A prefix common to all units (the system prompt) is run once per row.
    row_prefix = 0
    if share and len(units) > 1:
        row_prefix = _common_prefix([u[1] for u in units])
        if row_prefix < 4:
            row_prefix = 0
    lengths = [len(u[1]) - row_prefix + sum(len(s) for _, s, _ in u[2]) for u in units]
    rows = pack_rows(lengths, max(capacity - row_prefix, 1))
    # 3. Lay out each row's segments, then positions and the mask from the segment tree.
    layouts = []
    for row in rows:
        segs: list[_Segment] = []
        if row_prefix:
            segs.append(_Segment(units[row[0]][1][:row_prefix], None, -1, -1))
        root = 0 if row_prefix else -1
        for u in row:
            _, prefix, items = units[u]
            parent = root
            if len(prefix) > row_prefix:
                segs.append(_Segment(prefix[row_prefix:], None, root, -1))
                parent = len(segs) - 1
            segs.extend(_Segment(s, t, parent, r) for r, s, t in items)
        layouts.append(segs)
    width = max(sum(len(s.ids) for s in segs) for segs in layouts)
    n_rows, n_resp = len(layouts), response
    has_types = any(g.token_type_ids for g in groups)
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    types = torch.zeros((n_rows, width), dtype=torch.long) if has_types else None
    pos = torch.zeros((n_rows, width), dtype=torch.long)
    seg_of = torch.full((n_rows, width), -1, dtype=torch.long)
    token_response = torch.full((n_rows, width), -1, dtype=torch.long)
    last = torch.zeros(n_resp, dtype=torch.long)
    mask = torch.full((n_rows, 1, width, width), torch.finfo(torch.float32).min)
    token_index: list[list[int]] = [[] for _ in range(n_resp)]  # flat index of every position
    for r, segs in enumerate(layouts):
        at, starts, ends = 0, [], []  # ends: the position id after each segment
        for i, s in enumerate(segs):
            k = len(s.ids)
            first_pos = ends[s.parent] if s.parent >= 0 else 0
            ids[r, at:at + k] = torch.tensor(s.ids, dtype=torch.long)
            if types is not None and s.types is not None:
                types[r, at:at + k] = torch.tensor(s.types, dtype=torch.long)
            pos[r, at:at + k] = torch.arange(first_pos, first_pos + k)
            seg_of[r, at:at + k] = i
            if s.response >= 0:
                token_response[r, at:at + k] = s.response
                last[s.response] = r * width + at + k - 1
            starts.append(at)
            ends.append(first_pos + k)
            at += k
            if s.response >= 0:  # its full sequence: the ancestors' tokens, then its own
                chain, j = [], i
                while j >= 0:
                    chain.append(j)
                    j = segs[j].parent
                token_index[s.response] = [r * width + starts[j] + t for j in reversed(chain)
                                           for t in range(len(segs[j].ids))]
        # visible[i, j]: segment i sees segment j (itself and its ancestors)
        visible = torch.eye(len(segs), dtype=torch.bool)
        for i, s in enumerate(segs):
            j = s.parent
            while j >= 0:
                visible[i, j] = True
                j = segs[j].parent
        real = seg_of[r] >= 0
        idx = seg_of[r].clamp(min=0)
        allowed = visible[idx][:, idx] & real[:, None] & real[None, :]
        if causal:
            allowed &= torch.tril(torch.ones(width, width, dtype=torch.bool))
        allowed |= torch.eye(width, dtype=torch.bool)  # padding sees itself: no NaN softmax
        mask[r, 0].masked_fill_(allowed, 0.0)
    return PreferenceBatch(ids, mask, types, last, **_comparison_fields(groups),
                           num_tokens=sum(g.num_tokens for g in groups),
                           computed_tokens=int((seg_of >= 0).sum()), position_ids=pos,
                           token_response=token_response, **_target_fields(groups, token_index))


def _estimated_cost(rows: int, width: int, hidden: int) -> float:
    """Forward FLOPs of a transformer layer per row, up to a constant: the projections and MLP
    (~24 d^2 per position) plus dense attention over the row (~4 L d per position), which a
    padding-free row pays for its full width."""
    return rows * width * (24.0 * hidden * hidden + 4.0 * width * hidden)


def make_preference_batch(groups: list[PreferenceGroup], pad_id: int, *, causal: bool,
                          packing: bool = True, capacity: int = 512, share_prefix: bool = True,
                          hidden_size: int = 768) -> PreferenceBatch:
    """The cheaper of the padded and the packed layout of ``groups`` by ``_estimated_cost``
    (packing wins when responses differ in length or share long prompts; for a batch of
    equal-length responses with nothing shared, padding costs nothing and dense attention over a
    long packed row would)."""
    if not packing:
        return collate_groups(groups, pad_id)
    packed = collate_groups_packed(groups, pad_id, capacity, causal, share_prefix)
    seqs = [s for g in groups for s in g.input_ids]
    padded_cost = _estimated_cost(len(seqs), max(len(s) for s in seqs), hidden_size)
    packed_cost = _estimated_cost(*packed.input_ids.shape, hidden_size)
    return packed if packed_cost < 0.95 * padded_cost else collate_groups(groups, pad_id)
