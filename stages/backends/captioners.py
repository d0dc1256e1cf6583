"""Image and video captioners: transformers image-text models, and tiny random-weight ones.

``hf:<hub id or local dir>`` loads ``AutoModelForImageTextToText`` with its ``AutoProcessor``. That one
interface covers single-image captioners (BLIP, BLIP-2, GIT, Florence-2) and chat VLMs that take
several images and a prompt (Qwen2.5-VL, LLaVA, SmolVLM, Idefics3). ``tiny`` builds a random-weight
BLIP (frame captions) or LLaVA (video captions) from a config; ``tiny:git`` a GIT.

``FrameCaptioner`` captions a batch of images, one caption each (the OFA-style ``ofa`` field).
``VideoCaptioner`` captions a batch of videos, each given as a few frames plus a chat prompt (the
mPLUG-Owl-style ``mplug`` field). Both generate greedily (or with beams) and return plain strings.
They register as kinds ``frame_caption`` (options ``prompt``, ``max_new_tokens``, ``num_beams``) and
``video_caption`` (``max_new_tokens``, ``num_beams``) in ``contracts.backends``; the dtype is the
weights' (``None``: fp32).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from contracts import backends
from contracts.backends import ModelSpec
from stages.backends.tiny_text import build_tiny, tiny_model_id

log = logging.getLogger("vidal")
HF_USAGE = "hf:<hub id or local dir>"
TINY_FRAME_ARCHS = ("blip", "git", "llava")  # the first is a bare tiny's
TINY_VIDEO_ARCHS = ("llava",)


@dataclass
class ImageTextModel:
    """A loaded image-text model with its processor, device and dtype, and the id recorded per row."""

    model: Any
    processor: Any
    model_id: str
    device: torch.device
    dtype: torch.dtype

    def to_device(self, inputs: Any) -> dict[str, Any]:
        """Processor output on the model's device, floating tensors in the model's dtype."""
        out = {}
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device, dtype=self.dtype if v.is_floating_point() else None)
            out[k] = v
        return out

    def generate(self, inputs: dict[str, Any], max_new_tokens: int, num_beams: int) -> torch.Tensor:
        """Greedy (or beam) generation; returns only the new tokens when the prompt is echoed back."""
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False
            )
        ids = inputs.get("input_ids")
        # Decoder-only models return prompt + continuation; encoder-decoder ones only the continuation.
        if ids is not None and out.shape[1] >= ids.shape[1] and torch.equal(out[:, : ids.shape[1]], ids):
            out = out[:, ids.shape[1] :]
        return out

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """Token ids -> stripped strings without special tokens."""
        return [" ".join(t.split()) for t in self.processor.batch_decode(tokens, skip_special_tokens=True)]


def _ready(
    model: Any, processor: Any, model_id: str, device: torch.device, dtype: torch.dtype | None
) -> ImageTextModel:
    dtype = dtype or torch.float32
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"  # batched generation continues every row at the same position
    return ImageTextModel(model.to(device=device, dtype=dtype).eval(), processor, model_id, device, dtype)


def image_text_hf(spec: ModelSpec, device: torch.device, dtype: torch.dtype | None) -> ImageTextModel:
    """``AutoModelForImageTextToText`` and ``AutoProcessor`` of a hub id or directory, in ``dtype``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with backends.loading(spec):
        processor = AutoProcessor.from_pretrained(spec.name)
        model = AutoModelForImageTextToText.from_pretrained(spec.name, dtype=dtype or torch.float32)
    return _ready(model, processor, spec.text, device, dtype)


def image_text_tiny(spec: ModelSpec, device: torch.device, dtype: torch.dtype | None) -> ImageTextModel:
    """A random-weight model of architecture ``spec.name`` (BLIP, GIT, LLaVA), the same on every actor."""
    return _ready(*build_tiny(spec.name), tiny_model_id(spec.name), device, dtype)


