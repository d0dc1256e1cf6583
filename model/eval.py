"""``python -m model.eval``: zero-shot retrieval and classification of a trained model on shards.

    python -m model.eval --checkpoint runs/train/demo --data runs/demo/shard --json eval.json
    python -m model.eval --checkpoint runs/train/demo/export --data 'shards/{00000..00009}.tar' \
        --split all --text-field raw --classes left,right,up,down --templates 'something moving {}'

Retrieval, per modality and in both directions (text -> X and X -> text): R@1/5/10, median and mean
rank. Captions that occur more than once are one candidate, and a query is answered by any item
paired with the same caption (so duplicate captions do not count as misses); ``chance_R@1`` is what
a random ranking scores on the same candidates. Classification: each class is the mean of its
prompt-template embeddings (CLIP's ensembling); a sample's label is the class name found in its
``--label-field`` text; top-1/top-5 accuracy.

``--checkpoint`` takes a run directory (its latest checkpoint), a checkpoint, or an export; a
training run's held-out split and text field are the defaults.

The paper's benchmarks (MSR-VTT, MSVD, DiDeMo, ActivityNet, ESC-50, Clotho, AudioCaps, AudioSet,
NYU-D, SUN-D, LLVIP, FLIR, ImageNet-style folders) run with ``--benchmark`` (``model/benchmarks``)::

    python -m model.eval --checkpoint CKPT --benchmark msrvtt --benchmark-root /data/MSRVTT --json out.json
    python -m model.eval --checkpoint CKPT --benchmark all --benchmark-config roots.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from model.data import DataConfig, ShardStream, make_loader, tower_sizes

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES = {
    "video": ["{}", "a video of {}."],
    "audio": ["{}", "the sound of {}."],
    "depth": ["{}", "a depth map of {}."],
    "infrared": ["{}", "a thermal infrared image of {}."],
}


# -- metrics ----------------------------------------------------------------------------------
def first_positive_rank(sim: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """1-based rank of each query's best-scored positive among all candidates ``[Q]`` (ties favour it)."""
    best = sim.masked_fill(~positive, float("-inf")).max(dim=1).values
    return 1 + (sim > best[:, None]).sum(dim=1)


def retrieval_metrics(sim: torch.Tensor, positive: torch.Tensor) -> dict[str, float]:
    """R@1/5/10, median and mean rank of a ``[queries, candidates]`` similarity with a positive mask."""
    ranks = first_positive_rank(sim.float(), positive.bool()).float()
    out = {f"R@{k}": float((ranks <= k).float().mean()) for k in (1, 5, 10)}
    out["median_rank"] = float(ranks.median())
    out["mean_rank"] = float(ranks.mean())
    out["chance_R@1"] = float((positive.sum(dim=1).float() / positive.shape[1]).mean())
    out["queries"] = int(sim.shape[0])
    out["candidates"] = int(sim.shape[1])
    return out


