from collections import Counter

import torch

from breakascene.union_sampling import all_handles, build_prompt, sample_subset


def test_subset_size_is_uniform_and_members_distinct():
    generator = torch.Generator().manual_seed(0)
    sizes = Counter()
    members = Counter()
    orders = Counter()
    draws = 6000
    for _ in range(draws):
        subset = sample_subset(3, generator)
        assert len(set(subset)) == len(subset) and set(subset) <= {0, 1, 2}
        sizes[len(subset)] += 1
        members.update(subset)
        if len(subset) == 2:
            orders[tuple(subset)] += 1
    for k in (1, 2, 3):  # k ~ U{1, 2, 3}
        assert abs(sizes[k] / draws - 1 / 3) < 0.03
    # Every handle is equally likely to be trained: E[k]/N = 2/3 of the steps.
    for i in range(3):
        assert abs(members[i] / draws - 2 / 3) < 0.03
    # Random order: all 6 ordered pairs occur, about equally often.
    assert len(orders) == 6
    assert max(orders.values()) / min(orders.values()) < 1.3


def test_subset_is_deterministic_for_a_seed():
    a = [sample_subset(4, torch.Generator().manual_seed(7)) for _ in range(1)]
    b = [sample_subset(4, torch.Generator().manual_seed(7)) for _ in range(1)]
    assert a == b


def test_prompts():
    assert build_prompt(["<asset0>"]) == "a photo of <asset0>"
    assert build_prompt(["<asset1>", "<asset0>", "<bg>"]) == "a photo of <asset1> and <asset0> and <bg>"
    assert all_handles(3) == [0, 1, 2]
