"""Token-budget micro-batches (``--max-tokens-per-micro-batch``): a step's examples shared out
over processes by tokens, then cut by padded size."""

from __future__ import annotations

import pytest

from alignkit.data.sft import token_budget_split

pytestmark = pytest.mark.unit

LENGTHS = [5, 1, 9, 3, 3, 7, 2, 8]


def test_one_process_cuts_longest_first_within_the_budget():
    micro = token_budget_split(list(range(8)), LENGTHS, 16, 1, 0)
    # 9 alone (2 x 9 > 16); 8+7 padded to 2 x 8; 5, 3, 3 padded to 3 x 5; then 2 and 1
    assert micro == [[2], [7, 5], [0, 3, 4], [6, 1]]
    for m in micro:
        assert len(m) * max(LENGTHS[i] for i in m) <= 16
    assert sorted(i for m in micro for i in m) == list(range(8))


def test_processes_get_equal_tokens_and_together_the_whole_step():
    shares = [token_budget_split(list(range(8)), LENGTHS, 16, 2, r) for r in range(2)]
    assert shares == [[[2], [0, 3, 6]], [[7, 5], [4, 1]]]
    tokens = [sum(LENGTHS[i] for m in share for i in m) for share in shares]
    assert tokens == [19, 19]
    assert sorted(i for share in shares for m in share for i in m) == list(range(8))


def test_an_example_over_the_budget_is_its_own_micro_batch_and_repeats_are_kept():
    assert token_budget_split([0, 1, 0], [50, 4], 10, 1, 0) == [[0], [0], [1]]
