"""A small client for OpenAI-compatible chat-completions endpoints (vLLM, SGLang, hosted APIs).

``POST {base_url}/chat/completions`` with a bounded number of requests in flight, a wall-clock
timeout per request (``stages.backends.http_deadline``: a server dripping a byte at a time cannot
hold a request past it), and retries with exponential backoff (and the server's ``Retry-After``) on 429, 5xx,
timeouts, dropped connections and malformed replies. Other 4xx answers are final. The API key is
read from an environment variable when the client is built and only ever sent in the
``Authorization`` header: it is never logged, never put in an error message, never returned.
Registered as the ``openai`` family of kind ``llm`` (``contracts.backends``).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
import torch

from contracts import backends
from contracts.backends import ModelSpec
from stages.backends.batching import ItemError
from stages.backends.http_deadline import Deadline, DeadlineAdapter
from stages.backends.llm import Completion, Messages

log = logging.getLogger("vidal")
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})


class RequestFailed(Exception):
    """A request that will not succeed (a final status, or retries used up); the message is safe to record."""


class OpenAIChatClient:
    """Chat completions over HTTP with concurrency, timeouts, retries and token accounting."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        max_tokens: int = 300,
        temperature: float = 0.0,
        json_mode: bool = False,
        extra_body: dict[str, Any] | None = None,
        timeout_name: str = "timeout_s",
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.model_id = f"openai:{model}"
        self.concurrency, self.timeout_s, self.timeout_name = concurrency, timeout_s, timeout_name
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.max_tokens, self.temperature, self.json_mode = max_tokens, temperature, json_mode
        self.extra_body = dict(extra_body or {})
        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            log.warning(
                "enhance: environment variable %s is not set; sending requests without an API key",
                api_key_env,
            )
        self._key = key or None
        self._local = threading.local()  # one Session per thread: Sessions are not thread-safe
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="openai")

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.mount("http://", DeadlineAdapter(pool_connections=1, pool_maxsize=1, max_retries=0))
            s.mount("https://", DeadlineAdapter(pool_connections=1, pool_maxsize=1, max_retries=0))
            if self._key:
                s.headers["Authorization"] = f"Bearer {self._key}"
            self._local.session = s
        return s

    def body(self, messages: Messages) -> dict[str, Any]:
        """The JSON request body for one conversation (what the server receives)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            **self.extra_body,
        }
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def _safe(self, text: str) -> str:
        text = " ".join(str(text).split())[:200]
        return text.replace(self._key, "***") if self._key else text

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), self.max_backoff_s)
            except ValueError:
                pass  # an HTTP date: use our own backoff
        return min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + random.random() / 2)

    def _once(self, body: dict[str, Any]) -> tuple[Completion | None, str, str | None]:
        """One HTTP attempt: ``(completion, "", None)``, or ``(None, reason, Retry-After or "")`` to retry."""
        timed_out = (
            f"timed out: no complete reply within {self.timeout_s:g} s ({self.timeout_name}, wall clock)"
        )
        try:
            with Deadline(self.timeout_s) as deadline:
                r = self._session().post(
                    self.url, json=body, timeout=(min(10.0, self.timeout_s), self.timeout_s)
                )
        except requests.Timeout:
            return None, timed_out, ""
        except requests.RequestException as e:  # ConnectionError, ChunkedEncodingError, ...
            if deadline.expired:  # our timer shut the socket: a slow (dripping) reply, not a dropped one
                return None, timed_out, ""
            return None, f"connection failed ({type(e).__name__})", ""
        if deadline.expired:
            return None, timed_out, ""
        if r.status_code != 200:
            reason = f"HTTP {r.status_code}: {self._safe(r.text)}"
            if r.status_code in RETRY_STATUS:
                return None, reason, r.headers.get("Retry-After", "")
            raise RequestFailed(reason)
        try:
            data = r.json()
            choice = data["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            return None, f"malformed reply ({type(e).__name__}: {self._safe(str(e))})", ""
        usage = data.get("usage") or {}
        return (
            Completion(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)),
            "",
            None,
        )

    def complete_one(self, messages: Messages) -> Completion:
        """One conversation, retried; ``RequestFailed`` with the last reason when it cannot succeed."""
        body = self.body(messages)
        reason = ""
        for attempt in range(self.max_retries + 1):
            done, reason, retry_after = self._once(body)
            if done is not None:
                return Completion(done.text, done.prompt_tokens, done.completion_tokens, attempt + 1)
            if attempt < self.max_retries:
                time.sleep(self._delay(attempt, retry_after))
        raise RequestFailed(f"{reason} (after {self.max_retries + 1} attempts)")

    def complete(self, conversations: list[Messages]) -> list[Completion | ItemError]:
        """Completions in order, at most ``concurrency`` requests in flight; failures become ``ItemError``."""

        def run(m: Messages) -> Completion | ItemError:
            try:
                return self.complete_one(m)
            except RequestFailed as e:
                return ItemError(f"{self.model_id}: {e}")
            except Exception as e:  # a bug or an odd library error: that row's, not the batch's
                return ItemError(f"{self.model_id}: {type(e).__name__}: {self._safe(str(e))}")

        return list(self._pool.map(run, conversations))

    def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)


@backends.register("llm", "openai", usage="openai:<model> (with base_url)")
def load_openai(
    spec: ModelSpec,
    device: torch.device,
    dtype: torch.dtype | None,
    *,
    base_url: str = "https://api.openai.com/v1",
    max_new_tokens: int = 300,
    generate_batch_size: int | None = None,  # local models' setting; requests go ``concurrency`` at a time
    **client: Any,
) -> OpenAIChatClient:
    """A client of ``spec.name`` at ``base_url``; nothing is loaded, and ``device`` / ``dtype`` are unused."""
    return OpenAIChatClient(base_url, spec.name, max_tokens=max_new_tokens, **client)
