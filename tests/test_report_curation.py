"""The report's curation section on the fixture run with clip and score manifests: each score's
histogram (kept and filtered apart) with its threshold, the rows each rule filtered, and examples
with their first frame, all equal to what the manifests hold."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.report import write_report
from pipeline.report_curation import COSINE_EDGES, MOTION_EDGES
from pipeline.report_stats import collect
from stages import STAGE_ORDER
from tests.test_report import by_label, parse_tables, rows_of
from tests.test_report_fixture import MIN_MOTION, SCORE_CONFIG, add_curation, build_run

HAS_SCORE = "score" in STAGE_ORDER  # the score stage registered in this checkout


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    d = tmp_path_factory.mktemp("curation")
    root = build_run(d / "run")
    rows = add_curation(root)
    index = write_report(root, d / "out", samples=4, seed=1)
    return root, rows, index


def test_motion_histogram_counts_kept_and_filtered_rows_with_the_threshold(curated):
    root, rows, index = curated
    clip = [r for r in rows["clip"] if r.get("motion") is not None]
    tables = parse_tables(index.read_text())
    motion = by_label(tables["curation-clip-motion"])
    kept = [r["motion"] for r in clip if r["status"] == "ok"]
    dropped = [r["motion"] for r in clip if r["status"] == "filtered"]
    assert (len(kept), len(dropped)) == (7, 2)
    assert int(motion["rows kept (ok)"]["value"]) == 7 and int(motion["rows filtered"]["value"]) == 2
    assert float(motion["clip.min_motion"]["value"]) == MIN_MOTION
    everything = kept + dropped
    assert float(motion["mean (all rows)"]["value"]) == pytest.approx(np.mean(everything))
    assert float(motion["min (all rows)"]["value"]) == min(everything)
    assert float(motion["max (all rows)"]["value"]) == max(everything)
    (h,) = [h for h in collect(str(root)).curation.scores if h.column == "motion"]
    assert h.kept.hist.tolist() == np.histogram(np.clip(kept, 0, MOTION_EDGES[-1]), MOTION_EDGES)[0].tolist()
    assert h.filtered.hist.tolist() == np.histogram(dropped, MOTION_EDGES)[0].tolist()
    assert h.kept.hist[-1] == 1  # 3.6 is past the last edge: the top bin takes it
    assert (index.parent / "plots" / "curation-clip-motion.png").stat().st_size > 1000


def test_each_rule_lists_its_rows_and_examples_with_their_first_frame(curated):
    root, rows, index = curated
    page = index.read_text()
    rules = by_label(parse_tables(page)["curation-rules"])
    motion_ids = [r["video_id"] for r in rows["clip"] if (r["error"] or "").startswith("motion ")]
    assert int(rules["clip.min_motion"]["rows"]) == len(motion_ids) == 2
    assert int(rules["split into clips"]["rows"]) == 1
    for vid in motion_ids:
        assert f'data-video-id="{vid}"' in page
    ex = collect(str(root)).curation
    (rule,) = [r for r in ex.rules if r.name == "clip.min_motion"]
    assert sorted(e.video_id for e in rule.examples) == sorted(motion_ids)
    assert all(e.frame for e in rule.examples)  # the clip stage keeps a filtered clip's frames
    by_id = {r["video_id"]: r for r in rows["clip"]}
    for e in rule.examples:
        assert e.frame == by_id[e.video_id]["frames"][0] and e.value == by_id[e.video_id]["motion"]
        assert (e.parent_id, e.start, e.end) == tuple(
            by_id[e.video_id][k] for k in ("parent_id", "start", "end")
        )
    thumbs = sorted((index.parent / "samples" / "curation").glob("*.jpg"))
    assert thumbs and all(f'src="samples/curation/{t.name}"' in page for t in thumbs)
    assert {t.read_bytes() for t in thumbs} >= {e.frame for e in rule.examples}


@pytest.mark.skipif(not HAS_SCORE, reason="the score stage is not registered in this checkout")
def test_score_histograms_thresholds_and_rules(curated):
    root, rows, index = curated
    tables = parse_tables(index.read_text())
    score = rows["score"]
    mplug = by_label(tables["curation-score-score_mplug"])
    assert int(mplug["rows kept (ok)"]["value"]) == sum(r["status"] == "ok" for r in score) == 4
    assert int(mplug["rows filtered"]["value"]) == 3
    assert float(mplug["score.min_similarity"]["value"]) == SCORE_CONFIG["min_similarity"]
    assert "curation-score-score_raw" in tables and "score.min_similarity" not in by_label(
        tables["curation-score-score_raw"]
    )
    rules = by_label(tables["curation-rules"])
    assert int(rules["score.min_similarity"]["rows"]) == 2 and int(rules["score.dedup"]["rows"]) == 1
    (h,) = [h for h in collect(str(root)).curation.scores if h.column == "score_mplug"]
    assert "score.dedup: clips whose clip embeddings are at cosine 0.95 or above are one" in h.notes
    stored = rows_of(root, "score")  # as the stage's schema stores them (float32 there)
    kept = [r["score_mplug"] for r in stored if r["status"] == "ok"]
    assert h.kept.hist.tolist() == np.histogram(kept, COSINE_EDGES)[0].tolist()
    ex = {r.name: r for r in collect(str(root)).curation.rules}
    clip = {r["video_id"]: r for r in rows["clip"]}
    for e in [*ex["score.dedup"].examples, *ex["score.min_similarity"].examples]:
        c = clip[e.video_id]  # frame, parent and span from the clip manifest
        assert (e.frame, e.parent_id, e.start, e.end) == (
            c["frames"][0],
            c["parent_id"],
            c["start"],
            c["end"],
        )
    assert "curation-score-score_ofa" not in tables  # a score column without values is left out


def test_a_run_without_curation_stages_has_no_curation_section(tmp_path):
    root = build_run(tmp_path / "run")
    page = write_report(root, tmp_path / "out", samples=2).read_text()
    assert 'id="curation"' not in page and "#curation" not in page
    assert collect(str(root)).curation is None


def test_a_still_run_without_filters_says_so(tmp_path):
    root = build_run(tmp_path / "run", upto="probe")
    add_curation(root, with_score=False)
    page = write_report(root, tmp_path / "out", samples=0).read_text()
    assert 'id="curation"' in page and "curation-clip-motion" in page
