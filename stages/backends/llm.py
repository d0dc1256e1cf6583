"""LLM backends for the enhance stage, and the checks every LLM output passes before it is kept.

``openai:<model>`` is any OpenAI-compatible chat-completions endpoint (``openai_client.py``);
``hf:<hub id or dir>`` a local transformers causal LM with a chat template, batched; ``tiny`` a
random-weight Llama with an on-the-fly BPE tokenizer. Every backend takes conversations (lists of
``{"role", "content"}`` messages) and returns, in order, a ``Completion`` or an ``ItemError`` each.
They register as kind ``llm`` in ``contracts.backends``; its options are ``max_new_tokens`` and
``temperature`` (all families), ``generate_batch_size`` (local models) and the client settings of
``openai:`` (``base_url``, ``api_key_env``, ``concurrency``, ``timeout_s``, retries, ``json_mode``).

``check_text`` / ``parse_json_fields`` turn a raw reply into a kept text or raise ``OutputError`` with
the reason (empty, too short or long, an echo of the prompt, hashtags or links, not the asked JSON).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import torch

from contracts import backends
from contracts.backends import ModelSpec
from stages.backends.batching import BatchRunner, ItemError
from stages.backends.tiny_text import build_tiny, tiny_model_id
from stages.prompts import DATA_CLOSE, DATA_OPEN, words

log = logging.getLogger("vidal")
Messages = list[dict[str, str]]
ECHO_WORDS = 8  # this many consecutive prompt words in a reply make it an echo
_LABEL = re.compile(r"^\s*(polish_mplug|sound_mplug|caption|description|answer|sound)\s*[:=-]\s*", re.I)
_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*|\s*```\s*$")


@dataclass(frozen=True)
class Completion:
    """One reply: its text, token counts (as the server or tokenizer reports them) and HTTP attempts."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1


class OutputError(ValueError):
    """A reply that cannot be kept; the message is the reason recorded with the row."""


# -- output checks -----------------------------------------------------------------------------------
def echo_ngrams(instruction_words: list[str], n: int = ECHO_WORDS) -> frozenset[tuple[str, ...]]:
    """The n-word windows of a prompt's fixed text, for ``check_text``."""
    return frozenset(tuple(instruction_words[i : i + n]) for i in range(len(instruction_words) - n + 1))


def check_text(text: str, echo: frozenset[tuple[str, ...]], min_chars: int, max_chars: int) -> str:
    """The reply cleaned (labels, quotes, whitespace) if it is a usable caption; ``OutputError`` if not."""
    t = " ".join(_LABEL.sub("", text.strip()).split()).strip().strip('"').strip()
    if not t:
        raise OutputError("empty output")
    if len(t) < min_chars:
        raise OutputError(f"output too short ({len(t)} < {min_chars} characters)")
    if len(t) > max_chars:
        raise OutputError(f"output too long ({len(t)} > {max_chars} characters)")
    if DATA_OPEN.strip("<>") in t or DATA_CLOSE in t:
        raise OutputError("output echoes the prompt (data tags)")
    w = words(t)
    if any(tuple(w[i : i + ECHO_WORDS]) in echo for i in range(len(w) - ECHO_WORDS + 1)):
        raise OutputError("output echoes the prompt's instructions")
    if re.search(r"(?<!\w)#\w", t) or re.search(r"https?://|www\.", t, re.I):
        raise OutputError("output contains hashtags or links")
    return t


