"""The run report's one HTML page: funnel, statistics and samples, self-contained and script-free.

Every text that reaches the page goes through ``esc`` (``html.escape`` with quotes), whether it came
from the web (titles, captions, hashtags, URLs) or from the run (paths, reasons). The page has no
script at all and says so in a Content-Security-Policy, so even a missed escape could not run one;
images and audio are files next to ``index.html`` (``'self'``), styles are inline, fonts are the
system's. Tables carry their raw numbers in ``data-value`` so tests can read them exactly.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

from contracts.shard_format import NUM_FRAMES
from contracts.status import FAILED, FILTERED, OK
from pipeline.report_curation import Curation, score_rows
from pipeline.report_stats import RunStats, StageFunnel

CSP = "default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'"
SAMPLE_TEXT_FIELDS = ("raw", "ofa", "mplug", "polish_mplug", "sound_mplug", "asr")
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2329;background:#f6f7f9}
header{background:#1f3b57;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header .meta{font-size:13px;opacity:.85;word-break:break-all}nav a{color:#cfe3f7;margin-right:16px;font-size:14px}
main{padding:8px 28px 40px;max-width:1500px}h2{border-bottom:2px solid #1f3b57;padding-bottom:4px;margin-top:32px}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:10px 14px}
.card b{display:block;font-size:20px}.card span{font-size:12px;color:#5b6670}
table{border-collapse:collapse;background:#fff;font-size:13px}th,td{border:1px solid #dde2e8;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pair{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}.plot{max-width:380px;background:#fff;border:1px solid #dde2e8}
.stats{display:grid;grid-template-columns:repeat(auto-fill,minmax(620px,1fr));gap:4px 28px}.stat{margin:12px 0 18px}.source,.note{font-size:12px;color:#5b6670;margin:2px 0 8px}.empty{color:#5b6670;font-style:italic}
.sample{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:12px 16px;margin:16px 0}
.sample-body{display:flex;flex-wrap:wrap;gap:8px 24px}.media{flex:none}.texts{flex:1 1 380px;min-width:0}
.sample h3{margin:0 0 4px;font-size:16px;word-break:break-word}.facts{font-size:12px;color:#5b6670;margin-bottom:8px;word-break:break-all}
.strip{display:flex;align-items:center;gap:4px;margin:3px 0}.strip .label{width:54px;font-size:12px;color:#5b6670;flex:none}
.strip img{height:72px;width:auto;border-radius:2px;background:#ddd}.scale{display:flex;align-items:center;gap:6px;font-size:12px;margin:2px 0 6px 58px}
.scale img{height:10px;width:200px}dl{display:grid;grid-template-columns:130px 1fr;gap:3px 12px;font-size:13px;margin:8px 0}
dt{font-weight:600;color:#34414d}dd{margin:0;white-space:pre-wrap;word-break:break-word;max-height:9.5em;overflow-y:auto}dd ol{margin:0;padding-left:20px}
.missing{color:#98a2ab;font-style:italic}p.missing{font-size:12px;margin:4px 0}.problem{color:#b03a2e;font-size:12px}
.s-ok{color:#2d7a47}.s-failed{color:#b03a2e}.s-filtered{color:#a66d00}
.examples{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 16px}.example{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:6px 8px;width:230px;font-size:12px;word-break:break-all}
.example img{width:100%;height:auto;border-radius:2px;background:#ddd}
"""


@dataclass
class SampleView:
    """One sample as the page shows it: metadata, and the paths of its files relative to index.html."""

    index: int
    key: str
    shard: str
    meta: dict[str, Any]
    rgb: list[str] = field(default_factory=list)
    depth: list[str] = field(default_factory=list)
    depth_range: tuple[float, float] | None = None
    ir: list[str] = field(default_factory=list)
    audio: str | None = None
    audio_seconds: float | None = None
    problems: list[str] = field(default_factory=list)


