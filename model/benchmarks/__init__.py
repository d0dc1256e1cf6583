"""The paper's zero-shot benchmarks, read from the datasets' own release layouts.

``python -m model.eval --checkpoint CKPT --benchmark msrvtt --benchmark-root /data/MSRVTT`` runs one;
``--benchmark all --benchmark-config roots.yaml`` runs every benchmark the YAML gives a root for.
LanguageBind's evaluation lives in five per-task folders with hard-coded paths; here one registry
names every benchmark, one reader per dataset family detects the layout from what is in the folder,
and one runner embeds, scores and reports (after LAION's clip_benchmark: one CLI, a dataset
registry, one JSON record per run).

Where things live:
    registry.py     benchmark name -> modality, task, reader, class names, templates, paper figures
    layout.py       the three dataset shapes (retrieval, classification, multi-label) and LayoutError
    video.py        MSR-VTT, MSVD, DiDeMo, ActivityNet Captions readers
    audio.py        ESC-50, Clotho, AudioCaps, AudioSet readers
    vision.py       ImageNet-style class folders, NYU-D, SUN-D, LLVIP, FLIR readers
    prompts.py      the class names and prompt templates LanguageBind's eval scripts use
    metrics.py      recall@k / ranks with multi-caption protocols, accuracy, mAP
    paper.py        the paper's and the official README's figures, each with its source
    runner.py       batched embedding (loader workers, progress bar, data-wait share) and scoring
    report.py       the results table and the flat scalars for TensorBoard
    cli.py          ``--benchmark`` of ``python -m model.eval``: read every index, load, check towers, run
    training.py     ``eval.benchmarks`` in a training config: evaluation every N steps to TensorBoard
"""
