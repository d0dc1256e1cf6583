"""The figures LanguageBind reports, to print beside ours; each carries its source.

Keys are the released towers' hub names; ``LanguageBind`` is the paper's own row (ICLR 2024). A
model that is none of them is compared with the paper's row. Metric names are paths into a record's
``metrics`` (``text_to_video.R@1``, ``top1``, ``mAP``). Only figures we could check against their
source are listed; a benchmark without one prints "-" (docs/benchmarks.md says how to add one).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    value: float
    source: str


PAPER_ROW = "LanguageBind"
_README = "official README, video model table (t2v R@1, 8 frames)"
_TABLE2 = "ICLR 2024 Table 2 (zero-shot video-text retrieval)"
_CLS = "ICLR 2024 zero-shot classification results (as quoted in vidal issue 15)"


def _video(
    msrvtt: float, didemo: float, activitynet: float, msvd: float, source: str
) -> dict[str, dict[str, Figure]]:
    return {
        "msrvtt": {"text_to_video.R@1": Figure(msrvtt, source)},
        "didemo": {"text_to_video.R@1": Figure(didemo, source)},
        "activitynet": {"text_to_video.R@1": Figure(activitynet, source)},
        "msvd": {"text_to_video.R@1": Figure(msvd, source)},
    }


PAPER: dict[str, dict[str, dict[str, Figure]]] = {
    PAPER_ROW: {
        **_video(42.6, 37.8, 35.1, 52.2, f"{_TABLE2}; {_README}, LanguageBind_Video (LoRA)"),
        "nyud": {"top1": Figure(65.1, _CLS)},
        "llvip": {"top1": Figure(87.2, _CLS)},
        "esc50": {"top1": Figure(91.8, _CLS)},
    },
    "LanguageBind_Video": _video(42.6, 37.8, 35.1, 52.2, f"{_README}, LanguageBind_Video (LoRA)"),
    "LanguageBind_Video_FT": _video(42.7, 38.1, 36.9, 53.5, f"{_README}, LanguageBind_Video_FT"),
    "LanguageBind_Video_V1.5_FT": _video(42.8, 39.7, 38.4, 54.1, f"{_README}, LanguageBind_Video_V1.5_FT"),
    "LanguageBind_Video_Huge_V1.5_FT": _video(
        44.8, 39.9, 41.0, 53.7, f"{_README}, LanguageBind_Video_Huge_V1.5_FT"
    ),
}


def reference_row(checkpoint: str, requested: str | None = None) -> str:
    """The row to compare with: ``requested``, else the released tower named in the checkpoint path
    or hub id (the longest that matches), else the paper's row."""
    if requested:
        if requested not in PAPER:
            raise ValueError(f"--paper-model {requested!r}: choose from {sorted(PAPER)}")
        return requested
    named = [k for k in PAPER if k != PAPER_ROW and k.lower() in checkpoint.lower()]
    return max(named, key=len) if named else PAPER_ROW


def figures_for(row: str, benchmark: str) -> dict[str, Figure]:
    """The row's figures for ``benchmark``; the paper's row fills benchmarks the row lacks."""
    return PAPER.get(row, {}).get(benchmark) or PAPER[PAPER_ROW].get(benchmark, {})
