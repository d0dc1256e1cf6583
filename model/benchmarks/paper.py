"""The figures LanguageBind reports, to print beside ours; each carries its source.

Keys are the released towers' hub names; ``LanguageBind`` is the paper's own row (ICLR 2024), the
row its results tables print without a star: the LoRA-tuned towers (``LanguageBind_Video``,
``_Audio``, ``_Depth``, ``_Thermal``). The starred row ("full tuning") is the ``_FT`` towers'. A model
that is none of them is compared with the paper's row. Metric names are paths into a record's
``metrics`` (``text_to_video.R@1``, ``top1``).

Every figure was read in the official repository (PKU-YuanGroup/LanguageBind, README.md at commit
7070c53, 2024-03-25): its "Main Results" section shows the paper's results tables as images
(``assets/result1.jpg``, ``assets/res1.jpg``, ``assets/res2.jpg``) and its "Model Zoo" a text table of
the video towers' R@1. Those sources give no table numbers, so none is cited. Benchmarks without a
checked figure print "-": SUN-D and ImageNet (no LanguageBind figure in these sources), AudioSet (the
"AS-A" column's metric is ambiguous, see docs/benchmarks.md), the video-to-text direction, and every
metric but R@1 of the V1.5 and Huge towers. docs/benchmarks.md says how to add one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    value: float
    source: str
    row: str  # the PAPER row the figure belongs to


PAPER_ROW = "LanguageBind"
_REPO = "LanguageBind README"
_VIDEO = f"{_REPO}, Main Results: Video-Language (assets/result1.jpg)"
_CLASSIFY = f"{_REPO}, Main Results: Multiple Modalities, zero-shot top-1 (assets/res1.jpg)"
_AUDIO = f"{_REPO}, Main Results: text-to-audio retrieval (assets/res2.jpg)"
_ZOO = f"{_REPO}, Model Zoo video table (8 frames)"
_LORA = "row LanguageBind"
_FULL = "row LanguageBind* (full tuning)"

Figures = dict[str, dict[str, Figure]]


def _retrieval(
    row: str, modality: str, source: str, cells: dict[str, tuple[float | None, ...]], ks: tuple[int, ...]
) -> Figures:
    """``cells[benchmark]`` = R@k for each k in ``ks`` (None: not in the source), text->item."""
    return {
        bench: {
            f"text_to_{modality}.R@{k}": Figure(v, source, row)
            for k, v in zip(ks, values, strict=True)
            if v is not None
        }
        for bench, values in cells.items()
    }


def _top1(row: str, source: str, cells: dict[str, float]) -> Figures:
    return {bench: {"top1": Figure(v, source, row)} for bench, v in cells.items()}


# Main Results, Video-Language: R@1/5/10 per dataset. The image names no direction; we file the
# figures as text->video, the direction the README's audio table names ("text-to-audio") and the
# one LanguageBind's vl_ret/retrieval.py logs first (docs/benchmarks.md).
_VIDEO_LORA = {
    "msrvtt": (42.6, 65.4, 75.5),
    "msvd": (52.2, 79.4, 87.3),
    "didemo": (37.8, 63.2, 73.4),
    "activitynet": (35.1, 63.4, 76.6),
}
_VIDEO_FULL = {
    "msrvtt": (42.7, 67.1, 77.0),
    "msvd": (53.5, 80.5, 87.5),
    "didemo": (38.1, 65.0, 73.6),
    "activitynet": (36.9, 65.1, 77.2),
}
# Model Zoo, R@1 of the 8-frame V1.5 towers (the LoRA and FT rows there equal the R@1 above).
_ZOO_R1 = {
    "LanguageBind_Video_V1.5_FT": {"msrvtt": 42.8, "didemo": 39.7, "activitynet": 38.4, "msvd": 54.1},
    "LanguageBind_Video_Huge_V1.5_FT": {"msrvtt": 44.8, "didemo": 39.9, "activitynet": 41.0, "msvd": 53.7},
}
# Main Results, Multiple Modalities (top-1): the columns our harness has. K400/K600 and VGGS have no
# benchmark here; AS-A is left out (see the module docstring).
_THERMAL = {"llvip": 87.2, "flir_v1": 82.9, "flir_v2": 48.0}
_DEPTH = {"nyud": 65.1}
_ESC_LORA = {"esc50": 91.8}
_ESC_FULL = {"esc50": 94.0}
# Main Results, text-to-audio retrieval: R@1 and R@10.
_AUDIO_LORA = {"clotho": (12.1, 44.0), "audiocaps": (12.2, 53.2)}
_AUDIO_FULL = {"clotho": (16.7, 52.0), "audiocaps": (19.7, 67.6)}


def _video_row(row: str, cells: dict[str, tuple[float, ...]], label: str) -> Figures:
    return _retrieval(row, "video", f"{_VIDEO}, {label}", cells, (1, 5, 10))


def _audio_row(row: str, esc: dict[str, float], ret: dict[str, tuple[float, ...]], label: str) -> Figures:
    return {
        **_top1(row, f"{_CLASSIFY}, {label}", esc),
        **_retrieval(row, "audio", f"{_AUDIO}, {label}", ret, (1, 10)),
    }


def _zoo_row(row: str) -> Figures:
    cells = {bench: (r1,) for bench, r1 in _ZOO_R1[row].items()}
    return _retrieval(row, "video", f"{_ZOO}, {row}", cells, (1,))


PAPER: dict[str, Figures] = {
    PAPER_ROW: {
        **_video_row(PAPER_ROW, _VIDEO_LORA, _LORA),
        **_audio_row(PAPER_ROW, _ESC_LORA, _AUDIO_LORA, _LORA),
        **_top1(PAPER_ROW, f"{_CLASSIFY}, {_LORA}", {**_THERMAL, **_DEPTH}),
    },
    "LanguageBind_Video": _video_row("LanguageBind_Video", _VIDEO_LORA, f"{_LORA} (LoRA tower)"),
    "LanguageBind_Video_FT": _video_row("LanguageBind_Video_FT", _VIDEO_FULL, _FULL),
    "LanguageBind_Video_V1.5_FT": _zoo_row("LanguageBind_Video_V1.5_FT"),
    "LanguageBind_Video_Huge_V1.5_FT": _zoo_row("LanguageBind_Video_Huge_V1.5_FT"),
    "LanguageBind_Audio": _audio_row("LanguageBind_Audio", _ESC_LORA, _AUDIO_LORA, f"{_LORA} (LoRA tower)"),
    "LanguageBind_Audio_FT": _audio_row("LanguageBind_Audio_FT", _ESC_FULL, _AUDIO_FULL, _FULL),
    "LanguageBind_Thermal": _top1("LanguageBind_Thermal", f"{_CLASSIFY}, {_LORA} (LoRA tower)", _THERMAL),
    "LanguageBind_Depth": _top1("LanguageBind_Depth", f"{_CLASSIFY}, {_LORA} (LoRA tower)", _DEPTH),
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
    """The row's figures for ``benchmark``; the paper's row fills benchmarks the row lacks (each
    figure's ``row`` says which row it came from)."""
    return PAPER.get(row, {}).get(benchmark) or PAPER[PAPER_ROW].get(benchmark, {})
