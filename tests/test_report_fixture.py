"""A small run written directly in the manifest and shard formats, for the report's tests.

Every stage of the recipe is present (caption, asr, enhance, depth and infrared with the columns their
stages write), with failed and filtered rows, a hostile title and hashtag, empty texts, a video
without audio, relative depth, and an infrared stage that never finished (no ``_SUCCESS.json``).
Shards are written with the shard stage's own functions, so they are in the trainer's format.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from contracts import manifest, store
from contracts import shard_format as fmt
from contracts.encodings import encode_flac
from stages import get_stage_class
from stages.base import BASE_FIELDS
from stages.discover import CANDIDATE_SCHEMA
from stages.download import DownloadStage
from stages.probe import ProbeStage
from stages.shard import INDEX_SCHEMA, ShardStage, raw_text, sample_files, write_tar

HOSTILE_TITLE = (
    '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> Cats & "dogs" <b>bold</b>'
)
HOSTILE_TAG = "<i>$money$</i>"
# The columns each stage writes (the conventions every stage follows), used when its module is absent.
SCHEMAS = {
    "discover": CANDIDATE_SCHEMA,
    "download": DownloadStage.schema,
    "probe": ProbeStage.schema,
    "caption": pa.schema(
        [
            ("ofa", pa.list_(pa.string())),
            ("mplug", pa.string()),
            ("caption_model", pa.string()),
            ("caption_prompt_version", pa.string()),
        ]
    ),
    "asr": pa.schema(
        [
            ("asr", pa.string()),
            ("asr_language", pa.string()),
            ("asr_no_speech_prob", pa.float64()),
            ("asr_model", pa.string()),
        ]
    ),
    "enhance": pa.schema(
        [
            ("polish_mplug", pa.string()),
            ("sound_mplug", pa.string()),
            ("enhance_model", pa.string()),
            ("enhance_prompt_version", pa.string()),
            ("enhance_note", pa.string()),
        ]
    ),
    "depth": pa.schema(
        [("depth", pa.list_(pa.binary())), ("depth_kind", pa.string()), ("depth_model", pa.string())]
    ),
    "infrared": pa.schema([("ir", pa.list_(pa.binary())), ("infrared_model", pa.string())]),
    "shard": ShardStage.schema,
}
# (width, height, fps, duration, has_audio) of the videos that pass probe, and their aspect names
PROBED = [
    (1280, 720, 30.0, 0.5, True),
    (720, 1280, 29.97, 3.2, True),
    (640, 480, 25.0, 7.9, False),
    (1080, 1080, 30.0, 8.0, True),
    (1920, 1080, 60.0, 14.5, True),
    (1000, 1234, 24.0, 15.0, False),
    (1280, 720, 30.0, 20.0, True),
]
ASPECTS = {
    (1280, 720): "16:9",
    (720, 1280): "9:16",
    (640, 480): "4:3",
    (1080, 1080): "1:1",
    (1920, 1080): "16:9",
    (1000, 1234): "other portrait",
}


def jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def depth_png(mm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mm.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def stage_schema(stage: str) -> pa.Schema:
    """The stage's own output schema when its module is in this checkout, else the documented columns."""
    try:
        return get_stage_class(stage).schema
    except Exception:  # a stage another engineer has not landed yet (or cannot import here)
        return SCHEMAS[stage]


def write_stage(
    root: Path, stage: str, rows: list[dict[str, Any]], parts: int = 2, success: bool = True
) -> None:
    """Write a stage's manifest in ``parts`` Parquet parts and, unless told not to, its ``_SUCCESS.json``."""
    schema = pa.schema(BASE_FIELDS + list(stage_schema(stage)))
    for i in range(parts):
        chunk = rows[i::parts]
        if chunk:
            store.write_parquet(
                manifest.new_part_uri(str(root), stage), pa.Table.from_pylist(chunk, schema=schema)
            )
    if success:
        totals = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "filtered")}
        manifest.write_success(
            str(root),
            stage,
            {
                "stage": stage,
                "rows_in": len(rows),
                "skipped_already_done": 0,
                "this_run": totals,
                "totals": totals,
                "top_reasons": [],
                "wall_s": 1.5 + len(stage),
                "rows_per_s": round(len(rows) / (1.5 + len(stage)), 3),
                "models": {stage: "tiny"} if stage in ("caption", "depth") else {},
                "config": {},
            },
        )


