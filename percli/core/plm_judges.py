"""LLM judges for PLM-VideoBench's SGQA, RCap and RDCap (:mod:`percli.core.plm_videobench` asks them).

* :class:`EndpointJudge`: an OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp's server, a cloud
  provider) called with the standard library's ``urllib``, as lmms-eval calls its judge: the system and user
  messages of the judge prompt, ``temperature`` 0 and ``max_tokens`` 256 (``eval_utils.call_judge_with_retry``).
  Rate limits (HTTP 429), server errors (5xx) and timeouts are retried with exponential backoff; anything else,
  and a server that cannot be reached, raises :class:`JudgeUnavailable` naming the URL.
* :class:`TextJudge`: any ``complete(prompt text) -> reply`` function, e.g. a PerceptionLM used text-only (the
  judge prompt's system and user parts joined into one text).

Both count their calls (``calls``) and describe themselves for ``summary.json`` (:meth:`describe`).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

JUDGE_MAX_TOKENS = 256  # lmms-eval's call_judge_with_retry(max_tokens=256)
JUDGE_TEMPERATURE = 0.0
RETRIED_STATUS = (429, 500, 502, 503, 504)


class JudgeUnavailable(RuntimeError):
    """The judge cannot answer (unreachable, refused the request, or replied with something that is no completion)."""


def chat_completions_url(url: str) -> str:
    """The ``.../chat/completions`` URL of an endpoint given as a base URL (``http://host:8000/v1``) or in full."""
    url = url.strip().rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


class EndpointJudge:
    """An OpenAI-compatible chat-completions judge, called with chat messages (``messages=True`` for the scorers).

    Args:
        url: The endpoint's base URL (``http://localhost:8000/v1``) or its ``/chat/completions`` URL.
        model: The model name the server knows (``--served-model-name`` of vLLM).
        api_key: Sent as ``Authorization: Bearer <key>`` when given.
        max_tokens / temperature: Of every request (the benchmark's 256 and 0).
        timeout: Seconds to wait for one reply.
        retries: Retries of a rate-limited, failed (5xx) or timed-out request, after 1, 2, 4, ... x `backoff` s.
    """

    messages = True

    def __init__(self, url: str, model: str, api_key: str | None = None, max_tokens: int = JUDGE_MAX_TOKENS,
                 temperature: float = JUDGE_TEMPERATURE, timeout: float = 120.0, retries: int = 5,
                 backoff: float = 1.0):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"judge endpoint {url!r}: give an http:// or https:// URL, e.g. http://localhost:8000/v1")
        self.url, self.model, self.api_key = chat_completions_url(url), model, api_key
        self.max_tokens, self.temperature, self.timeout = max_tokens, temperature, timeout
        self.retries, self.backoff = retries, backoff
        self.calls = 0

    def _request(self, messages: list[dict[str, str]]) -> urllib.request.Request:
        body = {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")

    def __call__(self, messages: list[dict[str, str]]) -> str:
        self.calls += 1
        for attempt in range(self.retries + 1):
            retry = attempt < self.retries
            try:
                with urllib.request.urlopen(self._request(messages), timeout=self.timeout) as response:
                    return self._content(response.read())
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace").strip()
                if not (retry and e.code in RETRIED_STATUS):
                    raise JudgeUnavailable(f"judge endpoint {self.url} answered HTTP {e.code} {e.reason}: "
                                           f"{detail or 'no detail'} (model {self.model!r})") from None
            except TimeoutError:
                if not retry:
                    raise JudgeUnavailable(f"judge endpoint {self.url} did not answer within {self.timeout:g} s "
                                           f"({self.retries + 1} tries)") from None
            except (urllib.error.URLError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                raise JudgeUnavailable(f"cannot reach the judge endpoint {self.url} ({reason}); start the server "
                                       "(e.g. `vllm serve MODEL`) or fix --judge-endpoint") from None
            time.sleep(self.backoff * 2 ** attempt)
        raise AssertionError("unreachable")

    def _content(self, raw: bytes) -> str:
        try:
            reply = json.loads(raw)
            content = reply["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeUnavailable(f"judge endpoint {self.url} replied with no chat completion: "
                                   f"{raw[:200].decode('utf-8', 'replace')!r}") from None
        return content if isinstance(content, str) else ""  # null content: an empty reply, parsed as nothing

    def describe(self) -> dict[str, Any]:
        return {"kind": "endpoint", "url": self.url, "model": self.model, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "calls": self.calls}


class TextJudge:
    """A judge from a ``complete(prompt text) -> reply text`` function (``messages=False`` for the scorers)."""

    messages = False

    def __init__(self, complete: Callable[[str], str], name: str, **details: Any):
        self.complete, self.name, self.details = complete, name, details
        self.calls = 0

    def __call__(self, prompt: str) -> str:
        self.calls += 1
        return self.complete(prompt)

    def describe(self) -> dict[str, Any]:
        return {"kind": "text", "name": self.name, **self.details, "calls": self.calls}
