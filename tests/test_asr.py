"""The ASR stage with a tiny random-weight Whisper (``ModelDimensions``, whisper's own tokenizer files).

Transcripts from random weights are gibberish: the tests check fields, batching, ordering, rows
without audio, bad audio, the long-clip path, checkpoint loading and that no ffmpeg process is run.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import whisper
from pydantic import ValidationError

from contracts.backends import ModelLoadError
from contracts.encodings import encode_flac
from pipeline.synthetic import CONCEPTS, tone
from stages.asr import AsrConfig, AsrStage
from stages.backends.asr import TINY_ID, save_tiny_whisper
from stages.base import RunContext

RATE = 16_000


def flac(samples: np.ndarray, rate: int = RATE) -> bytes:
    return encode_flac((np.clip(samples, -1, 1) * 32767).astype(np.int16), rate)


def audio_rows() -> list[dict]:
    """Tones of different pitch and rhythm, silence, and a video without audio."""
    rows = [
        {"video_id": f"tone{i}", "audio": flac(tone(CONCEPTS[i * 5], 2.0, RATE)), "has_audio": True}
        for i in range(3)
    ]
    rows.append({"video_id": "silence", "audio": flac(np.zeros(RATE * 2)), "has_audio": True})
    rows.append({"video_id": "mute", "audio": None, "has_audio": False})
    return rows


@pytest.fixture(autouse=True)
def no_ffmpeg(monkeypatch):
    """whisper.load_audio runs an ffmpeg binary; the stage must never get there."""

    def refuse(*a, **k):
        raise AssertionError("whisper tried to run ffmpeg")

    monkeypatch.setattr(whisper.audio, "run", refuse)
    monkeypatch.setattr(whisper, "load_audio", refuse)


def make(tmp_path, **kw) -> AsrStage:
    s = AsrStage(
        AsrConfig(**{"model": "tiny", "max_new_tokens": 8, "decode_batch_size": 2, **kw}),
        RunContext(root=str(tmp_path)),
    )
    s.setup()
    return s


def run(s: AsrStage, rows: list[dict]) -> dict[str, dict]:
    return {r["video_id"]: r for r in s.process(pa.Table.from_pylist(rows)).to_pylist()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make(tmp_path_factory.mktemp("asr"))


def test_transcripts_language_and_no_speech_probability(tiny):
    out = run(tiny, audio_rows())
    for vid in ("tone0", "tone1", "tone2", "silence"):
        r = out[vid]
        assert r["status"] == "ok" and isinstance(r["asr"], str) and r["asr_model"] == TINY_ID
        assert r["asr_language"] in whisper.tokenizer.LANGUAGES
        assert 0.0 <= r["asr_no_speech_prob"] <= 1.0
    mute = out["mute"]
    assert mute["status"] == "ok" and mute["error"] is None
    assert (mute["asr"], mute["asr_language"], mute["asr_no_speech_prob"], mute["asr_model"]) == (None,) * 4


def test_batched_decode_keeps_rows_apart(tiny):
    rows = audio_rows()
    together = run(tiny, rows)  # decode batches of 2 across 4 clips
    for row in rows:
        alone = run(tiny, [row])[row["video_id"]]
        assert alone["asr"] == together[row["video_id"]]["asr"], row["video_id"]
        assert alone["asr_language"] == together[row["video_id"]]["asr_language"]
    assert together["silence"]["asr"] != together["tone0"]["asr"]  # input-dependent, so mix-ups show


def test_bad_audio_fails_only_its_row(tiny):
    rows = audio_rows()[:2] + [
        {"video_id": "garbage", "audio": b"fLaC but not really" * 20, "has_audio": True},
        {"video_id": "8khz", "audio": flac(np.zeros(8000), 8000), "has_audio": True},
    ]
    out = run(tiny, rows)
    assert out["garbage"]["status"] == "failed" and out["garbage"]["error"].startswith(
        "audio does not decode"
    )
    assert out["8khz"]["status"] == "failed" and "8000 Hz" in out["8khz"]["error"]
    assert out["tone0"]["status"] == out["tone1"]["status"] == "ok"
    assert out["tone0"]["asr"] == run(tiny, rows[:1])["tone0"]["asr"]


def test_clips_over_30_seconds_use_the_sliding_window(tiny):
    long = np.tile(tone(CONCEPTS[3], 1.0, RATE), 35)
    out = run(tiny, [{"video_id": "long", "audio": flac(long), "has_audio": True}, audio_rows()[0]])
    assert out["long"]["status"] == "ok" and out["long"]["asr"] and out["long"]["asr_language"]
    assert 0.0 <= out["long"]["asr_no_speech_prob"] <= 1.0 and out["tone0"]["status"] == "ok"


def test_checkpoint_file_loads_with_whispers_loader(tmp_path, tiny):
    path = save_tiny_whisper(str(tmp_path / "tiny.pt"))
    s = make(tmp_path, model=f"whisper:{path}")
    rows = audio_rows()[:2]
    got, ref = run(s, rows), run(tiny, rows)
    assert [r["asr"] for r in got.values()] == [r["asr"] for r in ref.values()]
    assert all(r["asr_model"] == f"whisper:{path}" for r in got.values())


def test_unknown_models_are_refused(tmp_path):
    for bad in ("hf:openai/whisper-small", "tiny:large", "small"):
        with pytest.raises(ValidationError):
            AsrConfig(model=bad)
    with pytest.raises(ModelLoadError, match="not a whisper size"):
        make(tmp_path, model="whisper:enormous")
    assert AsrConfig(model="whisper:large-v3", download_root=str(tmp_path)).download_root == str(tmp_path)
