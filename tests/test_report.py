"""The run report on a small generated run: its tables equal the manifests, it escapes web text,
it shows only what a partial run has, it samples shards without reading them all, and the CLI works."""

from __future__ import annotations

import html
import io
import re
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from contracts import manifest, store
from contracts import shard_format as fmt
from pipeline.report import ReportError, write_report
from pipeline.report_measures import BoundedCounter, aspect_name, duration_grade
from pipeline.report_stats import collect, reason_pattern
from stages.shard import raw_text
from tests.test_report_fixture import ASPECTS, HOSTILE_TAG, HOSTILE_TITLE, build_run

REPO = Path(__file__).resolve().parent.parent
SAMPLES = 8


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("report")
    root = build_run(d / "run")
    return root, write_report(root, d / "out", samples=SAMPLES, seed=3)


class _Tables(HTMLParser):
    """Collects every ``table[data-stat]`` as headers plus rows of (label, {header: data-value})."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict] = {}
        self.current: dict | None = None
        self.in_head = False
        self.text: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "data-stat" in a:
            self.current = self.tables[a["data-stat"]] = {"headers": [], "rows": []}
        elif self.current is None:
            return
        elif tag == "thead":
            self.in_head = True
        elif tag == "th" and self.in_head:
            self.text = []
        elif tag == "tr" and not self.in_head:
            self.current["rows"].append((a["data-key"], {}))
        elif tag == "td":
            row = self.current["rows"][-1][1]
            row[self.current["headers"][len(row) + 1]] = a["data-value"]

    def handle_data(self, data):
        if self.text is not None:
            self.text.append(data)

    def handle_endtag(self, tag):
        if tag == "th" and self.text is not None:
            self.current["headers"].append("".join(self.text))
            self.text = None
        elif tag == "thead":
            self.in_head = False
        elif tag == "table":
            self.current = None


def parse_tables(page: str) -> dict[str, dict]:
    p = _Tables()
    p.feed(page)
    return p.tables


def rows_of(root: Path, stage: str) -> list[dict]:
    return [r for part in manifest.part_files(str(root), stage) for r in pq.read_table(part).to_pylist()]


def ok_rows(root: Path, stage: str) -> list[dict]:
    return [r for r in rows_of(root, stage) if r["status"] == "ok"]


def by_label(table: dict) -> dict[str, dict[str, str]]:
    return {label: values for label, values in table["rows"]}


def counts(table: dict, header: str = "videos") -> dict[str, int]:
    return {label: int(v[header]) for label, v in table["rows"]}


def check_funnel(tables: dict[str, dict], root: Path) -> None:
    """The funnel and reason tables, recomputed here from the manifests and _SUCCESS.json files."""
    present = [
        s
        for s in ("discover", "download", "probe", "caption", "asr", "enhance", "depth", "infrared", "shard")
        if manifest.has_output(str(root), s)
    ]
    funnel = by_label(tables["funnel"])
    assert list(funnel) == present
    for stage in present:
        c = Counter(r["status"] for r in rows_of(root, stage))
        row = funnel[stage]
        assert [int(row[k]) for k in ("rows", "ok", "failed", "filtered")] == [
            sum(c.values()),
            c["ok"],
            c["failed"],
            c["filtered"],
        ]
        success = manifest.read_success(str(root), stage)
        assert row["complete"].startswith("yes" if success else "no")
        assert (float(row["wall s"]) if row["wall s"] else None) == (success["wall_s"] if success else None)

    reasons = tables.get("reasons", {"rows": []})["rows"]
    for stage in present:
        for status in ("failed", "filtered"):
            bad = {r["video_id"]: r["error"] for r in rows_of(root, stage) if r["status"] == status}
            shown = [v for label, v in reasons if label == stage and v["status"] == status]
            assert sum(int(v["rows"]) for v in shown) == len(
                bad
            )  # the fixture has few enough groups to show all
            for v in shown:
                assert bad[v["example video_id"]] == v["example error"]


def check_tables(tables: dict[str, dict], root: Path) -> None:
    """Every number the report's tables show, recomputed here from the manifests themselves."""
    check_funnel(tables, root)
    probe = ok_rows(root, "probe")
    grades = Counter()
    for r in probe:
        d = r["duration"]
        grades[
            "under 1 s"
            if d < 1
            else "1–7 s"
            if d < 8
            else "8–14 s"
            if d < 15
            else "15–20 s"
            if d < 21
            else "21 s and over"
        ] += 1
    duration = by_label(tables["duration"])
    assert {g: int(duration[g]["videos"]) for g in grades} == dict(grades)
    assert sum(
        int(duration[g]["videos"]) for g in ("under 1 s", "1–7 s", "8–14 s", "15–20 s", "21 s and over")
    ) == len(probe)
    assert float(duration["mean (s)"]["videos"]) == pytest.approx(np.mean([r["duration"] for r in probe]))
    assert float(duration["max (s)"]["videos"]) == max(r["duration"] for r in probe)
    assert counts(tables["resolution"]) == Counter(f"{r['width']}×{r['height']}" for r in probe)
    assert counts(tables["aspect"]) == Counter(ASPECTS[(r["width"], r["height"])] for r in probe)
    assert counts(tables["fps"]) == Counter(f"{round(r['fps'], 2):g}" for r in probe)
    assert counts(tables["audio"]) == Counter(
        "with audio" if r["has_audio"] else "without audio" for r in probe
    )
    assert counts(tables["asr_language"]) == Counter(
        r["asr_language"] or "(none)" for r in ok_rows(root, "asr")
    )
    assert counts(tables["search"]) == Counter(r["query"] for r in ok_rows(root, "discover") if r["query"])

    sources = {
        "title": "discover",
        "raw": "discover",
        "ofa": "caption",
        "mplug": "caption",
        "polish_mplug": "enhance",
        "sound_mplug": "enhance",
        "asr": "asr",
    }
    text = by_label(tables["text"])
    assert set(text) == set(sources)
    for name, stage in sources.items():
        rows = ok_rows(root, stage)
        texts = (
            [raw_text(r) for r in rows]
            if name == "raw"
            else [t for r in rows for t in (r[name] if isinstance(r[name], list) else [r[name]])]
        )
        kept = [t for t in texts if t and t.strip()]
        words = [len(t.split()) for t in kept]
        row = text[name]
        assert (int(row["texts"]), int(row["empty"])) == (len(kept), len(texts) - len(kept)), name
        assert float(row["mean words"]) == pytest.approx(np.mean(words)), name
        assert (float(row["min words"]), float(row["max words"])) == (min(words), max(words)), name
        assert float(row["mean chars"]) == pytest.approx(np.mean([len(t) for t in kept])), name

    mm = np.concatenate(
        [
            np.asarray(Image.open(io.BytesIO(png))).ravel()
            for r in ok_rows(root, "depth")
            for png in r["depth"]
        ]
    ).astype(np.int64)
    valid = mm[mm > 0]
    depth = by_label(tables["depth"])
    assert int(depth["frames"]["value"]) == 8 * len(ok_rows(root, "depth"))
    assert int(depth["pixels without depth (0)"]["value"]) == int((mm == 0).sum())
    assert int(depth["valid pixels at the 10 m clip"]["value"]) == int((valid >= fmt.DEPTH_MAX_MM).sum())
    assert float(depth["min (m)"]["value"]) == valid.min() / 1000
    assert float(depth["max (m)"]["value"]) == valid.max() / 1000
    assert float(depth["mean (m)"]["value"]) == pytest.approx(valid.mean() / 1000)
    assert counts(tables["depth_kind"]) == Counter(r["depth_kind"] for r in ok_rows(root, "depth"))

    expected_models = Counter()
    for stage in ("caption", "asr", "enhance", "depth", "infrared"):
        for r in ok_rows(root, stage):
            expected_models.update((stage, v) for k, v in r.items() if k == f"{stage}_model")
    assert {(label, v["model"]): int(v["rows"]) for label, v in tables["models"]["rows"]} == expected_models


