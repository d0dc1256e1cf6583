"""vidal shards read by the loaders people already use, and by vidal's own trainer, unchanged.

The shards are written by the real shard writer (``ShardStage.process``: tars, indexes, stats files)
from rows with real JPEG / 16-bit PNG / FLAC members. Read back with plain ``webdataset.WebDataset``
the way open_clip (``to_tuple(image, "txt")``) and video2dataset (``to_tuple("mp4", "txt")``) read
theirs, with Hugging Face ``datasets.load_dataset("webdataset", data_files=...)``, and with
``model.data.ShardStream``, which must ignore the ``txt`` member.
"""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contracts import encodings as enc
from contracts import shard_format as fmt
from stages.base import RunContext
from stages.shard import ShardConfig, ShardStage, sample_files

RNG = np.random.default_rng(0)


def _frames(depth: bool = False) -> list[bytes]:
    if depth:
        return [enc.encode_depth_png(RNG.integers(0, 10_000, (32, 48), dtype=np.uint16)) for _ in range(8)]
    return [enc.encode_jpeg(RNG.integers(0, 255, (32, 48, 3), dtype=np.uint8)) for _ in range(8)]


def _row(vid: str, *, audio: bool = True, depth: bool = True, media=None, **text) -> dict:
    tone = (0.1 * np.sin(np.arange(16_000) / 8)).astype(np.float32)
    return {
        "video_id": vid,
        "url": text.pop("url", f"https://www.youtube.com/watch?v={vid}"),
        "path": text.pop("path", None),
        "media": str(media) if media else None,
        "title": text.pop("title", f"title of {vid}"),
        "hashtags": text.pop("hashtags", ["tag"]),
        "frames": _frames(),
        "depth": _frames(depth=True) if depth else None,
        "audio": enc.encode_flac(tone, fmt.SAMPLE_RATE) if audio else None,
        "mplug": text.pop("mplug", None),
        "polish_mplug": text.pop("polish_mplug", None),
        "ofa": text.pop("ofa", None),
    }


def write_shards(root, rows: list[dict], **config) -> list[str]:
    """Run the real writer on ``rows``; returns the tar paths, sorted."""
    stage = ShardStage(ShardConfig(**config), RunContext(str(root)))
    stage.setup()
    out = stage.process(pa.Table.from_pylist(rows)).to_pylist()
    assert all(r["status"] == "ok" for r in out), out
    return sorted(str(p) for p in (root / "shard").glob("*.tar"))


MIXED = [
    _row("youtube-aaa", polish_mplug="A dog runs on the grass.", mplug="a dog runs"),
    _row("youtube-bbb", audio=False, mplug="a cat sits on a mat"),  # no polished caption, no audio
    _row(
        "youtube-ccc",
        audio=False,
        depth=False,
        url=None,
        path="/videos/c.mp4",
        title="rain",
        hashtags=["storm"],
    ),
]
EXPECTED_TXT = {
    "youtube-aaa": "A dog runs on the grass.",
    "youtube-bbb": "a cat sits on a mat",
    "youtube-ccc": "rain #storm",
}


@pytest.fixture(scope="module")
def mixed_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("interop")
    return root, write_shards(root, MIXED, samples_per_shard=2)


def test_txt_follows_the_configured_field_then_the_fallback_order():
    row = _row("v", polish_mplug="polished", mplug="plain", ofa=["first frame", "second"])
    assert sample_files(row, False)[fmt.TXT_KEY] == b"polished"  # default: polish_mplug
    assert sample_files(row, False, "mplug")[fmt.TXT_KEY] == b"plain"
    assert sample_files(row, False, "ofa")[fmt.TXT_KEY] == b"first frame"
    assert sample_files(row, False, "title")[fmt.TXT_KEY] == b"title of v"
    # asr is empty here: polish_mplug -> mplug -> raw -> title
    assert sample_files(row, False, "asr")[fmt.TXT_KEY] == b"polished"
    bare = _row("w", title="", hashtags=[])
    assert fmt.TXT_KEY not in sample_files(bare, False)  # no text at all: no txt member
    with pytest.raises(ValueError, match="unknown text field 'caption'"):
        ShardConfig(txt_field="caption")


def test_index_and_stats_beside_each_tar(mixed_shards):
    root, tars = mixed_shards
    assert len(tars) == 2
    index = pa.concat_tables(pq.read_table(t[: -len(".tar")] + ".parquet") for t in tars).to_pylist()
    by_key = {r["key"]: r for r in index}
    assert by_key["youtube-aaa"]["url"] == "https://www.youtube.com/watch?v=youtube-aaa"
    assert by_key["youtube-ccc"]["url"] == "file:///videos/c.mp4"
    assert {r["status"] for r in index} == {"ok"}
    assert {k: r["txt"] for k, r in by_key.items()} == EXPECTED_TXT
    assert by_key["youtube-aaa"]["polish_mplug"] == "A dog runs on the grass."
    totals = {"count": 0, "flac": 0, "depth": 0, "txt": 0}
    for tar in tars:
        name = tar.rsplit("/", 1)[1][: -len(".tar")]
        stats = json.loads((root / "shard" / fmt.stats_name(name)).read_text())
        assert stats["shard"] == name
        with tarfile.open(tar) as f:
            members = f.getmembers()
        assert stats["bytes"] == sum(m.size for m in members)
        assert stats["count"] == len({m.name.split(".", 1)[0] for m in members})
        totals["count"] += stats["count"]
        for f in ("flac", "depth", "txt"):
            totals[f] += stats["fields"].get(f, 0)
        assert stats["fields"]["rgb"] == stats["fields"]["json"] == stats["count"]
    assert totals == {"count": 3, "flac": 1, "depth": 2, "txt": 3}


