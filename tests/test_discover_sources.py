"""Discover's inputs and rules without Ray: ids, search queries and results, filters, dedup, terms."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from contracts import manifest, store
from contracts.video_ids import canonical_url, url_problem, video_id_for_path, video_id_for_url, youtube_id
from stages.base import RunContext
from stages.discover import INPUT_SCHEMA, DiscoverConfig, DiscoverStage
from stages.sources.dedup import KeyIndex, RunDedup, key_of
from stages.sources.lists import read_terms, search_options, search_query, search_result_rows
from stages.sources.text_rules import guess_language, load_stopwords, title_words
from tests.httpserver import unused_port

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parent.parent


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def stage(tmp_path: Path, **cfg) -> DiscoverStage:
    s = DiscoverStage(DiscoverConfig(**cfg), RunContext(root=str(tmp_path / "root")))
    s.setup()
    return s


def run_filters(s: DiscoverStage, rows: list[dict]) -> dict[str, dict]:
    out = s.process(pa.Table.from_pylist(rows, schema=INPUT_SCHEMA)).to_pylist()
    return {r["video_id"]: r for r in out}


# -- identity ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "https://www.youtube.com/watch?v=aB3dE5fG7hJ",
        "https://youtu.be/aB3dE5fG7hJ?t=4",
        "https://m.youtube.com/watch?feature=share&v=aB3dE5fG7hJ",
        "https://www.youtube.com/shorts/aB3dE5fG7hJ",
        "https://www.youtube.com/embed/aB3dE5fG7hJ?autoplay=1",
        "HTTPS://WWW.YOUTUBE.COM/watch?v=aB3dE5fG7hJ#t=3",
    ],
)
def test_every_youtube_url_form_gets_one_id(url):
    assert youtube_id(url) == "aB3dE5fG7hJ"
    assert video_id_for_url(url) == "youtube-aB3dE5fG7hJ"


def test_generic_urls_are_canonicalised_before_hashing(tmp_path):
    a = "HTTP://Example.COM:80/clips/cat.mp4?utm_source=x&id=3#frag"
    b = "http://example.com/clips/cat.mp4?id=3&fbclid=zzz"
    assert canonical_url(a) == canonical_url(b) == "http://example.com/clips/cat.mp4?id=3"
    assert video_id_for_url(a) == video_id_for_url(b)
    assert video_id_for_url("http://example.com/clips/cat.mp4?id=4") != video_id_for_url(a)
    # a file listed by path and by file:// URL is one video
    clip = tmp_path / "a b.mp4"
    assert video_id_for_url(clip.as_uri()) == video_id_for_path(str(clip))
    for vid in (video_id_for_url(a), video_id_for_url(clip.as_uri())):
        assert len(vid) <= 64 and vid.replace("-", "").replace("_", "").isalnum()


@pytest.mark.parametrize(
    "url, words",
    [
        ("http//example.com/a.mp4", "no scheme"),
        ("http://exa mple.com/a.mp4", "whitespace"),
        ("http:///a.mp4", "no host"),
        ("http://example.com:99999/a.mp4", "malformed"),
        ("ftp://example.com/a.mp4", "unsupported URL scheme"),
        ("javascript:alert(1)", "unsupported URL scheme"),
        ("file:///tmp/a.mp4", "allow_file_urls"),
    ],
)
def test_url_problems_are_named(url, words):
    assert words in url_problem(url, allow_file_urls=False)


def test_good_urls_have_no_problem():
    assert url_problem("https://example.com/a.mp4?x=1", False) is None
    assert url_problem("file:///tmp/a.mp4", True) is None


# -- search terms and queries --------------------------------------------------------------------------
def test_query_construction():
    assert search_query("dog  catching\tfrisbee") == "ytsearch20:dog catching frisbee"
    assert search_query("rain on a tin roof", "ytsearchdate", 50) == "ytsearchdate50:rain on a tin roof"
    with pytest.raises(ValueError):
        search_query("   ")
    with pytest.raises(ValueError, match="search key"):
        DiscoverConfig(search_prefix="ytsearch20:")


def test_shipped_term_list_is_a_real_starter_list():
    terms = read_terms("manifests/search_terms.txt")
    assert len(terms) >= 300 and len(set(terms)) == len(terms)
    assert all(t == " ".join(t.split()) and not t.startswith("#") for t in terms)
    assert {"dog catching a frisbee", "rain on a tin roof", "waves crashing on rocks"} <= set(terms)


def test_read_terms_skips_comments_blanks_and_repeats(tmp_path):
    f = tmp_path / "terms.txt"
    f.write_text("# header\ncat jumping\n\n  cat   jumping  \nkettle boiling # trailing note\n")
    assert read_terms(str(f)) == ["cat jumping", "kettle boiling"]


def test_planned_queries_skip_terms_already_in_the_manifest(tmp_path):
    s = stage(tmp_path, terms=["cat jumping", "kettle boiling", "cat jumping"], results_per_term=5)
    assert s.planned_queries() == ["ytsearch5:cat jumping", "ytsearch5:kettle boiling"]
    part = manifest.new_part_uri(s.context.root, "discover")
    store.write_parquet(
        part,
        pa.table(
            {
                "video_id": ["youtube-aB3dE5fG7hJ"],
                "status": ["ok"],
                "error": [None],
                "query": ["ytsearch5:cat jumping"],
            }
        ),
    )
    assert s.planned_queries() == ["ytsearch5:kettle boiling"]
    assert s.summary()["search_queries_already_done"] == 1
    again = stage(tmp_path, terms=["cat jumping"], results_per_term=5, research_done_terms=True)
    assert again.planned_queries() == ["ytsearch5:cat jumping"]
    items = stage(tmp_path, terms=[f"t{i}" for i in range(10)], terms_per_task=4).plan_inputs()
    assert [len(json.loads(i["spec"])["queries"]) for i in items] == [4, 4, 2]
    assert len({i["owner"] for i in items}) == 3


# -- search results ------------------------------------------------------------------------------------
def test_flat_search_results_become_candidates():
    info = fixture("ytsearch_dog_catching_frisbee.json")
    rows = {r["video_id"]: r for r in search_result_rows(info, "ytsearch6:dog catching frisbee")}
    assert list(rows) == [
        "youtube-aB3dE5fG7hJ",
        "youtube-Zx9_Yw8-Vu7",
        "youtube-Qw1eR2tY3uI",
        "youtube-Lk4jH5gF6dS",
        "youtube-Mn7bV8cX9zA",
        "youtube-Po0iU9yT8rE",
    ]
    first = rows["youtube-aB3dE5fG7hJ"]
    assert first["url"] == "https://www.youtube.com/watch?v=aB3dE5fG7hJ"
    assert first["duration"] == 14.0 and first["uploader"] == "Example Channel"
    assert first["hashtags"] == ["dogs", "frisbee"]  # from the description snippet
    assert first["source"] == "search" and first["query"] == "ytsearch6:dog catching frisbee"
    shorts = rows["youtube-Qw1eR2tY3uI"]
    assert shorts["url"].endswith("watch?v=Qw1eR2tY3uI") and shorts["duration"] is None
    assert shorts["hashtags"] == ["shorts", "fyp", "viral"]
    assert "live" in rows["youtube-Po0iU9yT8rE"]["row_filter"]


def test_channels_and_playlists_in_results_are_not_videos():
    rows = search_result_rows(fixture("ytsearch_mixed_results.json"), "q")
    assert [r["video_id"] for r in rows] == [
        "youtube-aB3dE5fG7hJ",
        "youtube-Ty5uI6oP7aS",
        "youtube-Gh8jK9lZ0xC",
    ]


def test_filters_record_their_rule(tmp_path):
    s = stage(tmp_path)
    rows = search_result_rows(fixture("ytsearch_dog_catching_frisbee.json"), "q")
    out = run_filters(s, rows)
    status = {v: (r["status"], r["error"]) for v, r in out.items()}
    assert status["youtube-aB3dE5fG7hJ"] == ("ok", None)
    assert (
        status["youtube-Zx9_Yw8-Vu7"][0] == "filtered"
        and "312 s over the cap of 20 s" in status["youtube-Zx9_Yw8-Vu7"][1]
    )
    # "frisbee! #shorts #fyp #viral": one word, and its tags are all platform noise
    assert (
        status["youtube-Qw1eR2tY3uI"][0] == "filtered" and "no hashtags" in status["youtube-Qw1eR2tY3uI"][1]
    )
    assert (
        status["youtube-Lk4jH5gF6dS"][0] == "filtered"
        and "1 meaningful word" in status["youtube-Lk4jH5gF6dS"][1]
    )
    assert status["youtube-Mn7bV8cX9zA"] == ("ok", None)
    assert out["youtube-Mn7bV8cX9zA"]["hashtags"] == ["dog", "puppy"]  # "shorts" removed as noise
    assert status["youtube-Po0iU9yT8rE"][0] == "filtered"
    assert out["youtube-aB3dE5fG7hJ"]["language"] == "en"


def test_filters_are_configurable(tmp_path):
    rows = search_result_rows(fixture("ytsearch_dog_catching_frisbee.json"), "q")
    loose = run_filters(stage(tmp_path, max_duration=None, min_title_words=1, stopwords=None), rows)
    assert loose["youtube-Zx9_Yw8-Vu7"]["status"] == "ok"
    assert loose["youtube-Lk4jH5gF6dS"]["status"] == "ok" and loose["youtube-Qw1eR2tY3uI"]["status"] == "ok"
    strict = run_filters(stage(tmp_path, allow_unknown_duration=False, min_title_words=1), rows)
    assert strict["youtube-Qw1eR2tY3uI"]["error"].startswith("duration unknown")
    # the text rules apply to the sources named in filter_sources only
    as_list = [{**r, "source": "urls"} for r in rows]
    assert run_filters(stage(tmp_path), as_list)["youtube-Lk4jH5gF6dS"]["status"] == "ok"


def test_language_filter(tmp_path):
    rows = search_result_rows(fixture("ytsearch_mixed_results.json"), "q")
    out = run_filters(stage(tmp_path, languages=["en", "es"]), rows)
    assert out["youtube-Gh8jK9lZ0xC"]["language"] == "es" and out["youtube-Gh8jK9lZ0xC"]["status"] == "ok"
    assert (
        out["youtube-Ty5uI6oP7aS"]["status"] == "filtered"
        and "language ja" in out["youtube-Ty5uI6oP7aS"]["error"]
    )
    assert out["youtube-aB3dE5fG7hJ"]["status"] == "ok"


def test_language_guess_and_title_words():
    assert guess_language("Border collie catches a frisbee in the park") == "en"
    assert guess_language("Mercado de la calle en la mañana") == "es"
    assert guess_language("Der Hund und die Katze spielen mit dem Ball") == "de"
    assert guess_language("東京の朝市を歩く") == "ja" and guess_language("서울 야시장 음식") == "ko"
    assert guess_language("Frisbee") is None and guess_language("#shorts") is None
    stop = load_stopwords("manifests/stopwords.txt")
    assert {"shorts", "fyp", "viral"} <= stop
    assert title_words("Puppy learns #shorts to catch VIRAL", stop) == ["Puppy", "learns", "to", "catch"]


def test_a_failed_search_is_a_failed_row_not_a_crash(tmp_path):
    # A real yt-dlp search through a proxy that refuses connections: fails at once, offline.
    s = stage(tmp_path, extractor_retries=0)
    params = search_options(socket_timeout=2, retries=0, extra={"proxy": f"http://127.0.0.1:{unused_port()}"})
    rows = s.search_one("ytsearch3:kettle boiling", params)
    assert len(rows) == 1 and rows[0]["query"] == "ytsearch3:kettle boiling"
    assert rows[0]["row_error"].startswith("search failed:")
    out = run_filters(s, rows)
    assert next(iter(out.values()))["status"] == "failed"


# -- dedup ---------------------------------------------------------------------------------------------
def test_key_index_first_claim_wins_and_retries_get_their_keys_back(monkeypatch):
    monkeypatch.setattr("stages.sources.dedup.MERGE_MIN", 8)  # exercise the sorted-array merge path too
    idx = KeyIndex()
    first = [key_of(f"v{i}") for i in range(20)]
    assert idx.claim(first, "list:0#0") == [True] * 20
    assert len(idx.keys) > 0  # merged into the sorted arrays
    second = [key_of(f"v{i}") for i in range(15, 30)] + [key_of("v25")]
    assert idx.claim(second, "search:1#0") == [False] * 5 + [True] * 10 + [False]
    assert idx.claim(first, "list:0#0") == [True] * 20  # a retried chunk
    assert idx.claim(second[:5], "list:0#1") == [False] * 5
    assert len(idx) == 30 and idx.stats()["duplicates"] == 5 + 1 + 5


def test_key_index_matches_a_set_at_scale():
    idx, seen = KeyIndex(), set()
    import random

    rng = random.Random(0)
    for chunk in range(40):
        ids = [f"youtube-{rng.randrange(60_000)}" for _ in range(5000)]
        keep = idx.claim([key_of(v) for v in ids], f"c{chunk}")
        expect = []
        for v in ids:
            expect.append(v not in seen)
            seen.add(v)
        assert keep == expect
    assert len(idx) == len(seen)


def test_local_dedup_without_ray():
    d = RunDedup(None)
    assert d.claim(["a", "b", "a"], "x#0") == [True, True, False]
    assert d.claim(["b", "c"], "y#0") == [False, True]


def test_list_rows_with_captions_and_renamed_columns(tmp_path):
    lst = tmp_path / "webvid.csv"
    lst.write_text(
        "contentUrl,name,duration,ofa,mplug\n"
        'http://example.com/a.mp4,A dog runs on a beach,12.5,"[""a dog"", ""a beach""]",dog running\n'
        "not a url,2001,3,,\n"
    )
    s = stage(tmp_path, inputs=[str(lst)], columns={"url": "contentUrl", "title": "name"})
    item = s.plan_inputs()[0]
    table = pa.concat_tables(list(s.read_inputs(item)))
    rows = table.to_pylist()
    assert rows[0]["url"] == "http://example.com/a.mp4" and rows[0]["title"] == "A dog runs on a beach"
    assert (
        rows[0]["duration"] == 12.5
        and rows[0]["ofa"] == ["a dog", "a beach"]
        and rows[0]["mplug"] == "dog running"
    )
    assert rows[1]["title"] == "2001"  # a title that looks like a number stays text
    out = run_filters(s, rows)
    assert out[rows[0]["video_id"]]["status"] == "ok"
    assert (
        out[rows[1]["video_id"]]["status"] == "failed"
        and "malformed URL" in out[rows[1]["video_id"]]["error"]
    )