def test_tables_equal_values_computed_from_the_manifests(report):
    root, index = report
    check_tables(parse_tables(index.read_text()), root)


def test_reasons_that_differ_only_in_numbers_and_paths_are_one_row(report):
    root, index = report
    reasons = parse_tables(index.read_text())["reasons"]["rows"]
    grouped = {(label, v["status"], v["reason"]): int(v["rows"]) for label, v in reasons}
    # the two 404s name different URLs, the two long videos different durations
    assert grouped[("download", "failed", "HTTP Error #: Not Found (<path>)")] == 2
    assert grouped[("probe", "filtered", "duration #s above max_duration #s")] == 2
    assert reason_pattern("file not found: /x/a1b2c3d4e5f6.mp4") == reason_pattern("file not found: /y/z.mp4")
    assert reason_pattern("resolution 16x16 below 64") == "resolution #x# below #"


def test_web_text_is_escaped_and_the_page_has_no_script(report):
    _, index = report
    page = index.read_text()
    assert "<script" not in page.lower() and "onerror=" not in page.replace("onerror=&quot;", "")
    assert html.escape(HOSTILE_TITLE, quote=True) in page
    assert html.escape(HOSTILE_TAG, quote=True) in page
    assert "&lt;b&gt;a bold cat&lt;/b&gt; &amp; friends" in page


