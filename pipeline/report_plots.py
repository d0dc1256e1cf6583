"""Figures of the run report (matplotlib's Agg canvas, written as PNG) and the depth colour map.

Figures are drawn on ``matplotlib.figure.Figure`` objects, not pyplot, so no global state or GUI
backend is involved. Labels that come from the web (hashtags, search terms) are drawn with
``parse_math=False``: a ``$`` in a hashtag is text, not TeX.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from contracts.status import FAILED, FILTERED, OK

STATUS_COLOURS = {OK: "#3a9a5b", FILTERED: "#e0a030", FAILED: "#d04a3a"}
BAND_COLOURS = ("#f2f2f2", "#dbe9f6", "#c6dbef", "#9ecae1", "#f2f2f2")
DEPTH_CMAP = "inferno_r"  # near is bright, far is dark
NO_DEPTH_RGB = (128, 128, 128)  # pixels without depth (0 mm)
LABEL_CHARS = 32


def _short(label: Any) -> str:
    text = str(label)
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _figure(height: float = 2.4) -> Figure:
    fig = Figure(figsize=(3.4, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def plot_stat(plot: dict[str, Any], path: Path) -> Path:
    """Draw one statistic's plot spec (``bar``, ``hist``, ``stacked`` or ``lines``) into a PNG file;
    ``stacked``: a score's kept and filtered rows per bin, with its ``threshold`` ([x, label]) drawn."""
    kind = plot["kind"]
    if kind == "bar":
        labels, values = plot["labels"][::-1], plot["values"][::-1]
        fig = _figure(max(1.3, 0.7 + 0.22 * len(labels)))
        ax = fig.add_subplot()
        pos = np.arange(len(labels))
        ax.barh(pos, values, height=0.7, color="#4c78a8")
        ax.set_yticks(pos, [_short(x) for x in labels], parse_math=False)
    else:
        fig = _figure()
        ax = fig.add_subplot()
        edges = np.asarray(plot["edges"], float)
        bands = plot.get("bands", [])
        for i, (lo, hi) in enumerate(zip(bands[:-1], bands[1:])):
            ax.axvspan(lo, min(hi, edges[-1]), color=BAND_COLOURS[i + 1], zorder=0)
            ax.text(
                (lo + min(hi, edges[-1])) / 2,
                0.97,
                f"{lo}–{hi - 1} s",
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=7,
                color="#34414d",
            )
        bottom = np.zeros(len(edges) - 1)
        for name, counts in plot["series"].items():
            if kind == "stacked":  # kept and filtered rows of a score, one on the other
                colour = STATUS_COLOURS[OK if name == "kept" else FILTERED]
                ax.bar(
                    edges[:-1],
                    counts,
                    width=np.diff(edges),
                    align="edge",
                    bottom=bottom,
                    color=colour,
                    label=name,
                    zorder=2,
                )
                bottom = bottom + np.asarray(counts, float)
            elif kind == "hist":
                ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4c78a8", zorder=2)
            else:
                ax.step(edges[:-1], counts, where="post", label=name, zorder=2)
        if kind == "stacked":
            if plot.get("threshold"):
                x, label = plot["threshold"]
                ax.axvline(x, color="#b03a2e", linestyle="--", linewidth=1.2, zorder=3)
                ax.text(
                    x,
                    0.97,
                    f" {label} {x:g}",
                    transform=ax.get_xaxis_transform(),
                    fontsize=7,
                    va="top",
                    color="#b03a2e",
                )
            ax.legend(fontsize=8, frameon=False, loc="center right")
        if kind == "lines" and plot["series"]:
            ax.legend(fontsize=8, frameon=False)
            # texts are short or long by field: show the bins that have any, not always 0-80 words
            used = [i for counts in plot["series"].values() for i, c in enumerate(counts) if c]
            ax.set_xlim(edges[0], edges[min(len(edges) - 1, max(used, default=0) + 2)])
        ax.set_ylabel("count")
    ax.set_xlabel(plot.get("xlabel", ""))
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def plot_funnel(stages: list[str], counts: list[dict[str, int]], path: Path) -> Path:
    """Horizontal stacked bars: each stage's rows by status, pipeline order top to bottom."""
    fig = _figure(max(1.6, 0.9 + 0.3 * len(stages)))
    ax = fig.add_subplot()
    pos = np.arange(len(stages))[::-1]
    left = np.zeros(len(stages))
    for status in (OK, FILTERED, FAILED):
        values = np.array([c.get(status, 0) for c in counts], float)
        ax.barh(pos, values, left=left, color=STATUS_COLOURS[status], label=status)
        left += values
    ax.set_yticks(pos, stages)
    ax.set_xlabel("rows")
    fig.legend(fontsize=8, frameon=False, ncols=3, loc="outside upper center")
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def _lut() -> np.ndarray:
    return (colormaps[DEPTH_CMAP](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


def colourize_depth(mm: np.ndarray, near_m: float, far_m: float) -> np.ndarray:
    """A depth map in millimetres -> RGB with ``near_m``..``far_m`` spread over the colour map."""
    span = max(far_m - near_m, 1e-3)
    t = np.clip((mm.astype(np.float64) / 1000.0 - near_m) / span, 0.0, 1.0)
    rgb = _lut()[np.round(t * 255).astype(np.intp)]
    rgb[mm == 0] = NO_DEPTH_RGB
    return rgb


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def depth_scale_strip(path: Path, width: int = 256, height: int = 10) -> Path:
    """The colour map as a horizontal strip (near on the left), shown under each sample's depth row."""
    path.write_bytes(png_bytes(np.repeat(_lut()[None, :, :], height, axis=0)[:, :: max(1, 256 // width)]))
    return path
