"""Enhance stage: an LLM turns title, hashtags, captions and transcript into ``polish_mplug`` and
``sound_mplug`` (VIDAL's ChatGPT step), with prompts from versioned files in ``stages/prompts``.

Backends: ``openai:<model>`` (any OpenAI-compatible endpoint), ``hf:<id or dir>`` (a local chat LM),
``tiny`` (random weights, for tests and the demo) and ``none`` (the best available caption copied
through). Everything a stranger wrote reaches the prompt capped and quoted as data. A reply is
checked (``stages.backends.llm``); a bad one is retried once with the reason, then the row keeps
the unenhanced text and ``enhance_note`` says why. A request that fails at the transport level
(retries used up, a 4xx) fails the row, so ``--retry-failed`` can redo it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from contracts import backends, store
from contracts.status import OK
from stages.backends.batching import ItemError
from stages.backends.llm import (
    Completion,
    Messages,
    OutputError,
    check_text,
    echo_ngrams,
    parse_json_fields,
)
from stages.base import ModelStageConfig, Results, Stage, model_name
from stages.prompts import Prompt, clean_text, data_block, load_prompt

POLISH, SOUND = "polish_mplug", "sound_mplug"
USAGE = ("enhance_prompt_tokens", "enhance_completion_tokens", "enhance_requests")  # kept by failed rows
IMPORTED = "imported"


class EnhanceConfig(ModelStageConfig):
    batch_size: int = 16
    model: str = Field(
        "none", description="openai:<model>, hf:<id or dir>, tiny, or none (copy captions through)"
    )
    response_format: Literal["json", "text"] = Field(
        "json",
        description="json: one request per video for both fields; text: one plain-text request per field",
    )
    prompt: str = Field("enhance.v1", description="prompt for response_format json (repo name or .txt path)")
    polish_prompt: str = Field("polish.v1", description="prompt for polish_mplug with response_format text")
    sound_prompt: str = Field("sound.v1", description="prompt for sound_mplug with response_format text")
    max_new_tokens: int = Field(200, ge=1)
    temperature: float = Field(0.0, ge=0)
    min_output_chars: int = Field(8, ge=1)
    max_output_chars: int = Field(600, ge=16)
    max_title_chars: int = Field(200, ge=0)
    max_description_chars: int = Field(300, ge=0, description="0 leaves descriptions out of the prompt")
    max_hashtags: int = Field(15, ge=0)
    max_caption_chars: int = Field(300, ge=0, description="per frame caption and for the video caption")
    max_transcript_chars: int = Field(800, ge=0)
    keep_imported: bool = Field(True, description="keep polish_mplug / sound_mplug a source already carries")
    require_caption: bool = Field(True, description="when the caption stage ran, enhance only its ok rows")
    # openai:
    base_url: str = Field(
        "https://api.openai.com/v1", description="OpenAI-compatible endpoint (vLLM: http://host:8000/v1)"
    )
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    concurrency: int = Field(8, ge=1, description="requests in flight per actor")
    timeout_s: float = Field(
        60.0, gt=0, description="wall-clock limit per request (a dripping reply included)"
    )
    max_retries: int = Field(5, ge=0, description="retries on 429, 5xx, timeouts and malformed replies")
    backoff_s: float = Field(1.0, ge=0)
    max_backoff_s: float = Field(60.0, ge=0)
    json_response_format: bool = Field(True, description="send response_format json_object in json mode")
    price_per_million_input_tokens: float = Field(0.0, ge=0, description="USD, for the cost estimate")
    price_per_million_output_tokens: float = Field(0.0, ge=0, description="USD, for the cost estimate")
    # hf: / tiny
    generate_batch_size: int = Field(8, ge=1, description="conversations per generate call")

    @field_validator("model")
    @classmethod
    def _spec(cls, v: str) -> str:
        return model_name("llm", v, allow_none=True)

    @field_validator("prompt", "polish_prompt", "sound_prompt")
    @classmethod
    def _prompt_exists(cls, v: str) -> str:
        load_prompt(v)
        return v


@dataclass(frozen=True)
class Job:
    """One LLM request of one row: the fields it produces and its conversation."""

    row: int
    fields: tuple[str, ...]
    messages: Messages
    echo: frozenset


def unenhanced(row: dict[str, Any], max_chars: int) -> tuple[str | None, str]:
    """The best caption available without an LLM, and where it came from."""
    ofa = [c for c in (row.get("ofa") or []) if c]
    for source, text in (
        ("mplug", row.get("mplug")),
        ("ofa", ofa[len(ofa) // 2] if ofa else None),
        ("title", row.get("title") or row.get("raw")),
    ):
        if clean := clean_text(text, max_chars):
            return clean, source
    return None, "nothing"


class EnhanceStage(Stage):
    name = "enhance"
    upstream = ("probe",)
    optional_upstream = ("discover", "caption", "asr")
    reads = ("video_id", "title", "raw", "description", "hashtags", "ofa", "mplug", "asr", POLISH, SOUND)
    uses_model = True
    Config = EnhanceConfig
    schema = pa.schema(
        [
            (POLISH, pa.string()),
            (SOUND, pa.string()),
            ("enhance_model", pa.string()),
            ("enhance_prompt_version", pa.string()),
            ("enhance_note", pa.string()),
            ("enhance_prompt_tokens", pa.int64()),
            ("enhance_completion_tokens", pa.int64()),
            ("enhance_requests", pa.int32()),
        ]
    )
    config: EnhanceConfig

    @classmethod
    def plan_upstream(cls, config: Any, present: list[str]) -> tuple[list[str], list[str]]:
        required = ["caption"] if "caption" in present and config.enhance.require_caption else ["probe"]
        return required, [s for s in cls.optional_upstream if s in present and s not in required]

    def setup(self) -> None:
        c = self.config
        if c.response_format == "json":
            self.prompts: dict[tuple[str, ...], Prompt] = {(POLISH, SOUND): load_prompt(c.prompt)}
        else:
            self.prompts = {(POLISH,): load_prompt(c.polish_prompt), (SOUND,): load_prompt(c.sound_prompt)}
        self.echo = {k: echo_ngrams(p.instruction_words()) for k, p in self.prompts.items()}
        self.prompt_version = "+".join(p.version for p in self.prompts.values())
        self.backend: Any = None
        if c.model != "none":
            self.backend = backends.load("llm", c.model, c.device, c.precision, **self.options())

    def options(self) -> dict[str, Any]:
        """The llm kind's options: the generation settings, and the client settings of ``openai:``."""
        c = self.config
        return {
            "max_new_tokens": c.max_new_tokens,
            "temperature": c.temperature,
            "generate_batch_size": c.generate_batch_size,
            "base_url": c.base_url,
            "api_key_env": c.api_key_env,
            "concurrency": c.concurrency,
            "timeout_s": c.timeout_s,
            "max_retries": c.max_retries,
            "backoff_s": c.backoff_s,
            "max_backoff_s": c.max_backoff_s,
            "timeout_name": "enhance.timeout_s",
            "json_mode": c.response_format == "json" and c.json_response_format,
        }

    def check(self) -> None:
        c = self.config
        if c.model != "none" and c.check_on_driver:
            backends.check("llm", c.model, device=c.device, precision=c.precision, **self.options())

    def models(self) -> dict[str, str]:
        c = self.config
        return {"enhance": c.model + (f" @ {c.base_url}" if c.model.startswith("openai:") else "")}

    def facts(self, row: dict[str, Any]) -> dict[str, Any]:
        """What the prompt may say about a video: every field capped, as data."""
        c = self.config
        ofa = [t for t in (clean_text(x, c.max_caption_chars) for x in row.get("ofa") or []) if t]
        return {
            "title": clean_text(row.get("title") or row.get("raw"), c.max_title_chars),
            "description": clean_text(row.get("description"), c.max_description_chars),
            "hashtags": [
                t for t in (clean_text(h, 40) for h in (row.get("hashtags") or [])[: c.max_hashtags]) if t
            ],
            "frame_captions": list(dict.fromkeys(ofa)),  # repeated captions add tokens, not facts
            "video_caption": clean_text(row.get("mplug"), c.max_caption_chars),
            "transcript": clean_text(row.get("asr"), c.max_transcript_chars),
        }

    def jobs_for(self, i: int, row: dict[str, Any]) -> list[Job]:
        """The requests of one row: the prompt(s) rendered with its quoted facts."""
        block = data_block(self.facts(row))
        jobs = []
        for fields, prompt in self.prompts.items():
            system, user = prompt.render(block)
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": user}
            ]
            jobs.append(Job(i, fields, messages, self.echo[fields]))
        return jobs

    def parse(self, job: Job, text: str) -> dict[str, str]:
        """The reply's fields, each checked; ``OutputError`` with the reason otherwise."""
        c = self.config
        raw = parse_json_fields(text, job.fields) if len(job.fields) > 1 else {job.fields[0]: text}
        return {k: check_text(v, job.echo, c.min_output_chars, c.max_output_chars) for k, v in raw.items()}

    def process(self, batch: pa.Table) -> pa.Table:
        c = self.config
        rows = batch.to_pylist()
        out = Results(self, [r["video_id"] for r in rows], accounting=USAGE)
        todo = []
        for i, r in enumerate(rows):
            out.set(i, **dict.fromkeys(USAGE, 0))
            if c.keep_imported and r.get(POLISH) and r.get(SOUND):
                out.set(i, **{POLISH: r[POLISH], SOUND: r[SOUND], "enhance_model": IMPORTED})
            elif self.backend is None:
                text, source = unenhanced(r, c.max_output_chars)
                out.set(i, **{POLISH: text, "enhance_model": "none", "enhance_note": f"copied {source}"})
            else:
                todo.append(i)
        jobs = [j for i in todo for j in self.jobs_for(i, rows[i])]
        retry: list[tuple[Job, Messages, str]] = []
        notes: dict[int, list[str]] = {i: [] for i in todo}
        for job, res in zip(jobs, self.backend.complete([j.messages for j in jobs]) if jobs else []):
            if (reason := self._take(out, job, res)) and out.ok(job.row):
                correction = [
                    {"role": "assistant", "content": res.text[:4000]},
                    {
                        "role": "user",
                        "content": f"That reply was not usable ({reason}). Reply again, "
                        "following the instructions exactly.",
                    },
                ]
                retry.append((job, job.messages + correction, reason))
        for (job, _, _), res in zip(retry, self.backend.complete([m for _, m, _ in retry]) if retry else []):
            if reason := self._take(out, job, res):
                text, source = unenhanced(rows[job.row], c.max_output_chars)
                # keep what we had without the LLM, and say why
                out.set(job.row, **{f: text if f == POLISH else None for f in job.fields})
                notes[job.row].append(
                    f"fallback for {'+'.join(job.fields)} after a retry: {reason}"
                    + (f"; {POLISH} copied from {source}" if POLISH in job.fields else "")
                )
        for i in todo:
            out.set(
                i,
                enhance_model=self.backend.model_id,
                enhance_prompt_version=self.prompt_version,
                enhance_note="; ".join(notes[i]) or None,
            )
        return out.table()  # a failed row carries no partial texts

    def _take(self, out: Results, job: Job, res: Completion | ItemError) -> str | None:
        """Record one reply into its row; the reason when it must be retried, else None."""
        if isinstance(res, ItemError):  # the endpoint failed: the row fails, to be retried later
            out.fail(job.row, res.reason)
            return None
        spent = (res.prompt_tokens, res.completion_tokens, res.attempts)
        out.set(job.row, **{k: out.get(job.row, k) + n for k, n in zip(USAGE, spent)})
        try:
            out.set(job.row, **self.parse(job, res.text))
            return None
        except OutputError as e:
            return str(e)

    def summary(self) -> dict[str, Any]:
        """LLM usage over the stage's whole manifest: requests, tokens, estimated cost, fallbacks."""
        c = self.config
        parts = [
            u
            for u in store.list_files(store.join(self.context.root, self.name), suffix=".parquet")
            if u.rsplit("/", 1)[-1].startswith("part-")
        ]
        totals = {
            "requests": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "fallbacks": 0,
            "rows_enhanced": 0,
        }
        for uri in parts:
            fs, path = store.resolve(uri)
            t = pq.read_table(
                path,
                filesystem=fs,
                columns=[
                    "status",
                    "enhance_note",
                    "enhance_requests",
                    "enhance_prompt_tokens",
                    "enhance_completion_tokens",
                ],
            )
            for r in t.to_pylist():
                totals["requests"] += r["enhance_requests"] or 0
                totals["prompt_tokens"] += r["enhance_prompt_tokens"] or 0
                totals["completion_tokens"] += r["enhance_completion_tokens"] or 0
                totals["fallbacks"] += bool(r["enhance_note"] and r["enhance_note"].startswith("fallback"))
                totals["rows_enhanced"] += bool(r["status"] == OK and r["enhance_requests"])
        cost = (
            totals["prompt_tokens"] * c.price_per_million_input_tokens
            + totals["completion_tokens"] * c.price_per_million_output_tokens
        ) / 1e6
        return {
            "llm_usage": {**totals, "estimated_cost_usd": round(cost, 4), "prompt_version": self._version()}
        }

    def _version(self) -> str:
        c = self.config
        names = [c.prompt] if c.response_format == "json" else [c.polish_prompt, c.sound_prompt]
        return "+".join(load_prompt(n).version for n in names)
