"""Hungarian matching: optimal on small cases (brute force), robust to non-finite costs."""

from __future__ import annotations

import itertools

import pytest
import torch

from ddetr_cli.train.matcher import HungarianMatcher


def _random_case(seed: int, queries: int, targets: int, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(1, queries, classes, generator=g, dtype=torch.float64),
        "pred_boxes": torch.rand(1, queries, 4, generator=g, dtype=torch.float64) * 0.4 + 0.1,
    }
    target = {
        "labels": torch.randint(0, classes, (targets,), generator=g),
        "boxes": torch.rand(targets, 4, generator=g, dtype=torch.float64) * 0.4 + 0.1,
    }
    return outputs, target


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force(seed):
    matcher = HungarianMatcher()
    queries, targets = 5, 1 + seed % 4
    outputs, target = _random_case(seed, queries, targets)
    ((rows, cols),) = matcher(outputs, [target])
    cost = matcher.cost_matrix(outputs["pred_logits"][0], outputs["pred_boxes"][0],
                               target["labels"], target["boxes"])  # fmt: skip
    best = min(
        sum(cost[q, t].item() for t, q in enumerate(perm))
        for perm in itertools.permutations(range(queries), targets)
    )
    assert len(rows) == len(cols) == targets
    assert sorted(cols.tolist()) == list(range(targets))
    assert cost[rows, cols].sum().item() == pytest.approx(best, rel=1e-12)


def test_non_finite_costs_are_replaced_and_counted():
    matcher = HungarianMatcher()
    outputs, target = _random_case(0, 4, 2)
    outputs["pred_boxes"][0, 1] = float("nan")
    outputs["pred_logits"][0, 2, :] = float("nan")
    ((rows, cols),) = matcher(outputs, [target])
    assert sorted(rows.tolist()) == [0, 3]  # the broken queries are never the cheap choice
    assert matcher.non_finite_costs == 4  # 2 broken queries x 2 targets


def test_empty_targets():
    outputs, _ = _random_case(0, 4, 1)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    ((rows, cols),) = HungarianMatcher()(outputs, [empty])
    assert rows.numel() == cols.numel() == 0
