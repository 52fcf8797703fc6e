"""Batches for causal-LM training: padding-free packing (several short examples share one row,
attention kept inside each example by a block-diagonal causal mask and restarted positions) or
plain right padding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.data.tokenize import IGNORE, TokenizedExample


@dataclass
class LMBatch:
    """input_ids, targets, position_ids: (R, L). attention_mask: (R, 1, L, L) additive float mask
    (0 = attend, dtype-min = blocked) for packed rows, or (R, L) 0/1 padding mask."""

    input_ids: torch.Tensor
    targets: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    num_targets: int
    num_tokens: int  # tokens of the examples (what the batch stands for)
    computed_tokens: int = -1  # non-pad positions actually run (fewer with a shared prefix)

    def __post_init__(self):
        if self.computed_tokens < 0:
            self.computed_tokens = self.num_tokens

    def to(self, device) -> "LMBatch":
        return LMBatch(self.input_ids.to(device), self.targets.to(device),
                       self.position_ids.to(device), self.attention_mask.to(device),
                       self.num_targets, self.num_tokens, self.computed_tokens)


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Pack example indices into as few rows of at most ``capacity`` tokens as possible, with the
    rows balanced (longest example first onto the emptiest row) so that little padding is left
    when rows are stacked. An example longer than ``capacity`` gets a row of its own."""
    if not lengths:
        return []
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    n_rows = max(1, -(-sum(lengths) // capacity))
    while True:
        rows: list[list[int]] = [[] for _ in range(n_rows)]
        load = [0] * n_rows
        for i in order:
            r = min(range(n_rows), key=lambda j: (load[j], j))
            rows[r].append(i)
            load[r] += lengths[i]
        if all(load[r] <= capacity or len(rows[r]) == 1 for r in range(n_rows)):
            return [sorted(r) for r in rows if r]
        n_rows += 1


def block_causal_mask(segment_ids: torch.Tensor, dtype=torch.float32,
                      shared: int | None = None) -> torch.Tensor:
    """(R, L) segment ids (-1 = padding) -> (R, 1, L, L) additive mask: a token attends to earlier
    tokens of its own segment only, and to every earlier token of segment ``shared`` (a prompt
    prefix that several examples share). Padding attends to itself (avoids a NaN softmax)."""
    length = segment_ids.shape[1]
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=segment_ids.device))
    visible = segment_ids[:, :, None] == segment_ids[:, None, :]
    if shared is not None:
        visible |= (segment_ids == shared)[:, None, :]
    allowed = causal[None] & visible
    allowed |= torch.eye(length, dtype=torch.bool, device=segment_ids.device)[None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def shared_prefix_length(examples: list[TokenizedExample], minimum: int = 4) -> int:
    """How many leading tokens all examples can share in a packed row (0 when not worth it).

    Safe only while those positions carry no loss: then each example's function and gradient are
    the same as when it runs alone (causal attention means the prefix never sees what follows).
    The last common token is left to each example, because its target (the next token) differs.
    """
    if len(examples) < 2:
        return 0
    first = examples[0].input_ids
    common = min(len(e) for e in examples) - 1
    for e in examples[1:]:
        ids = e.input_ids
        k = 0
        while k < common and ids[k] == first[k]:
            k += 1
        common = k
    shared = max(common - 1, 0)
    if shared < minimum or any(t != IGNORE for e in examples for t in e.targets[:shared]):
        return 0
    return shared


def collate_packed(examples: list[TokenizedExample], capacity: int, pad_id: int,
                   share_prefix: bool = False) -> LMBatch:
    """Pack examples into rows (see ``pack_rows``). With ``share_prefix`` a prompt prefix common
    to all examples (a chat template's system prompt, say) is put once at the start of each row
    and every example of the row attends to it, with positions continuing after it: the same
    result as running each example alone, on fewer tokens."""
    shared = shared_prefix_length(examples) if share_prefix else 0
    rows = pack_rows([len(e) - shared for e in examples], max(capacity - shared, 1))
    width = shared + max(sum(len(examples[i]) - shared for i in row) for row in rows)
    n = len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    targets = torch.full((n, width), IGNORE, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    seg = torch.full((n, width), -1, dtype=torch.long)
    if shared:
        ids[:, :shared] = torch.tensor(examples[0].input_ids[:shared])
        pos[:, :shared] = torch.arange(shared)
        seg[:, :shared] = 0
    for r, row in enumerate(rows):
        at = shared
        for s, i in enumerate(row, start=1 if shared else 0):
            e = examples[i]
            k = len(e) - shared
            ids[r, at:at + k] = torch.tensor(e.input_ids[shared:])
            targets[r, at:at + k] = torch.tensor(e.targets[shared:])
            pos[r, at:at + k] = torch.arange(shared, shared + k)
            seg[r, at:at + k] = s
            at += k
    return LMBatch(ids, targets, pos, block_causal_mask(seg, shared=0 if shared else None),
                   sum(e.num_targets for e in examples), sum(len(e) for e in examples),
                   int((seg >= 0).sum()))


def collate_padded(examples: list[TokenizedExample], pad_id: int) -> LMBatch:
    width = max(len(e) for e in examples)
    n = len(examples)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    targets = torch.full((n, width), IGNORE, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, e in enumerate(examples):
        k = len(e)
        ids[r, :k] = torch.tensor(e.input_ids)
        targets[r, :k] = torch.tensor(e.targets)
        mask[r, :k] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return LMBatch(ids, targets, pos, mask, sum(e.num_targets for e in examples),
                   sum(len(e) for e in examples))