def ok(video_id: str, **cols: Any) -> dict[str, Any]:
    return {"video_id": video_id, "status": "ok", "error": None, **cols}


def bad(video_id: str, status: str, error: str) -> dict[str, Any]:
    return {"video_id": video_id, "status": status, "error": error}


def build_run(root: Path, upto: str = "shard", samples_per_shard: int = 3) -> Path:
    """Write the run under ``root`` with the stages up to ``upto``; returns ``root``."""
    rng = np.random.default_rng(0)
    ids = [f"yt-vid{i:02d}" for i in range(14)]
    queries = ["cats", "dogs", "<b>rain</b> $sounds$", None]  # markup and TeX-like text in a plot label
    discover = [
        ok(
            v,
            url=f"https://example.com/watch?v={v}",
            title=HOSTILE_TITLE if i == 0 else f"video {i} of a cat",
            description=None,
            hashtags=[HOSTILE_TAG, "cat"] if i == 0 else ["cat", f"tag{i % 3}"],
            query=queries[i % 4],
            source="youtube",
            license="cc-by",
        )
        for i, v in enumerate(ids[:12])
    ]
    discover += [
        bad(ids[12], "failed", "list row has neither 'path' nor 'url' (/data/list.csv)"),
        bad(ids[13], "filtered", "title matches stop word 'compilation'"),
    ]
    stages = {"discover": discover}
    down_ok = ids[:10]
    stages["download"] = [
        ok(v, media=f"/media/{v}.mp4", sha256="0" * 64, bytes=1000 + i) for i, v in enumerate(down_ok)
    ]
    stages["download"] += [
        bad(ids[10], "failed", f"HTTP Error 404: Not Found (https://example.com/v/{ids[10]})"),
        bad(ids[11], "failed", f"HTTP Error 404: Not Found (https://example.com/v/{ids[11]})"),
    ]
    probed = down_ok[:7]
    probe = []
    for v, (w, h, fps, dur, has_audio) in zip(probed, PROBED):
        frames = [jpeg(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(fmt.NUM_FRAMES)]
        tone = (np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000) * 8000).astype(np.int16)
        probe.append(
            ok(
                v,
                duration=dur,
                fps=fps,
                width=w,
                height=h,
                vcodec="h264",
                acodec="aac" if has_audio else None,
                rotation=0,
                frames=frames,
                frame_times=[i * dur / 8 for i in range(8)],
                has_audio=has_audio,
                audio=encode_flac(tone, 16000) if has_audio else None,
            )
        )
    probe += [
        bad(down_ok[7], "filtered", "duration 25.30s above max_duration 20.0s"),
        bad(down_ok[8], "filtered", "duration 31.00s above max_duration 20.0s"),
        bad(down_ok[9], "failed", "MediaError: no video stream (at media.py:151)"),
    ]
    stages["probe"] = probe
    stages["caption"] = [
        ok(
            v,
            ofa=[f"a cat on a mat frame {j}" + " very" * i for j in range(8)],
            mplug=""
            if i == 3
            else ("<b>a bold cat</b> & friends" if i == 0 else f"a cat {' and' * i} a dog"),
            caption_model="tiny",
            caption_prompt_version="v1",
        )
        for i, v in enumerate(probed[:6])
    ]
    stages["caption"].append(bad(probed[6], "failed", "RuntimeError: CUDA out of memory (at caption.py:88)"))
    langs = ["en", "en", None, "zh", "en", None, "de"]
    stages["asr"] = [
        ok(
            v,
            asr=None if langs[i] is None else ("你好世界" if langs[i] == "zh" else f"hello there number {i}"),
            asr_language=langs[i],
            asr_no_speech_prob=0.1,
            asr_model="whisper:tiny",
        )
        for i, v in enumerate(probed)
    ]
    stages["enhance"] = [
        ok(
            v,
            polish_mplug=f"A cat and a dog play {i} times.",
            sound_mplug="purring" if i % 2 else None,
            enhance_model="openai:gpt-4o-mini",
            enhance_prompt_version="v1",
            enhance_note=None,
        )
        for i, v in enumerate(probed[:6])
    ]
    depth = []
    for i, v in enumerate(probed[:6]):
        maps = []
        for j in range(fmt.NUM_FRAMES):
            mm = np.linspace(300 + 100 * i, 4000 + 500 * j, 48 * 64).reshape(48, 64)
            mm[:4, :] = 0  # no depth
            mm[-2:, :] = fmt.DEPTH_MAX_MM  # at the clip
            maps.append(depth_png(mm))
        depth.append(
            ok(v, depth=maps, depth_kind="relative" if i == 2 else "metric", depth_model="hf:/models/dpt")
        )
    stages["depth"] = depth + [bad(probed[6], "failed", "depth model returned NaN")]
    stages["infrared"] = [
        ok(
            v,
            ir=[jpeg(rng.integers(0, 255, (48, 64), dtype=np.uint8)) for _ in range(8)],
            infrared_model="munit:/w/tir.pt",
        )
        for v in probed[:6]
    ]
    order = list(SCHEMAS)[: list(SCHEMAS).index(upto) + 1]
    for stage in order:
        if stage != "shard":
            write_stage(root, stage, stages[stage], success=stage != "infrared")
    if "shard" in order:
        write_shards(root, [s for s in order if s != "shard"], stages, samples_per_shard)
    return root


