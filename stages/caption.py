"""Caption stage: a caption per sampled frame (``ofa``) and one for the whole video (``mplug``).

Frame captions come from an image captioner (BLIP by default), batched across the frames of every
video in the batch. The video caption comes from a vision-language model given a few of the frames
and, as quoted data in its prompt, the uploader's title and hashtags (``stages/prompts/
video_caption.v1.txt``). Captions a source already carries (the VIDAL-10M import) are kept unless
``keep_imported`` is off. Each row records ``caption_model`` and ``caption_prompt_version``.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from PIL import Image
from pydantic import Field, field_validator

from contracts import backends
from contracts.encodings import decode_image
from stages.backends.batching import BatchRunner, ItemError, flatten, regroup
from stages.backends.captioners import FrameCaptioner, VideoCaptioner, VideoRequest
from stages.base import ModelStageConfig, Results, Stage, model_name
from stages.prompts import clean_text, data_block, load_prompt

IMPORTED = "imported"


class CaptionConfig(ModelStageConfig):
    batch_size: int = 8
    frame_model: str = Field(
        "hf:Salesforce/blip-image-captioning-large",
        description="image captioner: hf:<id or dir> or tiny (tiny:git)",
    )
    frame_prompt: str | None = Field(
        None,
        description="text prompt for conditional captioners "
        "(BLIP: 'a picture of'; Florence-2: '<MORE_DETAILED_CAPTION>')",
    )
    frame_batch_size: int = Field(32, ge=1, description="frames per generate call")
    frame_max_new_tokens: int = Field(30, ge=1)
    video_model: str = Field(
        "hf:Qwen/Qwen2.5-VL-3B-Instruct",
        description="vision-language model for the video caption: hf:<id or dir>, tiny or none",
    )
    video_prompt: str = Field("video_caption.v1", description="repo prompt name or a path to a .txt prompt")
    video_frames: int = Field(4, ge=1, le=64, description="frames (evenly spaced) given to the video model")
    video_frame_side: int = Field(224, ge=16, description="short side of the frames given to the video model")
    video_batch_size: int = Field(4, ge=1, description="videos per generate call")
    video_max_new_tokens: int = Field(80, ge=1)
    num_beams: int = Field(1, ge=1)
    max_title_chars: int = Field(200, ge=0, description="title characters quoted in the prompt")
    max_hashtags: int = Field(15, ge=0)
    keep_imported: bool = Field(True, description="keep ofa / mplug a source already carries")

    @field_validator("frame_model")
    @classmethod
    def _frame_spec(cls, v: str) -> str:
        return model_name("frame_caption", v)

    @field_validator("video_model")
    @classmethod
    def _video_spec(cls, v: str) -> str:
        return model_name("video_caption", v, allow_none=True)

    @field_validator("video_prompt")
    @classmethod
    def _prompt_exists(cls, v: str) -> str:
        load_prompt(v)
        return v


def frame_images(blobs: list[bytes] | None) -> list[Image.Image]:
    """JPEG frames -> RGB PIL images; ``ValueError`` naming the first frame that does not decode."""
    if not blobs:
        raise ValueError("no frames (the probe stage recorded none)")
    images = []
    for i, data in enumerate(blobs):
        try:
            images.append(decode_image(data, "RGB"))
        except ValueError:
            raise ValueError(f"frame {i} is not a decodable image ({len(data or b'')} bytes)") from None
    return images


def spread(items: list[Any], n: int) -> list[Any]:
    """``n`` evenly spaced items (all of them when there are no more than ``n``)."""
    if len(items) <= n:
        return list(items)
    return (
        [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]
        if n > 1
        else [items[len(items) // 2]]
    )


def shrink(image: Image.Image, short_side: int) -> Image.Image:
    """Downscale so the short side is at most ``short_side`` (fewer vision tokens per frame)."""
    w, h = image.size
    if min(w, h) <= short_side:
        return image
    s = short_side / min(w, h)
    return image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)


class CaptionStage(Stage):
    name = "caption"
    upstream = ("probe",)
    optional_upstream = ("discover",)
    reads = ("video_id", "frames", "title", "hashtags", "ofa", "mplug")
    uses_model = True
    Config = CaptionConfig
    schema = pa.schema(
        [
            ("ofa", pa.list_(pa.string())),
            ("mplug", pa.string()),
            ("caption_model", pa.string()),
            ("caption_prompt_version", pa.string()),
        ]
    )
    config: CaptionConfig

    def check(self) -> None:
        c = self.config
        if c.check_on_driver:
            backends.check("frame_caption", c.frame_model, device=c.device, precision=c.precision)
            if c.video_model != "none":
                backends.check("video_caption", c.video_model, device=c.device, precision=c.precision)

    def setup(self) -> None:
        c = self.config
        self.frames: FrameCaptioner = backends.load(
            "frame_caption",
            c.frame_model,
            c.device,
            c.precision,
            prompt=c.frame_prompt,
            max_new_tokens=c.frame_max_new_tokens,
            num_beams=c.num_beams,
        )
        device = self.frames.m.device
        self.frame_runner = BatchRunner(c.frame_batch_size, device, what="frame captioning")
        self.video: VideoCaptioner | None = None
        if c.video_model != "none":
            self.video = backends.load(
                "video_caption",
                c.video_model,
                device,
                c.precision,
                max_new_tokens=c.video_max_new_tokens,
                num_beams=c.num_beams,
            )
            self.video_runner = BatchRunner(c.video_batch_size, device, what="video captioning")
        self.prompt = load_prompt(c.video_prompt)

    def models(self) -> dict[str, str]:
        return {"caption_frames": self.config.frame_model, "caption_video": self.config.video_model}

    def video_request(self, row: dict[str, Any], frames: list[Image.Image]) -> VideoRequest:
        """The video model's input: a few frames and the prompt with title and hashtags as quoted data."""
        c = self.config
        tags = [t for t in (clean_text(h, 40) for h in (row.get("hashtags") or [])[: c.max_hashtags]) if t]
        data = data_block({"title": clean_text(row.get("title"), c.max_title_chars), "hashtags": tags})
        picked = [shrink(f, c.video_frame_side) for f in spread(frames, c.video_frames)]
        system, user = self.prompt.render(data, num_frames=len(picked))
        return VideoRequest(picked, system, user)

    def process(self, batch: pa.Table) -> pa.Table:
        c = self.config
        rows = batch.to_pylist()
        out = Results(self, [r["video_id"] for r in rows])
        images: dict[int, list[Image.Image]] = {}
        for i, r in enumerate(rows):
            try:
                images[i] = frame_images(r.get("frames"))
            except ValueError as e:
                out.fail(i, str(e))

        # Frame captions, batched across all frames of all videos that need them.
        imported_ofa = {i for i, r in enumerate(rows) if c.keep_imported and r.get("ofa")}
        todo = [i for i in images if i not in imported_ofa]
        items, owners = flatten([images[i] for i in todo])
        per_row = regroup(self.frame_runner.run(items, self.frames), owners, len(todo))
        for i, caps in zip(todo, per_row):
            if bad := next((x for x in caps if isinstance(x, ItemError)), None):
                out.fail(i, f"frame captioning failed: {bad.reason}")
            else:
                out.set(i, ofa=caps)
        for i in imported_ofa:
            out.set(i, ofa=rows[i]["ofa"])

        # Video captions: a few frames and the title/hashtags prompt per video.
        imported_mplug = {i for i, r in enumerate(rows) if c.keep_imported and r.get("mplug")}
        todo = [i for i in images if i not in imported_mplug and out.ok(i)]
        if self.video is not None and todo:
            results = self.video_runner.run(
                [self.video_request(rows[i], images[i]) for i in todo], self.video
            )
            for i, cap in zip(todo, results):
                if isinstance(cap, ItemError):
                    out.fail(i, f"video captioning failed: {cap.reason}")
                else:
                    out.set(i, mplug=cap)
        for i in imported_mplug:
            out.set(i, mplug=rows[i]["mplug"])

        for i in range(len(rows)):
            made_mplug = self.video is not None and i not in imported_mplug
            ofa_id = IMPORTED if i in imported_ofa else self.frames.model_id
            mplug_id = IMPORTED if i in imported_mplug else (self.video.model_id if self.video else "none")
            out.set(
                i,
                caption_model=f"ofa={ofa_id};mplug={mplug_id}",
                caption_prompt_version=self.prompt.version if made_mplug else None,
            )
        return out.table()  # a failed row carries no partial captions
