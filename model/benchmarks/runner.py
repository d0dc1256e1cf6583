"""Run one benchmark: decode in loader workers, embed in batches, score, and build the record.

Decoding (PyAV video, fbank audio, PNG depth) costs more than a small tower's forward on CPU, so the
media are prepared in ``workers`` DataLoader processes with the model's own ``preprocess_input``
(vidal's preprocessing, or the official mode when the model is set to it) while the main process
runs the tower; the record's ``timing.data_wait`` is the share of the wall time the tower sat idle
waiting for them (high: add workers). The workers are forked (Linux), so the model they call
``preprocess_input`` on is shared, not copied; none of them touches the GPU.
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from model.benchmarks.layout import ClassificationSet, MultiLabelSet, RetrievalSet
from model.benchmarks.metrics import accuracy_metrics, map_metrics, retrieval_metrics
from model.benchmarks.paper import figures_for
from model.benchmarks.registry import PROTOCOL_VERSION, Benchmark

SCHEMA = "vidal.benchmark/1"


class MissingTower(ValueError):
    """The model has no tower for the benchmark's modality."""


class _Prepared(Dataset):
    """Item ``i`` -> the tower's input tensor (``load()`` first for crops and SUN RGB-D depth)."""

    def __init__(self, model: Any, modality: str, items: Sequence[Any]) -> None:
        self.model, self.modality, self.items = model, modality, items
        self.num_frames = model.towers[modality].cfg.num_frames

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        src = self.items[i]
        try:
            if hasattr(src, "load"):  # crops, SUN RGB-D depth, a video's first seconds
                src = src.load(self.num_frames) if self.modality == "video" else src.load()
            return self.model.preprocess_input(self.modality, src)
        except Exception as e:  # name the file: a benchmark has thousands
            where = getattr(self.items[i], "path", self.items[i])
            raise RuntimeError(f"cannot read {where}: {type(e).__name__}: {e}") from e


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # workers decode in parallel; torch threads in each would oversubscribe


def check_tower(model: Any, bench: Benchmark) -> None:
    """``MissingTower`` unless the model has the benchmark's tower."""
    if bench.modality not in getattr(model, "towers", {}):
        hint = (
            " (load LanguageBind_Image or a model with an image tower)" if bench.modality == "image" else ""
        )
        raise MissingTower(
            f"{bench.name} needs a {bench.modality!r} tower; this model has {list(model.towers)}{hint}"
        )


@torch.no_grad()
def embed_items(
    model: Any,
    modality: str,
    items: Sequence[Any],
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = True,
    amp: Any = contextlib.nullcontext,
    label: str = "",
) -> tuple[torch.Tensor, dict]:
    """Normalised embeddings ``[N, E]`` of ``items`` and the loop's timing (seconds, data wait)."""
    from tqdm import tqdm

    loader = DataLoader(
        _Prepared(model, modality, items),
        batch_size=batch_size,
        num_workers=workers,
        worker_init_fn=_one_thread if workers else None,
        persistent_workers=False,
    )
    out, waited = [], 0.0
    start = time.perf_counter()
    bar = tqdm(
        total=len(items),
        desc=label or modality,
        unit="item",
        disable=not progress,
        file=sys.stderr,
        leave=False,
    )
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        waited += time.perf_counter() - t0
        if batch is None:
            break
        with amp():
            out.append(model.encode(modality, batch, batch_size=len(batch)))
        bar.update(len(batch))
    bar.close()
    wall = time.perf_counter() - start
    emb = torch.cat(out) if out else torch.empty(0, 1)
    return emb, {
        "seconds": wall,
        "items_per_s": len(items) / max(wall, 1e-9),
        "data_wait": waited / max(wall, 1e-9),
        "batch_size": batch_size,
        "workers": workers,
    }


def class_embeddings(model: Any, classes: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """``[C, E]``: each class the normalised mean of its normalised template embeddings."""
    prompts = [t.format(c) for c in classes for t in templates]
    text = model.encode_text(prompts).view(len(classes), len(templates), -1)
    return F.normalize(F.normalize(text.float(), dim=-1).mean(dim=1), dim=-1)


def score(model: Any, bench: Benchmark, data: Any, emb: torch.Tensor) -> dict[str, Any]:
    """The benchmark's metrics from the item embeddings."""
    m = bench.modality
    if isinstance(data, RetrievalSet):
        text = model.encode_text(data.captions).float()
        both = retrieval_metrics(F.normalize(text, dim=-1) @ emb.float().T, data.caption_item, data.captions)
        return {f"text_to_{m}": both["text_to_item"], f"{m}_to_text": both["item_to_text"]}
    logits = emb.float() @ class_embeddings(model, data.classes, bench.templates).T
    if isinstance(data, ClassificationSet):
        return accuracy_metrics(logits, data.labels, data.folds)
    if isinstance(data, MultiLabelSet):
        return map_metrics(logits, data.targets)
    raise TypeError(f"unknown benchmark data {type(data).__name__}")


def run_benchmark(
    model: Any,
    bench: Benchmark,
    data: Any,
    *,
    model_name: str,
    paper_row: str,
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = True,
    amp: Any = contextlib.nullcontext,
) -> dict[str, Any]:
    """Embed and score ``data`` (what ``bench.read`` returned); the JSON record (docs/benchmarks.md)."""
    check_tower(model, bench)
    emb, timing = embed_items(
        model, bench.modality, data.items, batch_size, workers, progress, amp, bench.name
    )
    metrics = score(model, bench, data, emb)
    paper = {
        k: {"value": f.value, "source": f.source, "row": f.row}
        for k, f in figures_for(paper_row, bench.name).items()
    }
    record = {
        "schema": SCHEMA,
        "protocol_version": PROTOCOL_VERSION,
        "model": model_name,
        "benchmark": bench.name,
        "title": bench.title,
        "modality": bench.modality,
        "task": bench.task,
        "split": data.split,
        "layout": data.layout,
        "n": len(data.items),
        "metrics": metrics,
        "paper": paper,
        "notes": list(data.notes),
        "timing": timing,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if isinstance(data, RetrievalSet):
        record["captions"] = len(data.captions)
    return record


def metric_at(record: dict[str, Any], path: str) -> float | None:
    """``record["metrics"]`` at a dotted path (``text_to_video.R@1``), or None."""
    node: Any = record["metrics"]
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, (int, float)) else None
