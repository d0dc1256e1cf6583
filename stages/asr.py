"""ASR stage: a Whisper transcript, its detected language and no-speech probability per video.

Reads the probe stage's 16 kHz mono FLAC (``audio``), decodes it in-process with PyAV and hands the
array to openai-whisper (never ``whisper.load_audio``, which runs an ffmpeg binary). Clips of up to
30 s are transcribed together in batches; a video without audio is ``ok`` with a null transcript.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from contracts import backends
from contracts.encodings import decode_flac
from contracts.shard_format import SAMPLE_RATE
from stages.backends.asr import DECODING_OPTIONS, WhisperASR
from stages.backends.batching import BatchRunner, ItemError
from stages.base import ModelStageConfig, Results, Stage, model_name

WINDOW_S = 30.0  # whisper's input window


class AsrConfig(ModelStageConfig):
    batch_size: int = 8
    model: str = Field("whisper:small", description="whisper:<size or .pt path>, or tiny")
    download_root: str | None = Field(
        None,
        description="where whisper's .pt files are cached "
        "(default ~/.cache/whisper); a filled cache works offline",
    )
    language: str | None = Field(None, description="language code, or None to detect it per clip")
    task: str = Field("transcribe", pattern="^(transcribe|translate)$")
    max_new_tokens: int | None = Field(None, ge=1, le=224, description="tokens per 30 s window (None: 224)")
    beam_size: int | None = Field(None, ge=1, description="None: greedy")
    decode_batch_size: int = Field(16, ge=1, description="clips per whisper.decode call")
    no_speech_threshold: float = Field(0.6, ge=0, le=1)
    logprob_threshold: float = -1.0

    @field_validator("model")
    @classmethod
    def _spec(cls, v: str) -> str:
        return model_name("asr", v)


class AsrStage(Stage):
    name = "asr"
    upstream = ("probe",)
    reads = ("video_id", "audio")
    uses_model = True
    Config = AsrConfig
    schema = pa.schema(
        [
            ("asr", pa.string()),
            ("asr_language", pa.string()),
            ("asr_no_speech_prob", pa.float32()),
            ("asr_model", pa.string()),
        ]
    )
    config: AsrConfig

    def options(self) -> dict[str, Any]:
        return {k: getattr(self.config, k) for k in ("download_root", *DECODING_OPTIONS)}

    def check(self) -> None:
        c = self.config
        if c.check_on_driver:
            backends.check("asr", c.model, device=c.device, precision=c.precision, **self.options())

    def setup(self) -> None:
        c = self.config
        self.asr: WhisperASR = backends.load("asr", c.model, c.device, c.precision, **self.options())
        self.runner = BatchRunner(c.decode_batch_size, self.asr.device, what="whisper")

    def models(self) -> dict[str, str]:
        return {"asr": self.config.model}

    def process(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out = Results(self, [r["video_id"] for r in rows])
        clips: dict[int, np.ndarray] = {}
        for i, r in enumerate(rows):
            if not r.get("audio"):
                continue  # no audio track: ok, with a null transcript
            try:
                samples, rate = decode_flac(r["audio"])
            except Exception as e:  # PyAV raises its own error types for broken data
                out.fail(i, f"audio does not decode: {type(e).__name__}: {e}")
                continue
            if rate != SAMPLE_RATE:
                out.fail(i, f"audio is {rate} Hz; whisper needs {SAMPLE_RATE} Hz")
                continue
            clips[i] = samples
        short = [i for i, a in clips.items() if len(a) <= WINDOW_S * SAMPLE_RATE]
        results: dict[int, Any] = dict(
            zip(short, self.runner.run([clips[i] for i in short], self.asr.transcribe_short))
        )
        for i in (i for i in clips if i not in results):
            try:
                results[i] = self.asr.transcribe_long(clips[i])
            except Exception as e:  # one long clip's failure is that row's
                results[i] = ItemError(f"whisper failed: {type(e).__name__}: {e}")
        for i, res in results.items():
            if isinstance(res, ItemError):
                out.fail(i, res.reason)
            else:
                out.set(
                    i,
                    asr=res.text,
                    asr_language=res.language,
                    asr_no_speech_prob=res.no_speech_prob,
                    asr_model=self.asr.model_id,
                )
        return out.table()