def test_samples_show_every_modality_and_text_of_random_shard_samples(report):
    root, index = report
    page = index.read_text()
    out = index.parent
    shard_ids = [r["video_id"] for r in ok_rows(root, "shard")]
    keys = [
        html.unescape(k)
        for k in re.findall(r'<article class="sample" id="sample-\d+" data-key="([^"]*)"', page)
    ]
    assert sorted(keys) == sorted(shard_ids[:SAMPLES])  # fewer samples than asked: all of them, once
    depth = {r["video_id"]: r["depth"] for r in ok_rows(root, "depth")}
    for i, key in enumerate(keys):
        d = out / "samples" / f"{i:03d}"
        assert (
            len(list(d.glob("rgb*.jpg")))
            == len(list(d.glob("depth*.png")))
            == len(list(d.glob("ir*.jpg")))
            == 8
        )
        mm = np.concatenate([np.asarray(Image.open(io.BytesIO(p))).ravel() for p in depth[key]])
        near, far = float(mm[mm > 0].min()) / 1000, float(mm[mm > 0].max()) / 1000
        assert f'data-near="{near!r}" data-far="{far!r}"' in page
        assert Image.open(d / "depth0.png").mode == "RGB"
    with_audio = {r["video_id"] for r in ok_rows(root, "probe") if r["has_audio"]}
    assert page.count("<audio ") == len(with_audio & set(keys))
    for src in re.findall(r'src="([^"]+)"', page):
        assert (out / html.unescape(src)).resolve().is_file() and (
            out / html.unescape(src)
        ).resolve().is_relative_to(out)


def test_batch_size_does_not_change_the_statistics(report):
    root, _ = report
    small, large = collect(str(root), batch_rows=2), collect(str(root), batch_rows=4096)
    assert [s.rows for s in small.stats] == [s.rows for s in large.stats]
    assert [(f.counts, f.reasons) for f in small.funnel] == [(f.counts, f.reasons) for f in large.funnel]


@pytest.mark.parametrize(
    "upto, stages", [("download", ["discover", "download"]), ("probe", ["discover", "download", "probe"])]
)
def test_partial_run_shows_only_the_stages_it_has(tmp_path, upto, stages):
    root = build_run(tmp_path / "run", upto=upto)
    page = write_report(root, tmp_path / "out", samples=4).read_text()
    tables = parse_tables(page)
    assert list(by_label(tables["funnel"])) == stages
    assert "depth" not in tables and "asr_language" not in tables and 'class="sample"' not in page
    assert "No shards yet" in page
    check_funnel(tables, root)
    assert counts(tables["search"]) == Counter(r["query"] for r in ok_rows(root, "discover") if r["query"])
    if upto == "probe":
        assert counts(tables["audio"]) == Counter(
            "with audio" if r["has_audio"] else "without audio" for r in ok_rows(root, "probe")
        )
    else:
        assert "duration" not in tables and "audio" not in tables


def test_bounded_counter_keeps_totals_and_the_frequent_keys():
    c = BoundedCounter(cap=100)
    for i in range(5000):
        c.add(f"rare{i}")
        c.add("common", 3)
    assert len(c.counts) <= 100 and c.pruned and c.total == 5000 * 4
    rows = c.table(top=5)
    assert rows[0][:2] == ["common", 15000] and rows[-1][0] == "other"
    assert sum(r[1] for r in rows) == c.total