def paired_retrieval(
    x: torch.Tensor, texts: Sequence[str], text_emb: torch.Tensor, unique: Sequence[str]
) -> tuple[dict[str, float], dict[str, float]]:
    """``(text_to_x, x_to_text)`` for items ``x[i]`` paired with caption ``texts[i]``; ``text_emb[u]``
    embeds ``unique[u]`` (each distinct caption once)."""
    where = {t: u for u, t in enumerate(unique)}
    index = torch.tensor([where[t] for t in texts])
    positive = index[:, None] == torch.arange(len(unique))[None, :]  # [N items, U captions]
    sim = F.normalize(x.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T
    return retrieval_metrics(sim.T, positive.T), retrieval_metrics(sim, positive)


def label_of(text: str, classes: Sequence[str]) -> int | None:
    """The class named in ``text``: an exact match, else the longest class name found as whole words;
    None when none is found or two different names tie."""
    low = text.lower().strip()
    names = [c.lower().strip() for c in classes]
    if low in names:
        return names.index(low)
    found = [(len(n), i) for i, n in enumerate(names) if re.search(rf"(?<!\w){re.escape(n)}(?!\w)", low)]
    if not found:
        return None
    found.sort(reverse=True)
    if len(found) > 1 and found[0][0] == found[1][0]:
        return None
    return found[0][1]


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy of ``[N, C]`` scores against class indices ``[N]``."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top == labels[:, None]
    return {
        "top1": float(hit[:, 0].float().mean()),
        "top5": float(hit.any(dim=1).float().mean()),
        "chance_top1": 1.0 / logits.shape[1],
        "samples": int(len(labels)),
    }


# -- embedding shards -------------------------------------------------------------------------
@torch.no_grad()
def embed_shards(
    model: Any,
    data: DataConfig,
    split: str = "all",
    max_samples: int | None = None,
    amp: Any = contextlib.nullcontext,
    label_field: str | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Per modality: normalised embeddings, captions, keys (and ``label_field`` values) of every sample
    of ``split`` that has the modality."""
    stream = ShardStream(data, tower_sizes(model.config), train=False, split=split, label_field=label_field)
    out = {m: {"emb": [], "texts": [], "keys": [], "labels": []} for m in data.modalities}
    counts = {"bad": 0, "filtered": 0, "samples": 0}
    was_training = model.training
    model.eval()
    for batch in make_loader(stream):
        counts["bad"] += batch["stats"]["bad"]
        counts["filtered"] += batch["stats"]["filtered"]
        counts["samples"] += len(batch["key"])
        for m in data.modalities:
            if m not in batch:
                continue
            keep = batch["valid"][m] if "valid" in batch else torch.ones(len(batch["key"]), dtype=torch.bool)
            if not keep.any():
                continue
            with amp():
                emb = model.towers[m](batch[m][keep].to(model.device))
            out[m]["emb"].append(F.normalize(emb.float(), dim=-1).cpu())
            out[m]["texts"] += [t for t, k in zip(batch["text"], keep.tolist()) if k]
            out[m]["keys"] += [k for k, v in zip(batch["key"], keep.tolist()) if v]
            out[m]["labels"] += [t for t, k in zip(batch.get("label", []), keep.tolist()) if k]
        if max_samples and counts["samples"] >= max_samples:
            break
    model.train(was_training)
    for m in out:
        out[m]["emb"] = torch.cat(out[m]["emb"]) if out[m]["emb"] else torch.empty(0, 1)
    return out, counts


def evaluate(
    model: Any,
    data: DataConfig,
    *,
    split: str = "all",
    max_samples: int | None = None,
    classes: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    label_field: str | None = None,
    amp: Any = contextlib.nullcontext,
) -> dict[str, Any]:
    """Retrieval (and classification when ``classes``) per modality of ``data.modalities``."""
    embedded, counts = embed_shards(model, data, split, max_samples, amp, label_field if classes else None)
    results: dict[str, Any] = {"split": split, "text_field": data.text_field, "modalities": {}, **counts}
    for m, e in embedded.items():
        if not e["texts"]:
            continue
        unique = list(dict.fromkeys(e["texts"]))
        text_emb = model.encode_text(unique)
        t2x, x2t = paired_retrieval(e["emb"], e["texts"], text_emb, unique)
        entry: dict[str, Any] = {
            "samples": len(e["texts"]),
            "unique_texts": len(unique),
            f"text_to_{m}": t2x,
            f"{m}_to_text": x2t,
        }
        if classes:
            entry["classification"] = classify(model, m, e, classes, templates or DEFAULT_TEMPLATES[m])
        results["modalities"][m] = entry
    return results


def classify(
    model: Any, modality: str, embedded: dict[str, Any], classes: Sequence[str], templates: Sequence[str]
) -> dict[str, Any]:
    """Zero-shot top-1/top-5 of the embedded samples whose text names one of ``classes``."""
    from model.benchmarks.runner import class_embeddings

    class_emb = class_embeddings(model, classes, templates)
    labels = [label_of(s, classes) for s in embedded["labels"] or embedded["texts"]]
    keep = [i for i, lab in enumerate(labels) if lab is not None]
    if not keep:
        return {"classes": list(classes), "samples": 0, "unlabelled": len(labels)}
    logits = embedded["emb"][keep] @ class_emb.T
    metrics = classification_metrics(logits, torch.tensor([labels[i] for i in keep]))
    return {
        "classes": list(classes),
        "templates": list(templates),
        **metrics,
        "unlabelled": len(labels) - len(keep),
    }


def evaluate_config(model: Any, cfg: Any, amp: Any = contextlib.nullcontext) -> dict[str, Any]:
    """Evaluation as a ``TrainConfig``'s ``eval`` section asks (used by the trainer every N steps)."""
    e = cfg.eval
    field = e.text_field or (cfg.data.text_field if cfg.data.text_field != "mix" else "raw")
    shards = e.shards or cfg.data.shards
    if e.shards is None and cfg.data.resampled and cfg.data.sources:  # every source's held-out part
        shards = [
            u for s in cfg.data.sources for u in ([s.shards] if isinstance(s.shards, str) else s.shards)
        ]
    data = cfg.data.model_copy(
        update={"shards": shards, "text_field": field, "batch_size": e.batch_size, "resampled": False}
    )
    split = e.split if e.shards is None else "all"
    if split == "holdout" and cfg.data.holdout == 0:
        log.warning("eval: data.holdout is 0, so nothing is held out; evaluating on the training shards")
        split = "all"
    return evaluate(
        model,
        data,
        split=split,
        max_samples=e.max_samples,
        classes=e.classes,
        templates=e.templates,
        label_field=e.label_field,
        amp=amp,
    )


# -- output -----------------------------------------------------------------------------------
def format_table(results: dict[str, Any]) -> str:
    """Retrieval rows per modality and direction, then classification lines."""
    lines = [
        f"{'modality':<9} {'direction':<18} {'n':>5} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'MdR':>5} "
        f"{'chance R@1':>10}"
    ]
    extra = []
    for m, entry in results.get("modalities", {}).items():
        for direction in (f"text_to_{m}", f"{m}_to_text"):
            r = entry[direction]
            lines.append(
                f"{m:<9} {direction.replace('_to_', '->'):<18} {r['queries']:>5} {r['R@1']:>6.3f} "
                f"{r['R@5']:>6.3f} {r['R@10']:>6.3f} {r['median_rank']:>5.0f} {r['chance_R@1']:>10.3f}"
            )
        c = entry.get("classification")
        if c and c.get("samples"):
            extra.append(
                f"zero-shot {m}: {len(c['classes'])} classes, {c['samples']} samples: top-1 "
                f"{c['top1']:.3f} (chance {c['chance_top1']:.3f}), top-5 {c['top5']:.3f}"
            )
    return "\n".join(lines + extra)


def flatten(results: dict[str, Any]) -> dict[str, float]:
    """``{"video/text_to_video/R@1": 0.4, ...}``: the numbers of a result, for loggers."""
    flat = {}
    for m, entry in results.get("modalities", {}).items():
        for key, value in entry.items():
            if isinstance(value, dict):
                flat.update({f"{m}/{key}/{k}": v for k, v in value.items() if isinstance(v, (int, float))})
    return flat


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m model.eval",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        help="run directory, checkpoint directory, export, or (benchmarks) what LanguageBind.load reads",
    )
    p.add_argument("--data", help="shards (default: the training run's)")
    p.add_argument(
        "--text-field", help="caption field: raw, title, ofa, mplug, polish_mplug, sound_mplug, asr"
    )
    p.add_argument("--modalities", help="comma-separated (default: the model's towers the run trained)")
    p.add_argument(
        "--split",
        choices=("holdout", "all", "train"),
        help="default: holdout when the run held samples out, else all",
    )
    p.add_argument("--holdout", type=float, help="fraction held out (default: the run's data.holdout)")
    p.add_argument(
        "--classes", help="zero-shot classes: a file with one name per line, or a comma-separated list"
    )
    p.add_argument("--templates", action="append", help="prompt template with {} (repeatable)")
    p.add_argument(
        "--label-field", help="JSON field the class name is looked for in (default: the text field)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-samples", type=int, help="evaluate only the first N samples (benchmarks: items)")
    p.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda, cuda:1")
    p.add_argument("--json", dest="json_out", help="also write the results here")
    from model.benchmarks.cli import add_arguments

    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    from model.benchmarks.cli import main as benchmarks_main
    from model.benchmarks.cli import resolve_device
    from model.checkpoint import load_model

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.checkpoint and (args.benchmark or "").lower() != "list":
        parser.error("--checkpoint is required")
    if args.benchmark:
        return benchmarks_main(args)
    model, meta = load_model(args.checkpoint, map_location=resolve_device(args.device))
    run = meta.get("config", {}).get("data", {})
    modalities = (
        args.modalities.split(",")
        if args.modalities
        else [m for m in run.get("modalities", model.modalities) if m in model.modalities]
    )
    field = args.text_field or (
        run.get("text_field") if run.get("text_field") not in (None, "mix") else "raw"
    )
    holdout = args.holdout if args.holdout is not None else run.get("holdout", 0.0)
    split = args.split or ("holdout" if holdout > 0 else "all")
    shards = args.data or run.get("shards")
    if shards is None:
        print("error: --data is required (the checkpoint names no shards)", file=sys.stderr)
        return 2
    data = DataConfig(
        shards=shards,
        modalities=modalities,
        text_field=field,
        batch_size=args.batch_size,
        workers=args.workers,
        holdout=holdout,
        split_seed=run.get("split_seed", 0),
    )
    classes = None
    if args.classes:
        path = Path(args.classes)
        classes = (
            [c.strip() for c in path.read_text().splitlines() if c.strip()]
            if path.is_file()
            else [c.strip() for c in args.classes.split(",") if c.strip()]
        )
    results = evaluate(
        model,
        data,
        split=split,
        max_samples=args.max_samples,
        classes=classes,
        templates=args.templates,
        label_field=args.label_field,
    )
    results["checkpoint"] = str(args.checkpoint)
    results["step"] = meta.get("step")
    print(
        f"{results['samples']} samples ({split} split, text field {field!r}; {results['bad']} bad, "
        f"{results['filtered']} filtered) from {shards}"
    )
    print(format_table(results))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