class FrameCaptioner:
    """One caption per image, batched: ``captioner(images) -> [caption, ...]``."""

    def __init__(
        self, m: ImageTextModel, prompt: str | None = None, max_new_tokens: int = 30, num_beams: int = 1
    ):
        self.m, self.prompt = m, prompt
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams

    @property
    def model_id(self) -> str:
        return self.m.model_id

    def __call__(self, images: list[Any]) -> list[str]:
        kwargs: dict[str, Any] = {"images": images, "return_tensors": "pt"}
        if self.prompt:  # conditional captioners: BLIP's "a picture of", Florence-2's "<CAPTION>"
            kwargs["text"] = [self.prompt] * len(images)
        inputs = self.m.to_device(self.m.processor(**kwargs))
        texts = self.m.decode(self.m.generate(inputs, self.max_new_tokens, self.num_beams))
        if self.prompt:
            # BLIP returns its text prompt as the caption's start (with its own BOS, so not token-equal).
            p = self.prompt.strip().lower()
            texts = [t[len(p) :].strip() if t.lower().startswith(p) else t for t in texts]
        return texts


@dataclass(frozen=True)
class VideoRequest:
    """One video for the video captioner: a few frames and the rendered prompt texts."""

    frames: list[Any]
    system: str
    user: str


class VideoCaptioner:
    """One caption per video from several frames and a chat prompt: ``captioner(requests) -> [caption, ...]``."""

    def __init__(self, m: ImageTextModel, max_new_tokens: int = 80, num_beams: int = 1):
        self.m = m
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams
        self._system_ok = True  # some chat templates reject a system turn; then it joins the user turn

    @property
    def model_id(self) -> str:
        return self.m.model_id

    def _chat_text(self, r: VideoRequest) -> str:
        images = [{"type": "image"} for _ in r.frames]
        if self._system_ok and r.system:
            messages = [
                {"role": "system", "content": [{"type": "text", "text": r.system}]},
                {"role": "user", "content": [*images, {"type": "text", "text": r.user}]},
            ]
            try:
                return self.m.processor.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
            except Exception as e:  # a template's own error (jinja raise_exception), not ours
                log.info("video captioner %s: no system turn in its chat template (%s)", self.model_id, e)
                self._system_ok = False
        text = f"{r.system}\n\n{r.user}" if r.system else r.user
        messages = [{"role": "user", "content": [*images, {"type": "text", "text": text}]}]
        return self.m.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def __call__(self, requests: list[VideoRequest]) -> list[str]:
        texts = [self._chat_text(r) for r in requests]
        images = [f for r in requests for f in r.frames]
        inputs = self.m.to_device(
            self.m.processor(text=texts, images=images, padding=True, return_tensors="pt")
        )
        return self.m.decode(self.m.generate(inputs, self.max_new_tokens, self.num_beams))


# -- registration: what each kind loads --------------------------------------------------------------
CAPTIONERS = {"frame_caption": FrameCaptioner, "video_caption": VideoCaptioner}


@backends.register("frame_caption", "hf", usage=HF_USAGE, check=backends.check_pretrained_dir)
@backends.register("video_caption", "hf", usage=HF_USAGE, check=backends.check_pretrained_dir)
def load_hf(spec: ModelSpec, device: torch.device, dtype: torch.dtype | None, **options: Any) -> Any:
    """The kind's captioner around a transformers image-text model."""
    return CAPTIONERS[spec.kind](image_text_hf(spec, device, dtype), **options)


@backends.register("frame_caption", "tiny", usage="tiny[:blip|git|llava]", variants=TINY_FRAME_ARCHS)
@backends.register("video_caption", "tiny", usage="tiny[:llava]", variants=TINY_VIDEO_ARCHS)
def load_tiny(spec: ModelSpec, device: torch.device, dtype: torch.dtype | None, **options: Any) -> Any:
    """The kind's captioner around a tiny random-weight model."""
    return CAPTIONERS[spec.kind](image_text_tiny(spec, device, dtype), **options)