def parse_json_fields(text: str, keys: tuple[str, ...]) -> dict[str, str]:
    """The string fields ``keys`` of a JSON object reply (code fences and surrounding prose tolerated)."""
    body = _FENCE.sub("", text.strip())
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        raise OutputError("output is not a JSON object")
    try:
        obj = json.loads(body[start : end + 1])
    except json.JSONDecodeError as e:
        raise OutputError(f"output is not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise OutputError("output JSON is not an object")
    missing = [k for k in keys if not isinstance(obj.get(k), str)]
    if missing:
        raise OutputError(f"output JSON lacks string field(s) {', '.join(missing)}")
    return {k: obj[k] for k in keys}


# -- local transformers models -----------------------------------------------------------------------
class HFChatLM:
    """A causal LM with a chat template, generating for many conversations in padded batches."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        model_id: str,
        device: torch.device,
        max_new_tokens: int = 200,
        temperature: float = 0.0,
        batch_size: int = 8,
    ):
        self.model, self.tokenizer, self.model_id, self.device = model, tokenizer, model_id, device
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        tokenizer.padding_side = "left"  # every row continues at the same position
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.runner = BatchRunner(batch_size, device, what="llm generate")
        self._system_ok = True

    def render(self, messages: Messages) -> str:
        """The exact text the model is given for one conversation (its chat template applied)."""
        if self._system_ok:
            try:
                return self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
            except Exception as e:  # templates that forbid a system turn raise their own errors
                if not any(m["role"] == "system" for m in messages):
                    raise
                log.info("llm %s: no system turn in its chat template (%s)", self.model_id, e)
                self._system_ok = False
        return self.tokenizer.apply_chat_template(
            fold_system(messages), add_generation_prompt=True, tokenize=False
        )

    def _generate(self, conversations: list[Messages]) -> list[Completion]:
        texts = [self.render(m) for m in conversations]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.device
        )
        sample = self.temperature > 0
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                do_sample=sample,
                temperature=self.temperature if sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        stops = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        result = []
        for row, mask in zip(new.tolist(), enc["attention_mask"].sum(1).tolist()):
            n = next((i for i, t in enumerate(row) if t in stops), len(row))
            result.append(Completion(self.tokenizer.decode(row[:n], skip_special_tokens=True), int(mask), n))
        return result

    def complete(self, conversations: list[Messages]) -> list[Completion | ItemError]:
        """One completion per conversation, in order; a failing batch is split so only bad items fail."""
        return self.runner.run(conversations, self._generate)

    def close(self) -> None:
        """Nothing to release (the model goes with the actor)."""


def fold_system(messages: Messages) -> Messages:
    """The system text moved into the first user turn, for chat templates without a system role."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if system and rest and rest[0]["role"] == "user":
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
    return rest


def _chat_lm(
    model: Any,
    tokenizer: Any,
    model_id: str,
    device: torch.device,
    dtype: torch.dtype | None,
    *,
    max_new_tokens: int = 200,
    temperature: float = 0.0,
    generate_batch_size: int = 8,
    **_: Any,
) -> HFChatLM:
    model = model.to(device=device, dtype=dtype or torch.float32).eval()
    return HFChatLM(model, tokenizer, model_id, device, max_new_tokens, temperature, generate_batch_size)


@backends.register("llm", "hf", usage="hf:<hub id or local dir>", check=backends.check_pretrained_dir)
def load_hf(spec: ModelSpec, device: torch.device, dtype: torch.dtype | None, **options: Any) -> HFChatLM:
    """A transformers causal LM with a chat template; ``ModelLoadError`` saying what to do when impossible."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with backends.loading(spec):
        tokenizer = AutoTokenizer.from_pretrained(spec.name)
        model = AutoModelForCausalLM.from_pretrained(spec.name, dtype=dtype or torch.float32)
    if not tokenizer.chat_template:
        raise spec.error("its tokenizer has no chat template (use an instruct model)")
    return _chat_lm(model, tokenizer, spec.text, device, dtype, **options)


@backends.register("llm", "tiny", usage="tiny[:llama]", variants=("llama",))
def load_tiny(spec: ModelSpec, device: torch.device, dtype: torch.dtype | None, **options: Any) -> HFChatLM:
    """A random-weight Llama with an on-the-fly BPE tokenizer (the same on every actor)."""
    return _chat_lm(*build_tiny(spec.name), tiny_model_id(spec.name), device, dtype, **options)
