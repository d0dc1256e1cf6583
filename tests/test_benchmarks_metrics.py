"""Benchmark metrics against hand-computed values: ties, several captions per item, duplicate captions,
fold accuracy, and average precision."""

from __future__ import annotations

import pytest
import torch

from model.benchmarks.metrics import (
    accuracy_metrics,
    average_precision,
    map_metrics,
    multi_caption_ranks,
    retrieval_metrics,
    target_ranks,
)


def test_ties_count_against_the_query():
    sim = torch.tensor([[0.5, 0.5, 0.1], [0.5, 0.5, 0.1]])
    assert target_ranks(sim, torch.tensor([0, 2])).tolist() == [2, 3]
    collapsed = torch.ones(4, 4)  # a model that scores everything alike ranks nothing first
    m = retrieval_metrics(collapsed, [0, 1, 2, 3])
    assert m["text_to_item"]["R@1"] == 0.0 and m["text_to_item"]["median_rank"] == 4.0
    assert m["item_to_text"]["R@1"] == 0.0


def test_multi_caption_protocol_by_hand():
    # captions 0 and 1 describe item 0, caption 2 describes item 1; rows are captions, columns items
    sim = torch.tensor([[0.9, 0.7], [0.1, 0.65], [0.4, 0.6]])
    t2i, i2t = multi_caption_ranks(sim, [0, 0, 1])
    assert t2i.tolist() == [1, 2, 1]
    # item 1 ranks the groups: item 0's group scores max(0.7, 0.65) = 0.7 > its own 0.6 -> rank 2
    # (ranking single captions it would be 3: two of item 0's captions beat its own)
    assert i2t.tolist() == [1, 2]
    m = retrieval_metrics(sim, [0, 0, 1], ["a", "b", "c"])
    t, i = m["text_to_item"], m["item_to_text"]
    assert t["R@1"] == pytest.approx(200 / 3) and t["R@5"] == 100.0 and t["median_rank"] == 1.0
    assert t["mean_rank"] == pytest.approx(4 / 3) and t["chance_R@1"] == 50.0 and t["queries"] == 3
    assert i["R@1"] == 50.0 and i["median_rank"] == 1.5 and i["mean_rank"] == 1.5 and i["queries"] == 2


def test_duplicate_captions_are_separate_queries():
    # the same sentence describes items 0 and 1: its two copies score alike, one target wins
    sim = torch.tensor([[0.8, 0.5, 0.1], [0.8, 0.5, 0.1], [0.0, 0.2, 0.9]])
    m = retrieval_metrics(sim, [0, 1, 2], ["a dog", "a dog", "a cat"])
    assert m["text_to_item"]["duplicate_captions"] == 1
    assert m["text_to_item"]["R@1"] == pytest.approx(200 / 3)  # ranks 1, 2, 1
    # items 0 and 1 each see the other's copy tie with their own caption: a tie counts against, so
    # only item 2 ranks its caption first
    assert m["item_to_text"]["R@1"] == pytest.approx(100 / 3)
    assert multi_caption_ranks(sim, [0, 1, 2])[1].tolist() == [2, 2, 1]


def test_ranks_match_a_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    owner = [0, 0, 1, 2, 2, 2, 3, 4]
    sim = torch.rand(len(owner), 5, generator=g)
    t2i, i2t = multi_caption_ranks(sim, owner)
    for q, item in enumerate(owner):
        assert t2i[q] == 1 + sum(float(sim[q, c]) > float(sim[q, item]) for c in range(5))
    for v in range(5):
        group = [max(float(sim[q, v]) for q in range(len(owner)) if owner[q] == w) for w in range(5)]
        assert i2t[v] == 1 + sum(s > group[v] for s in group)


def test_accuracy_with_folds_and_ties():
    logits = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [1.0, 0.0]])
    m = accuracy_metrics(logits, [0, 0, 1, 1], folds=[1, 1, 2, 2])
    assert m["top1"] == 50.0 and m["top5"] == 100.0 and m["chance_top1"] == 50.0
    assert m["fold1_top1"] == 50.0 and m["fold2_top1"] == 50.0 and m["fold_mean_top1"] == 50.0
    assert m["majority_top1"] == 50.0 and m["n"] == 4


def test_average_precision_by_hand():
    ap = average_precision(torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 0, 1, 0]))
    assert ap == pytest.approx((1 / 1 + 2 / 3) / 2)
    # a positive tied with a negative at the top: one threshold, precision 1/2
    assert average_precision(torch.tensor([0.9, 0.9, 0.1]), torch.tensor([0, 1, 0])) == pytest.approx(0.5)
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.3], [0.7, 0.6, 0.3], [0.1, 0.5, 0.3]])
    m = map_metrics(scores, [[0], [1], [0, 1], []])
    # class 0: positives rank 1 and 2 -> AP 1; class 1: positives at ranks 1 and 2 -> AP 1; class 2 absent
    assert m["mAP"] == pytest.approx(100.0) and m["classes_with_positives"] == 2
    assert m["chance_mAP"] == pytest.approx(50.0)
    m = map_metrics(scores, [[1], [0], [], []])  # class 0's positive ranks 3rd, class 1's 4th
    assert m["mAP"] == pytest.approx(100 * (1 / 3 + 1 / 4) / 2)
