"""Every bad line of an input list is one failed row naming the list and the line; the rest of the list
runs. Real lists (CSV, JSONL, Parquet; a damaged VIDAL-10M file keeps the entries before the damage)
through the discover stage on a real local Ray instance."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import load_config
from pipeline.runner import run_pipeline

CSV = (
    b"url,title\n"
    b"http://example.com/a.mp4,good a\n"
    b'http://example.com/b.mp4,"bad \xff byte"\n'  # line 3: invalid UTF-8
    b'http://example.com/c.mp4,"unbalanced\n'  # line 4: a quote that never closes
    b"http://example.com/d.mp4,good d\n"
    b"http://example.com/e.mp4,too,many\n"  # line 6: three columns
    b'"http://example.com/f.mp4","a title\nover two lines"\n'  # lines 7-8: one good record
    b"http://example.com/g.mp4,good g\n"
)
JSONL = (
    b'{"url": "http://example.com/h.mp4", "title": "good h"}\n'
    b'{"url": "http://example.com/i.mp4", "title": \n'  # line 2: cut short
    b'["http://example.com/j.mp4"]\n'  # line 3: not an object
    b'{"url": "http://example.com/k.mp4", "title": "\xfe"}\n'  # line 4: invalid UTF-8
    b'{"url": "http://example.com/l.mp4", "title": "good l"}\n'
)


def test_bad_lines_become_failed_rows_and_the_rest_runs(tmp_path, ray_local):
    (csv_list := tmp_path / "urls.csv").write_bytes(CSV)
    (jsonl_list := tmp_path / "urls.jsonl").write_bytes(JSONL)
    titles = pa.array([b"good m", b"bad \xff", b"good o"], pa.binary()).view(pa.string())  # unchecked bytes
    urls = [f"http://example.com/{c}.mp4" for c in "mno"]
    pq.write_table(pa.table({"url": urls, "title": titles}), parquet_list := tmp_path / "urls.parquet")
    # VIDAL-10M: two entries, then damage (the entries before it are kept)
    (vidal := tmp_path / "vidal10m.json").write_bytes(
        b'{"ImkVYKWqlDU": {"raw": "good p #p"}, "Xy_9-zQwErT": {"raw": "good q #q"}, "AAAAAAAAAAA": {"raw": tru}}'
    )
    root = tmp_path / "root"
    cfg = load_config(
        None,
        [
            f"run.root={root}",
            "run.stages=[discover]",
            f"discover.vidal10m=[{vidal}]",
            f"discover.inputs=[{csv_list}, {jsonl_list}, {parquet_list}]",
        ],
    )
    (report,) = run_pipeline(cfg, ["discover"])
    rows = pq.read_table(str(root / "discover")).to_pylist()
    ok = sorted(r["title"] for r in rows if r["status"] == "ok")
    assert ok == [
        "a title\nover two lines",
        "good a",
        "good d",
        "good g",
        "good h",
        "good l",
        "good m",
        "good o",
        "good p",
        "good q",
    ]
    # (the character position of the VIDAL-10M damage is the parser's business: not compared)
    failed = sorted(
        re.sub(r"near character \d+", "near character N", r["error"]) for r in rows if r["status"] == "failed"
    )
    csv_lines, jsonl_lines = CSV.split(b"\n"), JSONL.split(b"\n")
    try:
        json.loads(jsonl_lines[1])
    except json.JSONDecodeError as e:
        cut_short = f"{e.msg} at column {e.colno}"
    ff, fe = csv_lines[2].index(b"\xff") + 1, jsonl_lines[3].index(b"\xfe") + 1
    assert failed == sorted(
        [
            f"{csv_list} line 3: invalid UTF-8 (byte 0xff at column {ff})",
            f"{csv_list} line 4: unbalanced quote",
            f"{csv_list} line 6: 3 columns, expected 2 (as in the header)",
            f"{jsonl_list} line 2: not valid JSON ({cut_short})",
            f"{jsonl_list} line 3: a JSON list, not an object",
            f"{jsonl_list} line 4: invalid UTF-8 (byte 0xfe at column {fe})",
            f"{parquet_list} line 2: invalid UTF-8 in a text value (invalid start byte)",
            f"{vidal}: invalid JSON near character N: Expecting value; the 2 entries before it were read, "
            f"the rest of the file was not",
        ]
    )
    assert len({r["video_id"] for r in rows}) == len(rows) == 18
    assert report.counts == {"ok": 10, "failed": 8, "filtered": 0}
