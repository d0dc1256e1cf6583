"""The shard loader: URL forms, epoch shuffling across ranks, split by worker, bad samples, the text
sampler, resampled sources, the held-out split and the exact data position used by resume.

``write_concept_shards`` (also used by the trainer's and evaluator's tests) writes real shards in
the pipeline's format: synthetic concept clips rendered by ``pipeline.synthetic``, JPEG frames,
uint16 depth PNGs, IR JPEGs and FLAC audio, through ``stages.shard.write_tar``.
"""

from __future__ import annotations

import functools
import http.server
import io
import random
import tarfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contracts import shard_format as fmt
from model.data import (
    DataConfig,
    NoUsableSamples,
    ShardStream,
    count_samples,
    expand_shards,
    in_holdout,
    make_loader,
)
from model.text_choice import LANGUAGEBIND_MIX, NoText, choose_text
from pipeline.synthetic import CONCEPTS, render_frames, tone
from stages.shard import write_tar

SIZES = {
    "video": {"image_size": 32, "num_frames": 8},
    "depth": {"image_size": 32, "num_frames": 8},
    "infrared": {"image_size": 32, "num_frames": 8},
    "audio": {"image_size": (126, 1036), "num_frames": 8},
}


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png16(mm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mm.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def concept_sample(
    concept, k: int, *, short_side: int = 64, depth: bool = False, ir: bool = False, ofa: bool = False
) -> tuple[str, dict[str, bytes]]:
    """One shard sample of a synthetic clip: 8 frames sampled uniformly from 30, resized as the probe does."""
    frames = render_frames(concept, n_frames=30, size=(160, 120), seed=1000 * k + CONCEPTS.index(concept))
    picked = frames[np.linspace(0, 29, fmt.NUM_FRAMES).round().astype(int)]
    w = round(160 * short_side / 120)
    rgb = [np.asarray(Image.fromarray(f).resize((w, short_side), Image.BILINEAR)) for f in picked]
    key = f"syn-{concept.slug}-{k}"
    files = {fmt.frame_key("rgb", i): _jpeg(f) for i, f in enumerate(rgb)}
    if depth:  # frame i is a flat plane at (i + 1) metres: the frame a depth sample used is visible
        files.update(
            {fmt.frame_key("depth", i): _png16(np.full((short_side, w), 1000 * (i + 1))) for i in range(8)}
        )
    if ir:
        files.update(
            {fmt.frame_key("ir", i): _jpeg(f.mean(axis=2).astype(np.uint8)) for i, f in enumerate(rgb)}
        )
    meta = {
        "video_id": key,
        "title": concept.title,
        "hashtags": concept.hashtags,
        "raw": f"{concept.title} " + " ".join(f"#{t}" for t in concept.hashtags),
        "ofa": [f"frame {i} of {concept.title}" for i in range(8)] if ofa else None,
    }
    files[fmt.JSON_KEY] = fmt.encode_json(meta)
    return key, files


def _flac(samples: np.ndarray, rate: int = fmt.SAMPLE_RATE) -> bytes:
    from contracts.encodings import encode_flac

    return encode_flac(samples, rate)


def write_concept_shards(
    out: Path, concepts=CONCEPTS, per_concept: int = 1, per_shard: int = 8, **kwargs
) -> list[Path]:
    """Shards ``00000.tar …`` (with their Parquet indexes) of ``per_concept`` clips of each concept."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    samples = [_sample(c, k, **kwargs) for k in range(per_concept) for c in concepts]
    random.Random(0).shuffle(samples)
    paths = []
    for n, start in enumerate(range(0, len(samples), per_shard)):
        chunk = samples[start : start + per_shard]
        path = out / f"{fmt.shard_name(n)}.tar"
        write_tar(str(path), chunk)
        index = [
            {
                "key": k,
                "title": None,
                "has_audio": fmt.AUDIO_KEY in f,
                "has_depth": "depth.0.png" in f,
                "has_ir": "ir.0.jpg" in f,
            }
            for k, f in chunk
        ]
        pq.write_table(pa.Table.from_pylist(index), out / f"{fmt.shard_name(n)}.parquet")
        paths.append(path)
    return paths


def _sample(concept, k: int, audio: bool = False, **kwargs) -> tuple[str, dict[str, bytes]]:
    key, files = concept_sample(concept, k, **kwargs)
    if audio:
        files[fmt.AUDIO_KEY] = _flac((tone(concept, 1.0, fmt.SAMPLE_RATE) * 32767).astype(np.int16))
    return key, files


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    return write_concept_shards(tmp_path_factory.mktemp("shards"), CONCEPTS[:32], per_concept=1, per_shard=4)


def _keys(stream: ShardStream) -> list[str]:
    return [k for batch in make_loader(stream) for k in batch["key"]]


def test_expand_shards_forms(shards):
    d, names = shards[0].parent, [str(s) for s in shards]
    assert expand_shards(str(d)) == names
    assert expand_shards(str(d / "*.tar")) == names
    assert expand_shards(str(d / "{00000..00002}.tar")) == names[:3]
    assert expand_shards(f"{shards[0]}::{shards[5]}") == [names[0], names[5]]
    assert expand_shards(["http://127.0.0.1:1/a.tar"]) == ["http://127.0.0.1:1/a.tar"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        expand_shards(str(d / "missing.tar"))
    assert count_samples([str(s) for s in shards], ["video"], "all", 0.0, 0) == 32


def test_epoch_shuffle_differs_between_epochs_and_agrees_across_ranks(shards):
    cfg = DataConfig(shards=str(shards[0].parent), batch_size=2, workers=2, shuffle_buffer=0)
    orders = {}
    for epoch in (0, 1):
        per_rank = []
        for rank in (0, 1):
            s = ShardStream(cfg, SIZES, rank=rank, world_size=2, batches_per_epoch=1, seed=7)
            s.set_position(epoch)
            per_rank.append([s._pass_shards(w, 2, 0) for w in (0, 1)])
        flat = [u for rank in per_rank for worker in rank for u in worker]
        assert sorted(flat) == sorted(str(s) for s in shards)  # every shard once, no rank overlap
        orders[epoch] = flat
    assert orders[0] != orders[1]
    # the same epoch gives the same order on a fresh stream (every rank computes it alone)
    s = ShardStream(cfg, SIZES, rank=1, world_size=2, batches_per_epoch=1, seed=7)
    s.set_position(1)
    assert s._pass_shards(0, 2, 0) == orders[1][len(orders[1]) // 2 :][: len(s._pass_shards(0, 2, 0))]


def test_stream_reads_each_sample_once_per_epoch_and_reshuffles(shards):
    cfg = DataConfig(shards=str(shards[0].parent), batch_size=4, workers=2, shuffle_buffer=16)
    s = ShardStream(cfg, SIZES, batches_per_epoch=8, seed=1)
    first = _keys(s)
    s.set_position(1)
    second = _keys(s)
    assert len(first) == 32 and sorted(first) == sorted(second) and len(set(first)) == 32
    assert first != second
    s.set_position(0)
    assert _keys(s) == first  # deterministic


def test_too_few_shards_for_ranks_and_workers_is_a_clear_error(shards):
    cfg = DataConfig(shards=[str(p) for p in shards[:3]], batch_size=2, workers=2)
    with pytest.raises(ValueError, match="3 shards cannot feed 2 ranks x 2 loader workers"):
        ShardStream(cfg, SIZES, rank=0, world_size=2, batches_per_epoch=1)


def test_bad_samples_are_skipped_and_counted(tmp_path, shards):
    good = [(k, f) for k, f in _members(shards[0])]
    broken_jpeg = (good[0][0] + "x", {**good[0][1], "rgb.3.jpg": b"not a jpeg"})
    broken_json = (good[1][0] + "y", {**good[1][1], "json": b"{not json"})
    write_tar(str(tmp_path / "00000.tar"), [broken_jpeg, *good, broken_json])
    truncated = shards[1].read_bytes()
    (tmp_path / "00001.tar").write_bytes(truncated[: len(truncated) // 2 + 700])
    cfg = DataConfig(shards=str(tmp_path), batch_size=3, workers=0)
    batches = list(make_loader(ShardStream(cfg, SIZES, train=False)))
    keys = [k for b in batches for k in b["key"]]
    assert set(k for k, _ in good) <= set(keys) and broken_jpeg[0] not in keys and broken_json[0] not in keys
    bad = sum(b["stats"]["bad"] for b in batches)
    assert bad >= 3  # two undecodable samples and the truncated tar; the run went on


@pytest.mark.timeout(120)  # the bug this guards against was a stream that never ended
@pytest.mark.parametrize("workers", [0, 2])
def test_a_pass_without_one_usable_sample_stops_training_with_the_reason(tmp_path, shards, workers):
    # every sample of every shard has a frame that is no JPEG (the index still promises them all)
    import shutil

    for n, shard in enumerate(shards[:4]):
        broken = [(k, {**f, "rgb.3.jpg": b"not a jpeg"}) for k, f in _members(shard)]
        write_tar(str(tmp_path / f"{fmt.shard_name(n)}.tar"), broken)
        shutil.copy(shard.with_suffix(".parquet"), tmp_path / f"{fmt.shard_name(n)}.parquet")
    cfg = DataConfig(shards=str(tmp_path), batch_size=2, workers=workers, shuffle_buffer=4)
    stream = ShardStream(cfg, SIZES, batches_per_epoch=4, seed=0)
    with pytest.raises(NoUsableSamples) as caught:
        list(make_loader(stream))
    message = str(caught.value)
    assert "gave no usable sample" in message and "rgb.3.jpg" not in message
    assert ("8 bad" if workers == 2 else "16 bad") in message  # each worker reads its half of the 16
    assert "first reason: bad sample syn-" in message and ".tar" in message
    # an evaluation pass over the same shards ends instead, its counts in the last batch
    (last,) = list(make_loader(ShardStream(cfg.model_copy(update={"workers": 0}), SIZES, train=False)))
    assert last["key"] == [] and last["stats"]["bad"] == 16


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [0, 2])
def test_resampled_shards_without_one_usable_sample_stop_training(tmp_path, shards, workers):
    """Resampled draws never end, so there is no pass to count: the stream stops once every shard has been
    read through and every sample read was unusable; a single usable sample late in one shard keeps it going."""
    import shutil

    def write(root: Path, keep_good: str | None) -> None:
        root.mkdir()
        for n, shard in enumerate(shards[:4]):
            members = [
                (k, f if k == keep_good else {**f, "rgb.3.jpg": b"not a jpeg"}) for k, f in _members(shard)
            ]
            write_tar(str(root / f"{fmt.shard_name(n)}.tar"), members)
            shutil.copy(shard.with_suffix(".parquet"), root / f"{fmt.shard_name(n)}.parquet")

    def stream(root: Path, buffer: int) -> ShardStream:
        cfg = DataConfig(
            resampled=True, shards=str(root), batch_size=2, workers=workers, shuffle_buffer=buffer
        )
        return ShardStream(cfg, SIZES, batches_per_epoch=4, seed=0)

    write(tmp_path / "bad", keep_good=None)
    with pytest.raises(
        NoUsableSamples, match=r"gave no usable sample \(\d+ bad.*first reason: bad sample syn-"
    ):
        list(make_loader(stream(tmp_path / "bad", 4)))
    last_of_third = _members(shards[2])[-1][0]
    write(tmp_path / "one-good", keep_good=last_of_third)
    for buffer in (0, 8):
        batches = list(make_loader(stream(tmp_path / "one-good", buffer)))
        assert len(batches) == 4 and {k for b in batches for k in b["key"]} == {last_of_third}


def _members(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, suffix = m.name.split(".", 1)
            samples.setdefault(key, {})[suffix] = tar.extractfile(m).read()
    return list(samples.items())


def test_mix_sampler_frequencies_and_fallback():
    meta = {
        "video_id": "v",
        "raw": "R",
        "mplug": "M",
        "polish_mplug": "P",
        "sound_mplug": "S",
        "ofa": [f"O{i}" for i in range(8)],
    }
    rng = random.Random(0)
    n = 40_000
    counts = Counter(choose_text(meta, "mix", rng)[0] for _ in range(n))
    for name in ("R", "M", "P", "S"):
        assert abs(counts[name] / n - LANGUAGEBIND_MIX["raw"]) < 0.01
    for i in range(8):
        assert abs(counts[f"O{i}"] / n - 0.025) < 0.005
    # a missing source is dropped and the rest renormalised
    sparse = {"video_id": "v", "raw": "R", "ofa": ["O0", "", None, None, None, None, None, None]}
    counts = Counter(choose_text(sparse, "mix", rng)[0] for _ in range(n))
    assert abs(counts["R"] / n - 0.2 / 0.225) < 0.01 and set(counts) == {"R", "O0"}
    with pytest.raises(NoText):
        choose_text({"video_id": "v"}, "mplug", rng)
    assert choose_text(meta, "ofa", rng, train=False) == ("O4", 4)


def test_depth_frame_follows_the_ofa_caption(tmp_path):
    write_concept_shards(tmp_path, CONCEPTS[:8], per_concept=1, per_shard=8, depth=True, ofa=True)
    from model.preprocess import depth_input

    by_frame = {i: depth_input(_png16(np.full((64, 85), 1000 * (i + 1))), 32) for i in range(8)}
    cfg = DataConfig(
        shards=str(tmp_path),
        modalities=["depth"],
        text_field="mix",
        batch_size=8,
        workers=0,
        shuffle_buffer=0,
        mix={"ofa": 1.0},
    )
    seen = set()
    for epoch in range(3):
        s = ShardStream(cfg, SIZES, batches_per_epoch=1)
        s.set_position(epoch)
        for batch in make_loader(s):
            for text, depth in zip(batch["text"], batch["depth"]):
                i = int(text.split()[1])
                assert np.allclose(depth, by_frame[i], atol=1e-5), text
                seen.add(i)
    assert len(seen) >= 4


def test_resampled_sources_follow_their_weights(tmp_path):
    a = write_concept_shards(tmp_path / "a", CONCEPTS[:8], per_shard=4)
    b = write_concept_shards(tmp_path / "b", CONCEPTS[8:16], per_shard=4)
    cfg = DataConfig(
        resampled=True,
        sources=[{"shards": str(a[0].parent), "weight": 3.0}, {"shards": str(b[0].parent), "weight": 1.0}],
        batch_size=4,
        workers=2,
        shuffle_buffer=0,
    )
    keys = _keys(ShardStream(cfg, SIZES, batches_per_epoch=100, seed=3))
    from_a = sum(k in {f"syn-{c.slug}-0" for c in CONCEPTS[:8]} for k in keys)
    assert len(keys) == 400 and abs(from_a / len(keys) - 0.75) < 0.08


def test_holdout_split_is_disjoint_and_stable(shards):
    cfg = DataConfig(shards=str(shards[0].parent), batch_size=4, workers=0, holdout=0.3)
    train = set(_keys(ShardStream(cfg, SIZES, train=False, split="train")))
    held = set(_keys(ShardStream(cfg, SIZES, train=False, split="holdout")))
    assert train.isdisjoint(held) and len(train | held) == 32 and 3 <= len(held) <= 18
    assert all(in_holdout(k, 0.3) for k in held)
    assert count_samples([str(s) for s in shards], ["video"], "holdout", 0.3, 0) == len(held)


@pytest.mark.parametrize("workers", [0, 2])
def test_data_position_resumes_the_exact_batch_sequence(shards, workers):
    cfg = DataConfig(shards=str(shards[0].parent), batch_size=3, workers=workers, shuffle_buffer=8)
    stream = ShardStream(cfg, SIZES, batches_per_epoch=9, seed=5)
    stream.set_position(2)
    full = list(make_loader(stream))
    assert len(full) == 9
    k = 4
    read = {}
    for b in full[:k]:
        read[b["stats"]["worker"]] = b["stats"]["read"]
    stream.set_position(2, k, read)
    rest = list(make_loader(stream))
    assert [b["key"] for b in rest] == [b["key"] for b in full[k:]]
    assert all(np.array_equal(x["video"], y["video"]) for x, y in zip(rest, full[k:]))


def test_several_modalities_carry_validity_masks(tmp_path):
    write_concept_shards(tmp_path / "a", CONCEPTS[:4], per_shard=8, audio=True)
    write_concept_shards(tmp_path / "b", CONCEPTS[4:8], per_shard=8)
    cfg = DataConfig(
        shards=[str(tmp_path / "a" / "00000.tar"), str(tmp_path / "b" / "00000.tar")],
        modalities=["video", "audio"],
        batch_size=8,
        workers=0,
        shuffle_buffer=0,
    )
    (batch,) = list(make_loader(ShardStream(cfg, SIZES, train=False)))
    has_audio = {f"syn-{c.slug}-0" for c in CONCEPTS[:4]}
    assert batch["valid"]["audio"].tolist() == [k in has_audio for k in batch["key"]]
    assert batch["audio"].shape == (8, 3, 126, 1036) and batch["valid"]["video"].all()


def test_shards_over_http(shards):
    handler = functools.partial(_QuietHandler, directory=str(shards[0].parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{{00000..00003}}.tar"
        cfg = DataConfig(shards=url, batch_size=4, workers=0)
        remote = _keys(ShardStream(cfg, SIZES, train=False))
        local = _keys(
            ShardStream(cfg.model_copy(update={"shards": [str(s) for s in shards[:4]]}), SIZES, train=False)
        )
        assert remote == local and len(remote) == 16
    finally:
        server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_prefixes_and_missing_indexes(shards, tmp_path):
    d = shards[0].parent
    names = [str(s) for s in shards]
    assert expand_shards(str(d / "0000")) == names  # a name prefix
    assert expand_shards(f"file://{d}") == names
    with pytest.raises(FileNotFoundError, match="does not exist"):
        expand_shards(str(d / "9"))
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "00000.tar").write_bytes(shards[0].read_bytes())  # a tar without its index
    with pytest.raises(
        FileNotFoundError, match=r"00000.tar has no Parquet index beside it .*data.epoch_samples"
    ):
        count_samples([str(lone / "00000.tar")], ["video"], "all", 0.0, 0)
    assert count_samples(["http://127.0.0.1:1/a.tar"], ["video"], "all", 0.0, 0) is None


def test_shards_are_dealt_to_readers_balanced_by_samples():
    from model.shard_list import assign_shards

    urls = [f"s{i}.tar" for i in range(6)]
    even = assign_shards(urls, dict.fromkeys(urls, 10), 3)
    assert even == [["s0.tar", "s3.tar"], ["s1.tar", "s4.tar"], ["s2.tar", "s5.tar"]]  # round robin
    counts = {"s0.tar": 100, **{f"s{i}.tar": 10 for i in range(1, 6)}}
    # round robin would give 120 samples to one reader and 30 to the other
    assert assign_shards(urls, counts, 2) == [["s0.tar"], ["s1.tar", "s2.tar", "s3.tar", "s4.tar", "s5.tar"]]


def test_stream_split_uses_the_index_counts(tmp_path):
    big = write_concept_shards(tmp_path / "a", CONCEPTS[:24], per_concept=1, per_shard=12)  # 2 shards of 12
    small = write_concept_shards(tmp_path / "b", CONCEPTS[24:32], per_concept=1, per_shard=2)  # 4 shards of 2
    cfg = DataConfig(
        shards=[str(p) for p in big + small], batch_size=2, workers=2, shuffle_buffer=0, shard_shuffle=False
    )
    loads, dealt = [], []
    for rank in (0, 1):
        s = ShardStream(cfg, SIZES, rank=rank, world_size=2, batches_per_epoch=1, seed=0)
        assert s.counts is not None and sum(s.counts.values()) == 32
        for w in (0, 1):
            dealt += s._pass_shards(w, 2, 0)
            loads.append(sum(s.counts[u] for u in s._pass_shards(w, 2, 0)))
    assert sorted(dealt) == sorted(str(p) for p in big + small)  # every shard to one reader
    assert sorted(loads) == [4, 4, 12, 12]  # round robin by count: 2, 2, 14, 14