def write_shards(root: Path, order: list[str], stages: dict[str, list[dict]], per_shard: int) -> None:
    """Join the ok rows of every stage (later stages win a shared column) and write tars, indexes, manifest."""
    ok_rows = {s: {r["video_id"]: r for r in stages[s] if r["status"] == "ok"} for s in order}
    keys = [v for v in ok_rows[order[0]] if all(v in ok_rows[s] for s in order)]
    joined = [{k: val for s in order for k, val in ok_rows[s][v].items()} for v in keys]
    shard_rows = []
    for n, start in enumerate(range(0, len(joined), per_shard)):
        name = fmt.shard_name(n)
        batch = joined[start : start + per_shard]
        files = [(r["video_id"], sample_files(r, include_video=False)) for r in batch]
        write_tar(str(root / "shard" / f"{name}.tar"), files)
        index = [
            {
                "key": r["video_id"],
                "title": r.get("title"),
                "raw": raw_text(r),
                "ofa": r.get("ofa"),
                "mplug": r.get("mplug"),
                "polish_mplug": r.get("polish_mplug"),
                "sound_mplug": r.get("sound_mplug"),
                "asr": r.get("asr"),
                "has_audio": fmt.AUDIO_KEY in f,
                "has_depth": fmt.frame_key("depth", 0) in f,
                "has_ir": fmt.frame_key("ir", 0) in f,
                "bytes": sum(len(b) for b in f.values()),
            }
            for r, (_, f) in zip(batch, files)
        ]
        store.write_parquet(
            str(root / "shard" / f"{name}.parquet"), pa.Table.from_pylist(index, schema=INDEX_SCHEMA)
        )
        shard_rows += [ok(i["key"], shard=name, bytes=i["bytes"]) for i in index]
    stages["shard"] = shard_rows
    write_stage(root, "shard", shard_rows, parts=1)


# The curation stages, written on top of ``build_run``'s run: clip (motion, split parents) and score.
MOTIONS = [0.5, 1.25, 0.04, 2.0, 3.6, 0.75]  # of the six short videos; the third is filtered (< 0.1)
CLIP_MOTIONS = [0.6, 0.02, 1.5]  # of the 20 s video's three clips; the second is filtered
MIN_MOTION = 0.1
CURATION_SCHEMAS = {
    "score": pa.schema(
        [
            ("score_raw", pa.float64()),
            ("score_mplug", pa.float64()),
            ("score_rule", pa.string()),
            ("score_model", pa.string()),
        ]
    )
}
SCORE_CONFIG = {"min_similarity": 0.2, "filter_field": "mplug", "dedup": True, "dedup_threshold": 0.95}


