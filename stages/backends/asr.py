"""Speech recognition with openai-whisper, on audio arrays decoded in-process.

``whisper:<size>`` (``tiny`` … ``large-v3``, ``turbo``) loads through ``whisper.load_model`` with a
configurable ``download_root`` (a filled cache works offline); ``whisper:/path/model.pt`` loads a
checkpoint file; ``tiny`` builds a random-weight Whisper from ``ModelDimensions`` with whisper's
shipped multilingual tokenizer. Both register as kind ``asr`` in ``contracts.backends`` and load a
``WhisperASR`` (options: the asr config's ``download_root`` and decoding keys; on CUDA whisper decodes
in fp16 unless the precision is fp32). Audio never goes through ``whisper.load_audio`` (it runs an ffmpeg
binary): callers pass 16 kHz float arrays.

Clips up to 30 s (VIDAL's are at most 20 s) are decoded together in one batched ``whisper.decode``
call, language detection included; longer ones go through ``whisper.transcribe`` one at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from contracts import backends
from contracts.backends import ModelSpec

TINY_ID = "tiny:whisper-random"
DECODING_OPTIONS = (
    "language",
    "task",
    "max_new_tokens",
    "beam_size",
    "no_speech_threshold",
    "logprob_threshold",
)
SEED = 0


@dataclass(frozen=True)
class Transcript:
    """Text ('' when whisper judges the clip to hold no speech), detected language, no-speech probability."""

    text: str
    language: str | None
    no_speech_prob: float | None


def build_tiny_whisper(seed: int = SEED) -> Any:
    """A random-weight multilingual Whisper (about 3.5 M parameters, mostly the 51,865-token embedding)."""
    import whisper
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=64,
        n_audio_head=2,
        n_audio_layer=1,
        n_vocab=51865,
        n_text_ctx=448,
        n_text_state=64,
        n_text_head=2,
        n_text_layer=1,
    )
    tok = whisper.tokenizer.get_tokenizer(True, num_languages=dims.n_vocab - 51765 - 1)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        model = Whisper(dims).eval()
        # The decoder's positional embedding is allocated with torch.empty (checkpoints fill it).
        model.decoder.positional_embedding.normal_(0.0, 0.02)
        # Shrink the special tokens' (tied) embeddings so the random model writes text tokens rather
        # than a run of <|notimestamps|> that decodes to nothing; their logits stay distinct.
        model.decoder.token_embedding.weight[tok.eot :] *= 0.05
    return model


def save_tiny_whisper(path: str) -> str:
    """Write the tiny model as a whisper checkpoint file (loadable as ``whisper:<path>``)."""
    from dataclasses import asdict

    model = build_tiny_whisper()
    torch.save({"dims": asdict(model.dims), "model_state_dict": model.state_dict()}, path)
    return path


def check_whisper(spec: ModelSpec, **_: Any) -> None:
    """A whisper size or an existing checkpoint file (the file's contents are read by the actor)."""
    import whisper

    if spec.name not in whisper.available_models() and not os.path.isfile(spec.name):
        raise spec.error(
            f"not a whisper size ({', '.join(whisper.available_models())}) nor a checkpoint file"
        )


@backends.register("asr", "whisper", usage="whisper:<size or .pt path>", check=check_whisper)
def load_whisper(
    spec: ModelSpec,
    device: torch.device,
    dtype: torch.dtype | None,
    *,
    download_root: str | None = None,
    **options: Any,
) -> WhisperASR:
    """``whisper.load_model`` of a size (from ``download_root``'s cache or the network) or a file."""
    import whisper

    check_whisper(spec)
    try:
        model = whisper.load_model(spec.name, device=device, download_root=download_root)
    except (OSError, RuntimeError) as e:  # no network and no cached file, or a damaged file
        where = download_root or "~/.cache/whisper"
        raise spec.error(
            f"cannot load it ({' '.join(str(e).split())[:200]}); offline, "
            f"put the model's .pt file in {where} (asr.download_root)"
        ) from None
    return _asr(model.eval(), spec.text, dtype, options)


@backends.register("asr", "tiny", usage="tiny[:whisper]", variants=("whisper",))
def load_tiny(spec: ModelSpec, device: torch.device, dtype: torch.dtype | None, **options: Any) -> WhisperASR:
    """The random-weight Whisper of ``build_tiny_whisper``, recorded as ``TINY_ID``."""
    return _asr(build_tiny_whisper().to(device), TINY_ID, dtype, options)


def _asr(model: Any, model_id: str, dtype: torch.dtype | None, options: dict[str, Any]) -> WhisperASR:
    decoding = {k: options[k] for k in DECODING_OPTIONS if k in options}
    return WhisperASR(model, model_id, fp16=dtype is not None, **decoding)  # fp32: precision fp32 on CUDA


class WhisperASR:
    """Batched transcription of 16 kHz mono float32 arrays."""

    def __init__(
        self,
        model: Any,
        model_id: str,
        *,
        language: str | None = None,
        task: str = "transcribe",
        max_new_tokens: int | None = None,
        beam_size: int | None = None,
        no_speech_threshold: float = 0.6,
        logprob_threshold: float = -1.0,
        fp16: bool | None = None,
    ):
        import whisper

        self.model, self.model_id = model, model_id
        self.device = next(model.parameters()).device
        self.fp16 = self.device.type == "cuda" if fp16 is None else fp16 and self.device.type == "cuda"
        self.language, self.task = language, task
        self.max_new_tokens, self.beam_size = max_new_tokens, beam_size
        self.no_speech_threshold, self.logprob_threshold = no_speech_threshold, logprob_threshold
        self.tokenizer = whisper.tokenizer.get_tokenizer(
            model.is_multilingual, num_languages=model.num_languages, language=language, task=task
        )

    def _silent(self, no_speech_prob: float, avg_logprob: float) -> bool:
        # whisper.transcribe's own rule: likely no speech and a low-confidence decode.
        return no_speech_prob > self.no_speech_threshold and avg_logprob < self.logprob_threshold

    def transcribe_short(self, clips: list[np.ndarray]) -> list[Transcript]:
        """Clips of at most 30 s, decoded as one batch (padded to whisper's 30 s window)."""
        import whisper

        mels = torch.stack(
            [
                whisper.log_mel_spectrogram(
                    whisper.pad_or_trim(torch.from_numpy(np.asarray(a, np.float32))),
                    n_mels=self.model.dims.n_mels,
                )
                for a in clips
            ]
        ).to(self.device)
        options = whisper.DecodingOptions(
            task=self.task,
            language=self.language,
            temperature=0.0,
            sample_len=self.max_new_tokens,
            beam_size=self.beam_size,
            without_timestamps=True,
            fp16=self.fp16,
        )
        results = whisper.decode(self.model, mels, options)
        out = []
        for r in results:
            text = self.tokenizer.decode([t for t in r.tokens if t < self.tokenizer.eot]).strip()
            if self._silent(r.no_speech_prob, r.avg_logprob):
                text = ""
            out.append(Transcript(text, r.language, float(r.no_speech_prob)))
        return out

    def transcribe_long(self, clip: np.ndarray) -> Transcript:
        """A clip over 30 s, through whisper's sliding-window ``transcribe`` (no-speech prob: segment mean)."""
        import whisper

        result = whisper.transcribe(
            self.model,
            np.asarray(clip, np.float32),
            verbose=None,
            task=self.task,
            language=self.language,
            temperature=0.0,
            fp16=self.fp16,
            sample_len=self.max_new_tokens,
            beam_size=self.beam_size,
            no_speech_threshold=self.no_speech_threshold,
            logprob_threshold=self.logprob_threshold,
            condition_on_previous_text=False,
        )
        probs = [s["no_speech_prob"] for s in result.get("segments", [])]
        return Transcript(
            result["text"].strip(), result.get("language"), float(np.mean(probs)) if probs else None
        )