def esc(value: Any) -> str:
    """Text for HTML content or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any, header: str = "") -> str:
    """A table value for reading: thousands separators, shares in %, floats to 2-3 significant places."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if header == "share":
        return f"{100 * value:.1f} %"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3g}"
    return str(value)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def table(headers: list[str], rows: list[list[Any]], attrs: str = "") -> str:
    """A table whose first cell per row is its label (``data-key``) and others carry ``data-value``."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = [f"<th>{esc(row[0])}</th>"]
        for h, v in zip(headers[1:], row[1:]):
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            raw = esc(repr(v) if num else ("" if v is None else v))
            cells.append(f'<td class="{"num" if num else "txt"}" data-value="{raw}">{esc(fmt(v, h))}</td>')
        body.append(f'<tr data-key="{esc(row[0])}">{"".join(cells)}</tr>')
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def funnel_section(funnel: list[StageFunnel], plot: str | None) -> str:
    rows = []
    for f in funnel:
        s = f.success or {}
        rows.append(
            [
                f.stage,
                f.rows,
                f.counts.get(OK, 0),
                f.counts.get(FAILED, 0),
                f.counts.get(FILTERED, 0),
                f.counts.get(OK, 0) / f.rows if f.rows else None,
                "yes" if f.success else "no (running or stopped)",
                s.get("rows_in"),
                s.get("wall_s"),
                s.get("rows_per_s"),
                ", ".join(f"{k}={v}" for k, v in sorted((s.get("models") or {}).items())) or None,
            ]
        )
    headers = [
        "stage",
        "rows",
        OK,
        FAILED,
        FILTERED,
        "share",
        "complete",
        "last run: rows in",
        "wall s",
        "rows/s",
        "models",
    ]
    out = [
        '<section id="funnel"><h2>Funnel</h2>',
        '<p class="source">Rows: the whole manifest of each stage by status. The last run columns come from the '
        "stage's _SUCCESS.json (written when a stage completes).</p>",
        '<div class="pair">',
        table(headers, rows, 'data-stat="funnel"'),
    ]
    if plot:
        out.append(f'<img class="plot" src="{esc(plot)}" alt="rows per stage by status">')
    out.append("</div><h3>Top failure and filter reasons</h3>")
    reasons = [
        [f.stage, r.status, r.pattern, r.count, r.example_id, r.example_error]
        for f in funnel
        for r in f.reasons
    ]
    if reasons:
        out.append(
            '<p class="source">Reasons that differ only in paths, ids and numbers (shown as &lt;path&gt;, '
            "&lt;id&gt;, #) are counted together; each has one example row.</p>"
        )
        out.append(
            table(
                ["stage", "status", "reason", "rows", "example video_id", "example error"],
                reasons,
                'data-stat="reasons"',
            )
        )
    else:
        out.append('<p class="empty">No failed or filtered rows.</p>')
    return "\n".join(out) + "</section>"


def stats_section(stats: RunStats, plots: dict[str, str]) -> str:
    out = ['<section id="stats"><h2>Statistics</h2><div class="stats">']
    if not stats.stats:
        out.append('<p class="empty">No statistics yet: no stage with these columns has run.</p>')
    for st in stats.stats:
        out.append(
            f'<div class="stat" id="stat-{esc(st.key)}"><h3>{esc(st.title)}</h3>'
            f'<p class="source">from {esc(st.source)}</p><div class="pair">'
        )
        out.append(table(st.headers, st.rows, f'data-stat="{esc(st.key)}"'))
        if st.key in plots:
            out.append(f'<img class="plot" src="{esc(plots[st.key])}" alt="{esc(st.title)}">')
        out.append("</div>" + "".join(f'<p class="note">{esc(n)}</p>' for n in st.notes) + "</div>")
    return "\n".join(out) + "</div></section>"


def curation_key(stage: str, column: str) -> str:
    """The plot key (and element id) of one curation score."""
    return f"curation-{stage}-{column}"


def curation_section(cur: Curation | None, plots: dict[str, str], thumbs: dict[str, str]) -> str:
    """Each score's histogram (kept and filtered rows, the threshold), then what each rule filtered,
    with example rows (their first frame from ``thumbs``: video_id -> image path)."""
    if cur is None:
        return ""
    out = [
        '<section id="curation"><h2>Curation</h2>',
        '<p class="source">Each score over every row of the stage that wrote it (kept: ok; filtered: by any '
        "rule), with the threshold from the configuration the stage recorded in its _SUCCESS.json; then "
        "the rows each curation rule filtered, with examples.</p>",
        '<div class="stats">',
    ]
    if not cur.scores:
        out.append('<p class="empty">No scores in this run (clip.motion off, no score stage).</p>')
    for h in cur.scores:
        key = curation_key(h.stage, h.column)
        out.append(
            f'<div class="stat" id="stat-{esc(key)}"><h3>{esc(h.column)}</h3>'
            f'<p class="source">from {esc(h.stage)}: every row with a value</p><div class="pair">'
        )
        out.append(table([h.column, "value"], score_rows(h), f'data-stat="{esc(key)}"'))
        if key in plots:
            out.append(f'<img class="plot" src="{esc(plots[key])}" alt="histogram of {esc(h.column)}">')
        out.append("</div>" + "".join(f'<p class="note">{esc(n)}</p>' for n in h.notes) + "</div>")
    out.append("</div><h3>Filtered by each rule</h3>")
    if not cur.rules:
        out.append('<p class="empty">No row was filtered by a curation rule.</p>')
        return "\n".join(out) + "</section>"
    out.append(
        table(
            ["rule", "stage", "rows", "what it filters"],
            [[r.name, r.stage, r.rows, r.meaning] for r in cur.rules],
            'data-stat="curation-rules"',
        )
    )
    for r in cur.rules:
        out.append(f"<h4>{esc(r.name)} ({esc(r.stage)}): {len(r.examples)} of {r.rows:,} rows</h4>")
        out.append(f'<div class="examples" data-rule="{esc(r.name)}">')
        for e in r.examples:
            img = (
                f'<img src="{esc(thumbs[e.video_id])}" alt="first frame of {esc(e.video_id)}">'
                if e.video_id in thumbs
                else '<p class="missing">no frame</p>'
            )
            span = f"{fmt(e.start)}–{fmt(e.end)} s" if e.start is not None and e.end is not None else "—"
            out.append(
                f'<div class="example" data-video-id="{esc(e.video_id)}">{img}<div><b>{esc(e.video_id)}</b></div>'
                f"<div>parent {esc(e.parent_id or '—')} · {esc(span)} · score {esc(fmt(e.value))}</div>"
                f'<div class="s-filtered">{esc(e.error)}</div></div>'
            )
        out.append("</div>")
    return "\n".join(out) + "</section>"


def _strip(label: str, paths: list[str], modality: str) -> str:
    imgs = "".join(f'<img src="{esc(p)}" alt="{esc(modality)} frame {i}">' for i, p in enumerate(paths))
    return f'<div class="strip" data-modality="{esc(modality)}"><span class="label">{esc(label)}</span>{imgs}</div>'


def _text_value(value: Any) -> str:
    if value is None or value == "" or value == []:
        return '<span class="missing">not in this run</span>'
    if isinstance(value, list):
        return "<ol>" + "".join(f"<li>{esc(v)}</li>" for v in value) + "</ol>"
    return esc(value)


def _number(value: Any) -> float | None:
    """A JSON value as a float, or None when it is absent or not a number."""
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _link(url: Any) -> str:
    text = esc(url)
    if isinstance(url, str) and url.lower().startswith(("https://", "http://")):
        return f'<a href="{text}" rel="noopener noreferrer nofollow">{text}</a>'
    return text


def sample_card(s: SampleView, depth_scale: str | None) -> str:
    m = s.meta
    facts = [f"video_id {esc(s.key)}", f"shard {esc(s.shard)}"]
    if (duration := _number(m.get("duration"))) is not None:
        facts.append(f"{esc(fmt(duration))} s")
    if m.get("width") and m.get("height"):
        facts.append(f"{esc(m['width'])}×{esc(m['height'])}")
    if fps := _number(m.get("fps")):
        facts.append(f"{esc(fmt(fps))} fps")
    if m.get("license"):
        facts.append(f"license {esc(m['license'])}")
    out = [
        f'<article class="sample" id="sample-{s.index}" data-key="{esc(s.key)}">',
        f'<h3 class="title">{esc(m.get("title") or "(no title)")}</h3>',
        f'<div class="facts">{" · ".join(facts)}</div>',
    ]
    if m.get("url"):
        out.append(f'<div class="facts">url {_link(m["url"])}</div>')
    out.append('<div class="sample-body"><div class="media">')
    out.append(_strip("RGB", s.rgb, "rgb") if s.rgb else '<p class="missing">no RGB frames</p>')
    if s.depth:
        out.append(_strip("Depth", s.depth, "depth"))
        if s.depth_range and depth_scale:
            near, far = s.depth_range
            unit = "m" if m.get("depth_kind") != "relative" else "(relative, not metres)"
            out.append(
                f'<div class="scale" data-near="{near!r}" data-far="{far!r}"><span>near {near:.2f} {esc(unit)}'
                f'</span><img src="{esc(depth_scale)}" alt="depth colour scale"><span>far {far:.2f} {esc(unit)}'
                '</span><span class="missing">grey: no depth</span></div>'
            )
    if s.ir:
        out.append(_strip("IR", s.ir, "ir"))
    if len(s.rgb) < NUM_FRAMES or not s.depth or not s.ir:
        have = [n for n, v in (("RGB", s.rgb), ("depth", s.depth), ("IR", s.ir)) if v]
        out.append(
            f'<p class="missing">frames in this sample: {esc(", ".join(have) or "none")}'
            f" ({len(s.rgb)} RGB, {len(s.depth)} depth, {len(s.ir)} IR)</p>"
        )
    if s.audio:
        secs = f" {s.audio_seconds:.1f} s" if s.audio_seconds is not None else ""
        out.append(
            f'<div class="strip"><span class="label">Audio</span><audio controls preload="metadata" '
            f'src="{esc(s.audio)}"></audio><span class="missing">FLAC{esc(secs)}</span></div>'
        )
    else:
        out.append('<p class="missing">no audio</p>')
    out.append('</div><div class="texts">')
    tags = m.get("hashtags") if isinstance(m.get("hashtags"), list) else []
    texts = [("title", m.get("title")), ("hashtags", " ".join(f"#{t}" for t in tags) or None)]
    texts += [(k, m.get(k)) for k in SAMPLE_TEXT_FIELDS]
    out.append(
        "<dl>"
        + "".join(f'<dt>{esc(k)}</dt><dd data-field="{esc(k)}">{_text_value(v)}</dd>' for k, v in texts)
        + "</dl>"
    )
    models = m.get("models") or {}
    if isinstance(models, dict) and models:
        out.append(
            table(["stage", "model"], [[k, str(v)] for k, v in sorted(models.items())], 'class="models"')
        )
    out += [f'<p class="problem">{esc(p)}</p>' for p in s.problems]
    return "\n".join(out) + "</div></div></article>"


def samples_section(samples: list[SampleView], depth_scale: str | None, note: str) -> str:
    out = ['<section id="samples"><h2>Samples</h2>', f'<p class="source">{esc(note)}</p>']
    out += [sample_card(s, depth_scale) for s in samples]
    return "\n".join(out) + "</section>"


def render_page(
    stats: RunStats,
    plots: dict[str, str],
    samples: list[SampleView],
    depth_scale: str | None,
    samples_note: str,
    generated: str,
    thumbs: dict[str, str] | None = None,
) -> str:
    """The whole page; ``plots`` maps a statistic's key (and ``funnel``) to its image path."""
    cards = [(len(stats.funnel), "stages in this run")]
    if stats.shards:
        sh = stats.shards
        cards += [
            (sh["samples"], "samples in shards"),
            (sh["shards"], "shards"),
            (human_bytes(sh["bytes"]), "in tars"),
            (sh["has_audio"], "with audio"),
            (sh["has_depth"], "with depth"),
            (sh["has_ir"], "with infrared"),
        ]
    card_html = "".join(
        f'<div class="card"><b>{esc(fmt(v))}</b><span>{esc(t)}</span></div>' for v, t in cards
    )
    stages = ", ".join(f.stage for f in stats.funnel) or "none"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vidal report: {esc(stats.root.rsplit("/", 1)[-1])}</title><style>{CSS}</style></head>
<body><header><h1>vidal dataset report</h1>
<div class="meta">run root {esc(stats.root)} · stages: {esc(stages)} · generated {esc(generated)}</div>
<nav><a href="#funnel">Funnel</a>{'<a href="#curation">Curation</a>' if stats.curation else ""}<a href="#stats">Statistics</a><a href="#samples">Samples</a></nav></header>
<main><div class="cards" style="margin-top:16px">{card_html}</div>
{funnel_section(stats.funnel, plots.get("funnel"))}
{curation_section(stats.curation, plots, thumbs or {})}
{stats_section(stats, plots)}
{samples_section(samples, depth_scale, samples_note)}
</main></body></html>
"""
