"""Async HTTP clients for the LLM service and the 3D service.

Each client holds its service's root (`Settings.llm_root`, `Settings.trellis_root`: the address without `/v1`) and
adds every path in full (`/v1/chat/completions`, `/tokenize`, `/v1/jobs`), so one convention covers every URL.
Every call goes through `_send` (or, for the LLM's streamed answers, `LLMClient._stream`), which retries 429/503
answers (honouring `Retry-After`, capped) and connection failures, and turns every failure into a `ServiceError`
whose message a user can read. Nothing here knows about Gradio.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from config import Settings
from studio.budget import NoRoom, TokenCounter, context_exceeded, fit

RETRY_STATUSES = (429, 503)
MIN_ANSWER_TOKENS = 64  # fewer answer tokens than this and a chat reply is not worth asking for
# 503s that waiting cannot fix (a component switched off by configuration): answered at once, not retried.
PERMANENT_CODES = {"imagegen_off"}
ServiceState = Literal["ready", "loading", "busy", "down"]
HealthFailure = Literal["", "timeout", "unreachable"]
HEALTH_TIMEOUT_S = 5.0  # a health check that takes longer counts as a slow answer (busy), not as an answer


class ServiceError(Exception):
    """A failed service call, with a message meant for the user."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class ContentFiltered(ServiceError):
    """The service's safety classifier refused the input; the message says why."""


@dataclass
class Health:
    state: ServiceState
    message: str
    queue_depth: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    failure: HealthFailure = ""  # set when the check itself failed: no answer in time, or no connection

    @property
    def usable(self) -> bool:
        """Actions may be tried: the service is ready, or was and only answers slowly now."""
        return self.state in ("ready", "busy")


def _retry_after(response: httpx.Response, attempt: int, cap: float) -> float:
    try:
        wait = float(response.headers.get("retry-after", ""))
    except ValueError:
        wait = 2.0**attempt
    return max(0.0, min(wait, cap))


def _permanent(response: httpx.Response) -> bool:
    return _error_message(response)[1] in PERMANENT_CODES


def _error_message(response: httpx.Response) -> tuple[str, str | None]:
    """The service's own message from the OpenAI error envelope, else a short description."""
    try:
        err = response.json().get("error") or {}
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"]), err.get("code")
        detail = response.json().get("message") or response.json().get("detail")
        if detail:
            return str(detail), None
    except (ValueError, AttributeError):
        pass
    return f"HTTP {response.status_code}", None


