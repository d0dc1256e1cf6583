"""The results table (ours beside the paper's figure and chance) and the flat scalars for loggers."""

from __future__ import annotations

from typing import Any

from model.benchmarks.runner import metric_at

# What the table shows per task: (metric path, label, chance path); {m} is the modality.
_ROWS = {
    "retrieval": [
        ("text_to_{m}.R@1", "t2{x} R@1", "text_to_{m}.chance_R@1"),
        ("text_to_{m}.R@5", "t2{x} R@5", None),
        ("text_to_{m}.R@10", "t2{x} R@10", None),
        ("text_to_{m}.median_rank", "t2{x} MdR", None),
        ("text_to_{m}.mean_rank", "t2{x} MnR", None),
        ("{m}_to_text.R@1", "{x}2t R@1", "{m}_to_text.chance_R@1"),
        ("{m}_to_text.R@5", "{x}2t R@5", None),
        ("{m}_to_text.R@10", "{x}2t R@10", None),
        ("{m}_to_text.median_rank", "{x}2t MdR", None),
    ],
    "classification": [
        ("top1", "top-1", "chance_top1"),
        ("top5", "top-5", None),
        ("fold_mean_top1", "5-fold mean top-1", "chance_top1"),
    ],
    "multilabel": [("mAP", "mAP", "chance_mAP")],
}
_SHORT = {"video": "v", "audio": "a", "depth": "d", "infrared": "i", "image": "im"}


def table(records: list[dict[str, Any]]) -> str:
    """One line per metric: benchmark, split, n, metric, ours, paper, chance, the paper figure's source."""
    head = f"{'benchmark':<12} {'split':<11} {'n':>6}  {'metric':<18} {'ours':>7} {'paper':>7} {'chance':>7}  source"
    lines = [head, "-" * len(head)]
    for r in records:
        m = r["modality"]
        for path, label, chance in _ROWS[r["task"]]:
            path = path.format(m=m)
            ours = metric_at(r, path)
            if ours is None:
                continue
            paper = r["paper"].get(path)
            ch = metric_at(r, chance.format(m=m)) if chance else None
            lines.append(
                f"{r['benchmark']:<12} {r['split']:<11} {r['n']:>6}  "
                f"{label.format(x=_SHORT.get(m, m)):<18} {ours:>7.2f} "
                f"{paper['value'] if paper else '-':>7} {'' if ch is None else f'{ch:.2f}':>7}  "
                f"{paper['source'] if paper else ''}"
            )
        for note in r.get("notes", []):
            lines.append(f"{'':<12} note: {note}")
    return "\n".join(lines)


def flatten(record: dict[str, Any]) -> dict[str, float]:
    """``{"msrvtt/text_to_video/R@1": 12.3, ...}``: a record's numbers, for TensorBoard."""
    flat: dict[str, float] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            flat[prefix] = float(node)

    walk(record["benchmark"], record["metrics"])
    return flat