def test_duration_grades_and_aspect_names():
    assert [duration_grade(x) for x in (0.4, 1.0, 7.99, 8.0, 14.9, 15.0, 20.9, 21.0)] == [
        "under 1 s",
        "1–7 s",
        "1–7 s",
        "8–14 s",
        "8–14 s",
        "15–20 s",
        "15–20 s",
        "21 s and over",
    ]
    assert [
        aspect_name(w, h) for w, h in ((1920, 1080), (1080, 1920), (640, 480), (500, 500), (1000, 1234))
    ] == ["16:9", "9:16", "4:3", "1:1", "other portrait"]


def test_cli_writes_the_report_and_refuses_a_foreign_directory(report, tmp_path):
    root, _ = report
    cmd = [
        sys.executable,
        "-m",
        "pipeline.report",
        "--root",
        str(root),
        "--out",
        str(tmp_path / "r"),
        "--samples",
        "2",
    ]
    for _ in range(2):  # a rerun replaces its own earlier report
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"report: {tmp_path / 'r' / 'index.html'}"
        assert len(list((tmp_path / "r" / "samples").iterdir())) == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    cmd[cmd.index("--out") + 1] = str(tmp_path / "mine")
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not empty" in done.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ReportError, match="no stage output"):
        write_report(tmp_path / "mine", tmp_path / "empty")


def test_hashtags_stand_in_for_search_terms_and_older_parts_lack_columns(tmp_path):
    root = tmp_path / "run"
    old = [
        {
            "video_id": f"a{i}",
            "status": "ok",
            "error": None,
            "title": f"t {i}",
            "hashtags": ["x", f"y{i % 2}"],
        }
        for i in range(5)
    ]
    new = [
        {
            "video_id": f"b{i}",
            "status": "ok",
            "error": None,
            "title": "t",
            "hashtags": ["x"],
            "duration": 2.0 + i,
        }
        for i in range(3)
    ]
    for rows in (old, new):
        store.write_parquet(manifest.new_part_uri(str(root), "discover"), pa.Table.from_pylist(rows))
    tables = parse_tables(write_report(root, tmp_path / "out").read_text())
    assert counts(tables["search"]) == Counter(t for r in old + new for t in r["hashtags"])
    assert int(by_label(tables["duration"])["videos"]["videos"]) == len(new)
    assert "No shards yet" in (tmp_path / "out" / "index.html").read_text()


@pytest.mark.slow
def test_report_of_a_real_pipeline_run(tmp_path, ray_local, good_videos, bad_inputs):
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline
    from tests.conftest import write_list

    rows = [
        {"path": str(p), "title": f"clip <b>{p.stem}</b>", "hashtags": "#demo #shapes"}
        for p in good_videos[:4]
    ]
    rows += [
        {"path": str(bad_inputs[k]), "title": k}
        for k in ("truncated", "missing", "tiny_resolution", "no_audio")
    ]
    inputs = write_list(tmp_path / "videos.csv", rows)
    root = tmp_path / "root"
    config = load_config(
        REPO / "configs" / "demo.yaml",
        [
            f"run.root={root}",
            "run.stages=[discover, download, probe, shard]",
            f"discover.inputs=[{inputs}]",
            "run.demo_media=",
            "shard.samples_per_shard=2",
            "run.rows_per_part=3",
        ],
    )
    reports = {r.stage: r for r in run_pipeline(config, ["discover", "download", "probe", "shard"])}
    index = write_report(root, tmp_path / "out", samples=3)
    tables = parse_tables(index.read_text())
    check_funnel(tables, root)
    funnel = by_label(tables["funnel"])
    for stage, r in reports.items():
        assert int(funnel[stage]["ok"]) == r.counts["ok"] and float(funnel[stage]["wall s"]) == r.wall_s
    probe = ok_rows(root, "probe")
    assert counts(tables["audio"]) == Counter(
        "with audio" if r["has_audio"] else "without audio" for r in probe
    )
    assert counts(tables["resolution"]) == Counter(f"{r['width']}×{r['height']}" for r in probe)
    page = index.read_text()
    assert page.count('<article class="sample"') == 3 and "clip &lt;b&gt;" in page