class _Service:
    """Shared request machinery: one pooled httpx client, retries, friendly errors."""

    label = "service"
    setting = "the base URL setting"  # where users set the address, named when it looks wrong
    health_path = "/v1/health/ready"

    def __init__(self, root: str, settings: Settings, client: httpx.AsyncClient) -> None:
        self.root = root.rstrip("/")
        self.settings = settings
        self.http = client
        key = settings.api_key.get_secret_value() if settings.api_key else None
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def _raise_for(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        message, code = _error_message(response)
        error = ContentFiltered if code == "content_filtered" else ServiceError
        raise error(f"The {self.label} said: {message}", status=response.status_code, code=code)

    async def _send(self, method: str, path: str, *, retries: int | None = None, **kwargs: Any) -> httpx.Response:
        attempts = (self.settings.ui_http_retries if retries is None else retries) + 1
        cap = self.settings.ui_retry_max_wait_s
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self.http.request(method, self.root + path, headers=self.headers, **kwargs)
            except httpx.TimeoutException as e:
                raise ServiceError(f"The {self.label} did not answer in time; please try again.") from e
            except httpx.TransportError as e:
                if last:
                    raise ServiceError(f"The {self.label} is not reachable at {self.root}; is it running?") from e
                await asyncio.sleep(min(2.0**attempt, cap))
                continue
            if response.status_code in RETRY_STATUSES and not last and not _permanent(response):
                await asyncio.sleep(_retry_after(response, attempt, cap))
                continue
            self._raise_for(response)
            return response
        raise AssertionError("unreachable")

    async def health(self) -> Health:
        """Ready/loading/down with the service's own reason, from one check; never raises. A check that gets no
        answer in time says "busy" and one that cannot connect says "down", each marked as a failed check, so that
        `HealthWatch` can tell a service under load from one that is gone."""
        try:
            r = await self.http.get(self.root + self.health_path, headers=self.headers, timeout=HEALTH_TIMEOUT_S)
        except httpx.TimeoutException:
            return Health("busy", f"no answer within {HEALTH_TIMEOUT_S:g} s", failure="timeout")
        except httpx.HTTPError:
            return Health("down", f"not reachable at {self.root}", failure="unreachable")
        if r.status_code == 404:  # every service of ours has this path: something else answers at this address
            return await self._without_health_route()
        try:
            body = r.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        message = str(body.get("message") or body.get("status") or f"HTTP {r.status_code}")
        depth = body.get("queue_depth")
        state: ServiceState = "ready" if r.status_code == 200 else "loading" if r.status_code == 503 else "down"
        if str(body.get("status", "")).lower() in ("error", "failed", "down"):
            state = "down"  # live but a model failed to load: waiting will not help, the reason says what to fix
        return Health(state, message, depth if isinstance(depth, int) else None, body)

    async def _without_health_route(self) -> Health:
        """A server without our health route: wrong address, unless it is another kind of server we can use."""
        return Health("down", self._wrong_address())

    def _wrong_address(self) -> str:
        return (
            f"{self.root} answered 404 for {self.health_path}: is {self.setting} the {self.label}'s address "
            "(http://host:port, with or without /v1)?"
        )


class PromptTooLong(ServiceError):
    """The user's message, with the system prompt, leaves too little of the model's context for an answer."""


class LLMClient(_Service):
    """OpenAI-compatible chat completions: streamed text and schema-constrained JSON.

    Every call is streamed (the timeout is the longest silence between two chunks, not the whole answer) and asks
    for `max_tokens = min(wanted, context - prompt tokens)` (see `studio/budget.py`). The client remembers whether
    the server counts tokens (`/tokenize`) and what context it reported, and asks again after any failed call.
    """

    label = "LLM service"
    setting = "LLM_BASE_URL"

    async def _without_health_route(self) -> Health:
        """Other OpenAI-compatible servers (vLLM serves `/health`, hosted APIs none) have no NIM health route; one
        that lists its models at `/v1/models` can answer, so it counts as ready."""
        try:
            r = await self.http.get(self.root + "/v1/models", headers=self.headers, timeout=HEALTH_TIMEOUT_S)
        except httpx.HTTPError:
            r = None
        if r is not None and r.status_code == 200:
            return Health("ready", f"ready ({self.root} has no {self.health_path}; /v1/models answers)")
        return Health("down", self._wrong_address())

    def __init__(self, root: str, settings: Settings, client: httpx.AsyncClient) -> None:
        super().__init__(root, settings, client)
        self.counter = TokenCounter(
            client, self.root, self.headers, settings.llm_served_name, settings.ui_http_timeout_s
        )

    def _body(self, messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
        return {"model": self.settings.llm_served_name, "messages": messages, **extra}

    async def stream_chat(
        self, messages: list[dict[str, str]], *, max_tokens: int, min_tokens: int = MIN_ANSWER_TOKENS
    ) -> AsyncIterator[str]:
        """Yield content deltas as they arrive (SSE), ending at `data: [DONE]`."""
        extra = {"temperature": self.settings.ui_chat_temperature}
        async for delta in self._generate(messages, extra, wanted=max_tokens, min_tokens=min_tokens):
            yield delta

    async def stream_json(
        self,
        messages: list[dict[str, str]],
        schema: dict[str, Any],
        name: str,
        *,
        max_tokens: int,
        min_tokens: int = MIN_ANSWER_TOKENS,
    ) -> AsyncIterator[str]:
        """One `json_schema` call, its content deltas as they arrive; the caller validates the joined text. Closing
        the iterator early closes the connection, which tells the server to stop generating."""
        fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
        extra = {"temperature": self.settings.ui_plan_temperature, "response_format": fmt}
        async for delta in self._generate(messages, extra, wanted=max_tokens, min_tokens=min_tokens):
            yield delta

    # --- one call ------------------------------------------------------------------------------------------
    async def _generate(
        self, messages: list[dict[str, str]], extra: dict[str, Any], *, wanted: int, min_tokens: int
    ) -> AsyncIterator[str]:
        try:
            messages, max_tokens = await fit(messages, self.counter.count, wanted, min(min_tokens, wanted))
        except NoRoom as e:
            raise PromptTooLong(
                "Your message is too long for the language model: with what the studio sends along (its "
                f"instructions and any current plan) it takes {e.count.prompt_tokens} of the model's "
                f"{e.count.context} tokens and leaves too little room for an answer. Please shorten it.",
                status=400,
                code="context_length_exceeded",
            ) from None
        body = self._body(messages, stream=True, **extra)
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        started = False
        try:
            async for delta in self._stream(body):
                started = True
                yield delta
        except ServiceError as e:
            self.counter.forget()  # the server may have changed (restarted, other model): count afresh next time
            if started or "max_tokens" not in body or not context_exceeded(e.status, e.code, e.message):
                raise
            del body["max_tokens"]  # our numbers were wrong or missing: let the server pick the answer's length
            async for delta in self._stream(body):
                yield delta

    async def _stream(self, body: dict[str, Any]) -> AsyncIterator[str]:
        """One streamed request with `_send`'s retries until its first chunk: 429/503 honouring Retry-After, and a
        connection that fails before any of the answer arrived (refused, or accepted and dropped unanswered, as a
        proxy in front of a service that is still starting does). Never after a chunk: that would repeat text. The
        timeout is per read: a slow but steady answer (a long plan on a CPU) is never cut off."""
        timeout = httpx.Timeout(self.settings.ui_http_timeout_s, connect=5.0)
        retries, cap = self.settings.ui_http_retries, self.settings.ui_retry_max_wait_s
        for attempt in range(retries + 1):
            last, started = attempt == retries, False
            try:
                async with self.http.stream(
                    "POST", self.root + "/v1/chat/completions", json=body, headers=self.headers, timeout=timeout
                ) as r:
                    if r.status_code in RETRY_STATUSES and not last:
                        await asyncio.sleep(_retry_after(r, attempt, cap))
                        continue
                    if r.status_code >= 400:
                        await r.aread()
                        self._raise_for(r)
                    async for delta in _sse_deltas(r):
                        started = True
                        yield delta
                    return
            except httpx.TimeoutException as e:
                raise ServiceError(f"The {self.label} did not answer in time; please try again.") from e
            except httpx.TransportError as e:
                if started or last:
                    raise ServiceError(f"The {self.label} is not reachable at {self.root}; is it running?") from e
                await asyncio.sleep(min(2.0**attempt, cap))


async def _sse_deltas(response: httpx.Response) -> AsyncIterator[str]:
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        if "error" in chunk:
            raise ServiceError(f"The LLM service said: {chunk['error'].get('message', 'error')}")
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content")
            if text:
                yield text


@dataclass
class ReceivedImage:
    """A concept image as the studio received it from the 3D service: decoded PNG bytes and the seed that drew it."""

    png: bytes
    seed: int


class TrellisClient(_Service):
    """The 3D service: moderation, text-to-image, and the asynchronous image-to-3D jobs API."""

    label = "3D service"
    setting = "TRELLIS_BASE_URL"

    async def moderate(self, text: str) -> bool:
        """True when the service's prompt classifier flags `text`."""
        r = await self._send("POST", "/v1/moderations", json={"input": text}, timeout=self.settings.ui_http_timeout_s)
        results = r.json().get("results") or [{}]
        return bool(results[0].get("flagged"))

    async def generate_images(self, prompt: str, *, n: int, seed: int, size: int) -> list[ReceivedImage]:
        body = {"prompt": prompt, "n": n, "size": f"{size}x{size}", "response_format": "b64_json", "seed": seed}
        r = await self._send("POST", "/v1/images/generations", json=body, timeout=self.settings.ui_http_timeout_s)
        try:
            return [ReceivedImage(base64.b64decode(d["b64_json"]), int(d["seed"])) for d in r.json()["data"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ServiceError("The 3D service sent images the studio cannot read.") from e

    async def submit_job(self, png: bytes, params: dict[str, Any]) -> dict[str, Any]:
        image = "data:image/png;base64," + base64.b64encode(png).decode()
        r = await self._send(
            "POST", "/v1/jobs", json={"image": image, **params}, timeout=self.settings.ui_http_timeout_s
        )
        return dict(r.json())

    async def job(self, job_id: str) -> dict[str, Any]:
        r = await self._send("GET", f"/v1/jobs/{job_id}", timeout=self.settings.ui_http_timeout_s)
        return dict(r.json())

    async def result(self, job_id: str) -> tuple[bytes, dict[str, str]]:
        r = await self._send("GET", f"/v1/jobs/{job_id}/result", timeout=self.settings.ui_http_timeout_s)
        return r.content, {"seed": r.headers.get("x-seed", ""), "backend": r.headers.get("x-backend", "")}

    async def cancel(self, job_id: str) -> None:
        try:
            await self._send("DELETE", f"/v1/jobs/{job_id}", retries=0, timeout=self.settings.ui_http_timeout_s)
        except ServiceError as e:
            if e.status != 404 and e.status != 409:  # already gone or already finished: nothing to cancel
                raise


class Services:
    """Both clients over one connection pool; create one per process, inside the event loop that uses it."""

    def __init__(self, settings: Settings) -> None:
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(settings.ui_http_timeout_s, connect=5.0))
        self.llm = LLMClient(settings.llm_root, settings, self.http)
        self.trellis = TrellisClient(settings.trellis_root, settings, self.http)

    async def aclose(self) -> None:
        await self.http.aclose()