def _curation_stage(root: Path, stage: str, rows: list[dict[str, Any]], config: dict[str, Any]) -> None:
    try:
        schema = get_stage_class(stage).schema
    except Exception:  # the score stage not landed in this checkout: its documented columns
        schema = CURATION_SCHEMAS[stage]
    schema = pa.schema(BASE_FIELDS + list(schema))
    store.write_parquet(manifest.new_part_uri(str(root), stage), pa.Table.from_pylist(rows, schema=schema))
    totals = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "filtered")}
    manifest.write_success(
        str(root), stage, {"stage": stage, "rows_in": len(rows), "totals": totals, "config": config}
    )


def add_curation(root: Path, with_score: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Write clip (and score) manifests over the probe rows of ``build_run``; returns their rows."""
    probe = [r for p in manifest.part_files(str(root), "probe") for r in pq.read_table(p).to_pylist()]
    probe = sorted((r for r in probe if r["status"] == "ok"), key=lambda r: r["video_id"])
    facts = [f.name for f in ProbeStage.schema]
    clip: list[dict[str, Any]] = []
    for r, m in zip(probe[:6], MOTIONS):
        status = "ok" if m >= MIN_MOTION else "filtered"
        error = None if status == "ok" else f"motion {m:.3f} below clip.min_motion {MIN_MOTION}"
        clip.append(
            {
                **{k: r[k] for k in facts},
                "video_id": r["video_id"],
                "status": status,
                "error": error,
                "parent_id": r["video_id"],
                "start": 0.0,
                "end": r["duration"],
                "motion": m,
            }
        )
    long = probe[6]
    for k, (m, (start, end)) in enumerate(zip(CLIP_MOTIONS, [(0.0, 6.0), (6.0, 14.0), (14.0, 20.0)])):
        status = "ok" if m >= MIN_MOTION else "filtered"
        clip.append(
            {
                **{f: long[f] for f in ("fps", "width", "height", "vcodec", "acodec", "rotation")},
                "video_id": f"{long['video_id']}-c{k}",
                "status": status,
                "error": None if status == "ok" else f"motion {m:.3f} below clip.min_motion {MIN_MOTION}",
                "parent_id": long["video_id"],
                "start": start,
                "end": end,
                "duration": end - start,
                "frames": [jpeg(np.full((48, 64, 3), 40 * k, np.uint8))] * fmt.NUM_FRAMES,
                "has_audio": False,
                "motion": m,
            }
        )
    clip.append(
        {
            "video_id": long["video_id"],
            "status": "filtered",
            "clips": 3,
            "error": f"split into 3 clips ({long['video_id']}-c0..{long['video_id']}-c2): duration 20.00s "
            "above clip.max_duration 8.0s",
        }
    )
    _curation_stage(root, "clip", clip, {"min_motion": MIN_MOTION, "max_duration": 8.0})
    out = {"clip": clip}
    if with_score:
        kept = [r["video_id"] for r in clip if r["status"] == "ok"]  # 5 short videos, 2 clips
        mplug = [0.31, 0.12, 0.45, 0.27, -0.05, 0.5, 0.33]
        rules = [None, "min_similarity", None, "near_dup", "min_similarity", None, None]
        score = []
        for v, s, rule in zip(kept, mplug, rules):
            error = {
                None: None,
                "min_similarity": f"score_mplug {s:.3f} below score.min_similarity 0.2",
                "near_dup": f"near-duplicate of {kept[0]} (cosine 0.981)",
            }[rule]
            score.append(
                {
                    "video_id": v,
                    "status": "ok" if rule is None else "filtered",
                    "error": error,
                    "score_raw": s - 0.1,
                    "score_mplug": s,
                    "score_rule": rule,
                    "score_model": "tiny",
                }
            )
        _curation_stage(root, "score", score, SCORE_CONFIG)
        out["score"] = score
    return out
