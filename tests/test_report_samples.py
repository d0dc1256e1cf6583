"""Samples of the run report: shards are sampled uniformly without reading them whole, depth is
colour-mapped, and a sample that does not decode is listed instead of breaking the page."""

from __future__ import annotations

import io
import random
import re
import tarfile
from collections import Counter

import numpy as np
import pyarrow as pa
from PIL import Image

from contracts import manifest, store
from contracts import shard_format as fmt
from pipeline.report import reservoir_from_tar, sample_shards, write_report
from pipeline.report_plots import NO_DEPTH_RGB, _lut, colourize_depth
from stages.shard import write_tar


def test_sampling_reads_a_few_shards_and_only_the_chosen_members(tmp_path, monkeypatch):
    shard_dir = tmp_path / "shard"
    payload = 200_000
    for n in range(6):
        write_tar(
            str(shard_dir / f"{fmt.shard_name(n)}.tar"),
            [(f"v{n}-{i}", {"json": b"{}", "rgb.0.jpg": bytes([i]) * payload}) for i in range(5)],
        )
    read_bytes = Counter()
    real_open = store.open_input

    class Counting:
        def __init__(self, f, uri):
            self.f, self.uri = f, uri

        def read(self, n=-1):
            data = self.f.read(n)
            read_bytes[self.uri] += len(data)
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(store, "open_input", lambda uri: Counting(real_open(uri), uri))
    samples, read = sample_shards(str(tmp_path), 2, seed=1)
    assert len(samples) == 2 and len(read) == 2 and set(read_bytes) == set(read)
    assert all(len(s["rgb.0.jpg"]) == payload and s["json"] == b"{}" for s in samples)
    # each tar holds 1 MB of frames; reading one chosen sample costs its member plus headers
    assert all(n < 2 * payload for n in read_bytes.values()), read_bytes
    again, _ = sample_shards(str(tmp_path), 2, seed=1)
    assert [s["__key__"] for s in again] == [s["__key__"] for s in samples]
    everything, read = sample_shards(str(tmp_path), 100, seed=1)
    assert len(read) == 6 and sorted(s["__key__"] for s in everything) == sorted(
        f"v{n}-{i}" for n in range(6) for i in range(5)
    )


def test_reservoir_is_uniform_over_a_tar(tmp_path):
    uri = str(tmp_path / "00000.tar")
    write_tar(uri, [(f"k{i}", {"json": b"{}"}) for i in range(10)])
    picks = Counter(
        s["__key__"] for seed in range(2000) for s in reservoir_from_tar(uri, 2, random.Random(seed))
    )
    assert set(picks) == {f"k{i}" for i in range(10)}
    assert all(300 < n < 500 for n in picks.values()), picks  # 400 expected each (2000 * 2 / 10)
    with tarfile.open(uri) as t:
        assert len(t.getnames()) == 10


def test_depth_colour_map_spans_near_to_far_and_greys_missing_depth():
    mm = np.array([[0, 1000, 2000, 3000]], np.int64)
    rgb = colourize_depth(mm, near_m=1.0, far_m=3.0)
    lut = _lut()
    assert tuple(rgb[0, 0]) == NO_DEPTH_RGB
    assert (rgb[0, 1] == lut[0]).all() and (rgb[0, 3] == lut[-1]).all() and (rgb[0, 2] == lut[128]).all()


def test_a_broken_sample_is_listed_not_fatal(tmp_path):
    root = tmp_path / "run"
    store.write_parquet(
        manifest.new_part_uri(str(root), "probe"),
        pa.Table.from_pylist([{"video_id": "bad", "status": "ok", "error": None, "duration": 1.0}]),
    )
    good = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(good, format="JPEG")
    write_tar(
        str(root / "shard" / "00000.tar"),
        [
            (
                "bad",
                {
                    "json": b"not json",
                    "rgb.0.jpg": b"garbage",
                    "rgb.1.jpg": good.getvalue(),
                    "depth.0.png": b"nope",
                    "flac": b"not flac",
                },
            )
        ],
    )
    index = write_report(root, tmp_path / "out", samples=3)
    page = index.read_text()
    for problem in (
        "rgb frame 0 could not be decoded",
        "depth frame 0 could not be decoded",
        "audio could not be decoded",
        "not valid JSON",
    ):
        assert problem in page
    assert "<audio" not in page and "1 random samples (seed 0) from 1 of 1 shards" in page
    assert re.findall(r'src="(samples/[^"]+)"', page) == ["samples/000/rgb1.jpg"]