def test_plain_webdataset_reads_them_as_open_clip_does(mixed_shards):
    import webdataset as wds

    _, tars = mixed_shards
    ds = (
        wds.WebDataset(tars, shardshuffle=False).decode("pil").to_tuple("__key__", "rgb.0.jpg", "txt", "json")
    )
    got = {key: (image.size, text, meta["url"]) for key, image, text, meta in ds}
    assert {k: v[1] for k, v in got.items()} == EXPECTED_TXT
    assert all(size == (48, 32) for size, _, _ in got.values())
    # the audio member decodes to the waveform written (webdataset hands the bytes through)
    audio = {s["__key__"]: s["flac"] for s in wds.WebDataset(tars, shardshuffle=False) if "flac" in s}
    samples, rate = enc.decode_flac(audio["youtube-aaa"])
    assert set(audio) == {"youtube-aaa"} and rate == fmt.SAMPLE_RATE and len(samples) == 16_000


def test_plain_webdataset_reads_video_and_txt_as_video2dataset_does(tmp_path, good_videos):
    import webdataset as wds

    rows = [_row(f"youtube-v{i}", media=p, mplug=f"clip {i}") for i, p in enumerate(good_videos[:2])]
    tars = write_shards(tmp_path, rows, include_video=True)
    pairs = list(wds.WebDataset(tars, shardshuffle=False).to_tuple("mp4", "txt"))
    assert [t.decode() for _, t in pairs] == ["clip 0", "clip 1"]
    assert [v for v, _ in pairs] == [p.read_bytes() for p in good_videos[:2]]


def _features_for(tars: list[str]):
    """The features ``datasets`` infers from these shards' first samples, with audio kept as bytes:
    datasets >= 4 encodes ``Audio`` through torchcodec, which needs FFmpeg's shared libraries."""
    import datasets

    inferred = datasets.load_dataset("webdataset", data_files={"train": tars}, split="train", streaming=True)
    return datasets.Features(
        {
            k: datasets.Value("binary") if isinstance(v, datasets.Audio) else v
            for k, v in inferred.features.items()
        }
    )


def test_hugging_face_datasets_loads_them(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [_row(f"youtube-h{i}", mplug=f"caption {i}") for i in range(4)]  # every sample has every member
    tars = write_shards(tmp_path, rows, samples_per_shard=3)
    ds = datasets.load_dataset(
        "webdataset",
        data_files={"train": tars},
        split="train",
        features=_features_for(tars),
        cache_dir=str(tmp_path / "hf"),
    )
    assert ds.num_rows == 4
    first = ds[0]
    assert first["txt"] == "caption 0" and first["json"]["video_id"] == "youtube-h0"
    assert first["rgb.7.jpg"].size == (48, 32) and first["depth.0.png"].mode.startswith("I;16")
    samples, rate = enc.decode_flac(first["flac"])
    assert rate == fmt.SAMPLE_RATE and len(samples) == 16_000


def test_hugging_face_datasets_reads_samples_that_lack_members_with_given_features(tmp_path, mixed_shards):
    """Its feature inference needs the first samples to share their members (and infers a field that is
    null there as null); with the features of one complete sample given, a sample without audio or
    depth reads as None there."""
    datasets = pytest.importorskip("datasets")
    full = _row("youtube-full", mplug="m", polish_mplug="p", ofa=["o"] * 8)  # every field typed
    complete = write_shards(tmp_path / "complete", [full])
    _, tars = mixed_shards
    ds = datasets.load_dataset(
        "webdataset",
        data_files={"train": tars},
        split="train",
        features=_features_for(complete),
        cache_dir=str(tmp_path / "hf"),
    )
    got = {r["__key__"].rsplit("/", 1)[-1]: r for r in ds}
    assert {k: r["txt"] for k, r in got.items()} == EXPECTED_TXT
    assert got["youtube-bbb"]["flac"] is None and got["youtube-ccc"]["depth.0.png"] is None
    assert got["youtube-aaa"]["flac"] is not None


def test_the_trainer_reads_them_and_ignores_txt(mixed_shards):
    from model.data import DataConfig, ShardStream, make_loader

    root, _ = mixed_shards
    sizes = {"video": {"image_size": 32, "num_frames": 8}}
    cfg = DataConfig(shards=str(root / "shard"), batch_size=3, workers=0, text_field="mplug")
    batches = list(make_loader(ShardStream(cfg, sizes, train=False)))
    keys = [k for b in batches for k in b["key"]]
    texts = dict(zip(keys, [t for b in batches for t in b["text"]]))
    # the trainer's text is its own data.text_field (from the json), not the txt member
    assert texts["youtube-aaa"] == "a dog runs" and texts["youtube-bbb"] == "a cat sits on a mat"
    assert batches[0]["video"].shape[1:] == (8, 3, 32, 32)
