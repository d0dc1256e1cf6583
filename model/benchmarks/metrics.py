"""Benchmark metrics: ranks under each benchmark's caption protocol, accuracy, and mAP.

Conventions (the JSON record and the table use them):

- Figures are percentages, as the paper prints them; ranks are 1-based ranks.
- A tie counts against the query: the rank of the right answer is the number of candidates that
  score at least as high as it (itself included). A collapsed model that gives every candidate the
  same score therefore ranks last, never first (optimistic ties would give it R@1 = 100).
- Text -> item: every caption is a query, its one right answer is the item it describes; a caption
  string that also describes another item is still a separate query with its own target (the
  standard CLIP4Clip / LanguageBind protocol; the record reports how many such duplicates exist).
- Item -> text with several captions per item (MSVD, Clotho, AudioCaps): each item ranks the items'
  caption groups, a group scoring the best of its captions (CLIP4Clip's protocol, which
  LanguageBind's ``vl_ret`` and ``al_ret`` follow); with one caption per item this is plain ranking.
- Median rank is NumPy's median (the mean of the two middle ranks for an even count).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def target_ranks(sim: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1-based rank of each query's target among its candidates, ties counted against it.

    ``sim``: ``[queries, candidates]`` scores; ``target``: ``[queries]`` candidate indices.
    """
    sim = sim.float()
    own = sim.gather(1, target.long()[:, None])
    return (sim >= own).sum(dim=1)


def group_max(sim: torch.Tensor, group: torch.Tensor, groups: int) -> torch.Tensor:
    """``[rows, candidates]`` -> ``[groups, candidates]``: each group's best row (its best caption)."""
    out = torch.full((groups, sim.shape[1]), float("-inf"), dtype=torch.float32)
    index = group.long()[:, None].expand(-1, sim.shape[1])
    return out.scatter_reduce(0, index, sim.float(), reduce="amax", include_self=True)


def multi_caption_ranks(sim: torch.Tensor, caption_item: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(text_to_item, item_to_text)`` ranks of a ``[captions, items]`` similarity.

    Text -> item: each caption ranks the items (target: its item). Item -> text: each item ranks the
    items' caption groups, a group scoring its best caption (target: its own group).
    """
    owner = torch.as_tensor(list(caption_item), dtype=torch.long)
    items = sim.shape[1]
    t2i = target_ranks(sim, owner)
    grouped = group_max(sim, owner, items)  # [item groups, items]
    i2t = target_ranks(grouped.T, torch.arange(items))
    return t2i, i2t


def recall_metrics(ranks: torch.Tensor, candidates: int) -> dict[str, float]:
    """R@1/5/10 (%), median and mean rank of 1-based ``ranks``, and the chance R@1 (%)."""
    r = ranks.double().numpy()
    out = {f"R@{k}": float(100.0 * (r <= k).mean()) for k in (1, 5, 10)}
    out["median_rank"] = float(np.median(r))
    out["mean_rank"] = float(r.mean())
    out["chance_R@1"] = 100.0 / candidates
    out["queries"] = int(len(r))
    out["candidates"] = int(candidates)
    return out


def retrieval_metrics(
    sim: torch.Tensor, caption_item: Sequence[int], captions: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """Both directions of a ``[captions, items]`` similarity; ``captions`` (the strings) adds the
    count of duplicate captions to the text direction."""
    t2i, i2t = multi_caption_ranks(sim, caption_item)
    text = recall_metrics(t2i, sim.shape[1])
    if captions is not None:
        text["duplicate_captions"] = len(captions) - len(set(captions))
    return {"text_to_item": text, "item_to_text": recall_metrics(i2t, sim.shape[1])}


def accuracy_metrics(
    logits: torch.Tensor, labels: Sequence[int], folds: Sequence[int] | None = None
) -> dict[str, float]:
    """Top-1/top-5 accuracy (%) of ``[N, C]`` scores, ties counted against (a tie with a wrong class
    at the top is a miss); with ``folds``, also each fold's top-1 and their mean (ESC-50 reports it).
    """
    y = torch.as_tensor(list(labels), dtype=torch.long)
    ranks = target_ranks(logits, y).double()
    classes = logits.shape[1]
    out = {
        "top1": float(100.0 * (ranks <= 1).double().mean()),
        "top5": float(100.0 * (ranks <= 5).double().mean()),
        "chance_top1": 100.0 / classes,
        "n": int(len(y)),
        "classes": int(classes),
    }
    counts = torch.bincount(y, minlength=classes)
    out["majority_top1"] = float(100.0 * counts.max() / max(1, len(y)))
    if folds is not None:
        f = torch.as_tensor(list(folds))
        per = {int(k): float(100.0 * (ranks[f == k] <= 1).double().mean()) for k in sorted(set(f.tolist()))}
        out.update({f"fold{k}_top1": v for k, v in per.items()})
        out["fold_mean_top1"] = float(np.mean(list(per.values())))
    return out


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """AP of one class: the precision at each distinct score threshold, weighted by the recall it adds
    (scikit-learn's definition; tied scores enter together). NaN when there is no positive."""
    s = scores.double()
    y = positive.bool()
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = torch.argsort(s, descending=True, stable=True)
    s, y = s[order], y[order].double()
    tp = torch.cumsum(y, 0)
    fp = torch.cumsum(1 - y, 0)
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[:-1] != s[1:]  # the last position of each run of equal scores
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    gain = torch.diff(recall, prepend=torch.zeros(1, dtype=recall.dtype))
    return float((gain * precision).sum())


def map_metrics(scores: torch.Tensor, targets: Sequence[Sequence[int]]) -> dict[str, float]:
    """Mean AP (%) over the classes with at least one positive, and chance (their mean prevalence)."""
    n, classes = scores.shape
    positive = torch.zeros(n, classes, dtype=torch.bool)
    for i, t in enumerate(targets):
        positive[i, list(t)] = True
    aps = [average_precision(scores[:, c], positive[:, c]) for c in range(classes)]
    present = [c for c in range(classes) if positive[:, c].any()]
    return {
        "mAP": float(100.0 * np.mean([aps[c] for c in present])) if present else float("nan"),
        "chance_mAP": float(100.0 * positive[:, present].double().mean()) if present else float("nan"),
        "n": int(n),
        "classes_with_positives": len(present),
        "classes": int(classes),
    }
