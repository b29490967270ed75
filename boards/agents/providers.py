"""Model providers. The foundation ships the offline ``simulated`` provider (in
``boards.agents.simulated``), the model of the demo and the tests; ``openai`` (any OpenAI-compatible server) and
``anthropic`` call real models through their official SDKs, behind the same interface
(``boards.agents.provider_types``).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import os
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from boards.agents.provider_types import ModelRequest, ModelResponse, Provider, ProviderError
from boards.agents.simulated import SimulatedProvider

__all__ = [
    "PROVIDER_NAMES",
    "AnthropicProvider",
    "ModelRequest",
    "ModelResponse",
    "OpenAIProvider",
    "Provider",
    "ProviderError",
    "get_provider",
    "structured_confidence",
]


# --- Real providers -----------------------------------------------------------------
#
# Retries: both SDKs already do what we need, so we lean on them (checked in the installed
# sources, openai 3.57 and anthropic 2.14, ``_base_client.py``): ``_should_retry`` retries
# 408, 409, 429 and every 5xx and never another 4xx (400/401/403/404/422 fail at once);
# connection errors and timeouts are retried too; ``_calculate_retry_timeout`` honours
# ``retry-after-ms`` and ``Retry-After`` (seconds or an HTTP date, up to two minutes),
# and otherwise backs off exponentially from 0.5 s up to 8 s, minus 0-25 % jitter.
# 409 (a lock timeout on OpenAI's side) is also retried: a transient server state.

DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_IN_FLIGHT = 64

_slots_lock = threading.Lock()
_slots: dict[tuple[str, str], InFlight] = {}

# A last line such as "Confidence: 0.83" (what a prompt asking for it usually gets back).
_CONFIDENCE_LINE = re.compile(r"^\s*\**confidence\**\s*[:=]\s*([01](?:\.\d+)?|\.\d+)\s*$", re.I)


class _Waiter:
    __slots__ = ("granted", "wake")

    def __init__(self, wake: Callable[[], object]) -> None:
        self.granted = False
        self.wake = wake


def _grant(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class InFlight:
    """At most ``size`` calls at once, shared by threads (``acquire``) and event
    loops (``aacquire``) alike, first come first served: the worker runs most
    cascades on its event loop and custom agents on threads, and both call the
    same servers. A released slot goes straight to the longest waiter."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = size
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()

    def _take(self) -> bool:
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    def _gave_up(self, waiter: _Waiter) -> bool:
        """After a wait ended without a wake: whether the slot was granted after all."""
        with self._lock:
            if waiter.granted:
                return True
            self._waiters.remove(waiter)
            return False

    def acquire(self, timeout: float | None) -> bool:
        with self._lock:
            if self._take():
                return True
            event = threading.Event()
            waiter = _Waiter(event.set)
            self._waiters.append(waiter)
        try:
            woken = event.wait(timeout)
        except BaseException:  # interrupted (KeyboardInterrupt): leave no slot behind
            if self._gave_up(waiter):
                self.release()
            raise
        return woken or self._gave_up(waiter)

    async def aacquire(self, timeout: float | None) -> bool:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._take():
                return True
            future = loop.create_future()
            waiter = _Waiter(lambda: loop.call_soon_threadsafe(_grant, future))
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return self._gave_up(waiter)
        except asyncio.CancelledError:
            if self._gave_up(waiter):
                self.release()
            raise
        return True

    def release(self) -> None:
        while True:
            with self._lock:
                if not self._waiters:
                    if self._free >= self.size:
                        raise ValueError("InFlight released more times than acquired")
                    self._free += 1
                    return
                waiter = self._waiters.popleft()
                waiter.granted = True
            try:
                waiter.wake()
                return
            except RuntimeError:  # its event loop has closed: the slot goes to the next
                continue


def _in_flight_slot(provider: str, base_url: str, size: int) -> InFlight:
    """One process-wide cap per (provider, server): every worker thread and the
    event loop calling the same server share it. The first caller's size wins, so a
    later, larger setting cannot widen a cap that calls are already waiting on."""
    with _slots_lock:
        key = (provider, base_url)
        if key not in _slots:
            _slots[key] = InFlight(size)
        return _slots[key]


# The SDKs' clients, kept for the process's life, one per configuration: making
# one (its TLS context, its connection pool) cost 24 ms of CPU here, more than
# a call's own work, and a kept client reuses its connections. A synchronous
# client is shared by the threads (the SDKs' clients are thread-safe) and made
# afresh in a forked child; an asynchronous one belongs to its event loop.
_sync_clients: dict[tuple, Any] = {}
_sync_clients_lock = threading.Lock()
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, Any]] = (
    weakref.WeakKeyDictionary()
)


# A kept connection idle longer than this is not reused: servers close idle
# connections after 5 s (uvicorn's default: vLLM, many OpenAI-compatible proxies),
# and a request sent on one as it closes fails (a connection error, which with
# max_retries 0 costs the tier its answer). The SDKs keep them for 5 s.
KEEPALIVE_SECONDS = 2.0


def _http_client(sdk: Any, *, asynchronous: bool) -> Any:
    """The SDK's default HTTP client, its idle connections kept KEEPALIVE_SECONDS."""
    limits = sdk.DEFAULT_CONNECTION_LIMITS
    kept = type(limits)(
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=KEEPALIVE_SECONDS,
    )
    return (sdk.DefaultAsyncHttpxClient if asynchronous else sdk.DefaultHttpxClient)(limits=kept)


def _forget_clients() -> None:
    """In a forked child: the parent's clients (and a lock a parent thread may
    have held at the fork) are not the child's."""
    global _sync_clients_lock
    _sync_clients_lock = threading.Lock()
    _sync_clients.clear()


os.register_at_fork(after_in_child=_forget_clients)


def _sync_client(sdk: Any, client_class: str, options: dict[str, Any]) -> Any:
    key = (sdk.__name__, client_class, *sorted(options.items()))  # a forked child starts with none
    with _sync_clients_lock:
        if key not in _sync_clients:
            _sync_clients[key] = getattr(sdk, client_class)(
                http_client=_http_client(sdk, asynchronous=False), **options
            )
        return _sync_clients[key]


def _async_client(sdk: Any, client_class: str, options: dict[str, Any]) -> Any:
    clients = _async_clients.setdefault(asyncio.get_running_loop(), {})
    key = (sdk.__name__, client_class, *sorted(options.items()))
    if key not in clients:
        clients[key] = getattr(sdk, f"Async{client_class}")(
            http_client=_http_client(sdk, asynchronous=True), **options
        )
    return clients[key]


def _setting_number(settings: dict, key: str, default: float | None, *, integer: bool = False) -> Any:
    value = settings.get(key, default)
    if value is None:
        return None
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        kind = "an integer" if integer else "a number"
        raise ProviderError(f"setting {key!r} must be {kind}, got {value!r}") from None
    if number < 0 or (not integer and not math.isfinite(number)):
        raise ProviderError(f"setting {key!r} must be a non-negative number, got {value!r}")
    return number


def _api_key(settings: dict, default_env: str) -> str:
    env_name = settings.get("api_key_env") or default_env
    key = os.environ.get(str(env_name))
    if not key:
        raise ProviderError(
            f"API key variable {env_name} is not set in the environment: "
            f"export {env_name} on the workers, or point api_key_env at the variable that holds the key"
        )
    return key


def structured_confidence(text: str) -> float | None:
    """The confidence the prompt asked the model to state: a JSON object with a numeric
    ``confidence`` in [0, 1], or a final line ``Confidence: 0.83``. None otherwise."""
    stripped = text.strip()
    try:
        data = json.loads(stripped)
    except ValueError:
        data = None
    if isinstance(data, dict):
        value = data.get("confidence")
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
            return float(value)
        return None
    lines = stripped.splitlines()
    if lines:
        match = _CONFIDENCE_LINE.match(lines[-1])
        if match:
            value = float(match.group(1))
            if 0 <= value <= 1:
                return value
    return None


def _error_message(body: object, fallback: str) -> str:
    """The provider's own words: OpenAI-style ``{"error": {"message": ...}}`` (the SDK
    may already have unwrapped "error"), Anthropic's ``{"type": "error", "error": {...}}``,
    or a plain text body."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str):
            return inner
        if isinstance(body.get("message"), str):
            return body["message"]
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return fallback


@dataclass(frozen=True)
class _Connection:
    """A call's settings, checked (``_SDKProvider._connection``)."""

    settings: dict
    base_url: str
    timeout: float
    max_retries: int
    max_in_flight: int
    api_key: str

    def client_options(self) -> dict[str, Any]:
        """What the SDK's client is made with (one kept per distinct set)."""
        return {
            "api_key": self.api_key,
            "base_url": self.base_url,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
        }


class _SDKProvider:
    """What the OpenAI and Anthropic adapters share: settings, key, in-flight cap,
    the SDK's clients, SDK error translation, timing and confidence. Subclasses
    name their SDK and client, build their protocol's parameters and read its body."""

    name: str = ""
    simulated = False
    default_base_url: str = ""
    default_key_env: str = ""
    # The SDK's module and client class (its asynchronous one is "Async" + this).
    sdk_module: str = ""
    client_class: str = ""

    def _connection(self, request: ModelRequest) -> _Connection:
        settings = request.settings or {}
        max_in_flight = _setting_number(settings, "max_in_flight", DEFAULT_MAX_IN_FLIGHT, integer=True)
        if max_in_flight < 1:
            raise ProviderError(f"setting 'max_in_flight' must be at least 1, got {max_in_flight}")
        return _Connection(
            settings=settings,
            base_url=str(settings.get("base_url") or self.default_base_url).rstrip("/"),
            timeout=_setting_number(settings, "timeout", DEFAULT_TIMEOUT),
            max_retries=_setting_number(settings, "max_retries", DEFAULT_MAX_RETRIES, integer=True),
            max_in_flight=max_in_flight,
            api_key=_api_key(settings, self.default_key_env),
        )

    def _slot(self, connection: _Connection) -> InFlight:
        return _in_flight_slot(self.name, connection.base_url, connection.max_in_flight)

    def _no_slot(self, connection: _Connection) -> ProviderError:
        return ProviderError(
            f"{self.name}: timed out after {connection.timeout:g}s waiting for one of "
            f"{connection.max_in_flight} in-flight slots for {connection.base_url}"
        )

    def complete(self, request: ModelRequest) -> ModelResponse:
        connection = self._connection(request)
        slot = self._slot(connection)
        # Waiting for a slot counts against the same timeout as the call, so a jammed
        # server surfaces as an error rather than a worker parked forever.
        if not slot.acquire(connection.timeout):
            raise self._no_slot(connection)
        try:
            started = time.perf_counter()
            body = self._call(request, connection)
            latency_ms = (time.perf_counter() - started) * 1000
        finally:
            slot.release()
        return self._response(body, latency_ms)

    async def acomplete(self, request: ModelRequest) -> ModelResponse:
        """``complete`` on an event loop, through the SDK's asynchronous client."""
        connection = self._connection(request)
        slot = self._slot(connection)
        if not await slot.aacquire(connection.timeout):
            raise self._no_slot(connection)
        try:
            started = time.perf_counter()
            body = await self._acall(request, connection)
            latency_ms = (time.perf_counter() - started) * 1000
        finally:
            slot.release()
        return self._response(body, latency_ms)

    def _response(self, body: dict, latency_ms: float) -> ModelResponse:
        text, tokens_in, tokens_out, logprobs = self._read(body)
        if logprobs:
            confidence: float | None = round(math.exp(sum(logprobs) / len(logprobs)), 6)
            source = "logprobs"
        else:
            confidence = structured_confidence(text)
            source = "structured" if confidence is not None else "none"
        return ModelResponse(
            text=text,
            confidence=confidence,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            latency_ms=round(latency_ms, 3),
            confidence_source=source,
        )

    def _create(self, client: Any) -> Callable[..., Any]:
        """The client's raw-response call."""
        raise NotImplementedError

    def _params(self, request: ModelRequest, settings: dict) -> dict[str, Any]:
        raise NotImplementedError

    def _call(self, request: ModelRequest, connection: _Connection) -> dict:
        sdk = importlib.import_module(self.sdk_module)
        params = self._params(request, connection.settings)
        client = _sync_client(sdk, self.client_class, connection.client_options())
        return self._translate(sdk, lambda: self._create(client)(**params), connection.timeout)

    async def _acall(self, request: ModelRequest, connection: _Connection) -> dict:
        sdk = importlib.import_module(self.sdk_module)
        params = self._params(request, connection.settings)
        client = _async_client(sdk, self.client_class, connection.client_options())
        return await self._atranslate(sdk, lambda: self._create(client)(**params), connection.timeout)

    def _read(self, body: dict) -> tuple[str, int, int, list[float]]:
        raise NotImplementedError

    def _translate(self, sdk: Any, call: Callable[[], Any], timeout: float) -> dict:
        """Runs ``call`` (which returns the SDK's raw response), turns every SDK failure
        into a ProviderError with the provider's own message and status, and parses the
        body ourselves so that a malformed one gets a clear message."""
        try:
            raw = call()
        except sdk.APIError as err:
            raise self._error(sdk, err, timeout) from None
        return self._body(raw.http_response.text)

    async def _atranslate(self, sdk: Any, call: Callable[[], Awaitable[Any]], timeout: float) -> dict:
        """``_translate`` for the SDK's asynchronous client."""
        try:
            raw = await call()
        except sdk.APIError as err:
            raise self._error(sdk, err, timeout) from None
        return self._body(raw.http_response.text)

    def _error(self, sdk: Any, err: Any, timeout: float) -> ProviderError:
        if isinstance(err, sdk.APITimeoutError):
            return ProviderError(f"{self.name}: request timed out after {timeout:g}s", error_type="timeout")
        if isinstance(err, sdk.APIConnectionError):
            return ProviderError(
                f"{self.name}: connection error: {err.__cause__ or err}", error_type="connection_error"
            )
        if isinstance(err, sdk.APIStatusError):
            message = _error_message(err.body, err.response.text or err.message)
            return ProviderError(f"{self.name} {err.status_code}: {message}", error_type=str(err.status_code))
        return ProviderError(f"{self.name}: {err.message}", error_type="api_error")

    def _body(self, text: str) -> dict:
        try:
            body = json.loads(text)
        except ValueError:
            raise ProviderError(
                f"{self.name}: malformed response, the body is not JSON: {text[:200]!r}",
                error_type="malformed_response",
            ) from None
        if not isinstance(body, dict):
            raise ProviderError(
                f"{self.name}: malformed response, expected a JSON object: {text[:200]!r}",
                error_type="malformed_response",
            )
        return body


def _usage_int(usage: object, key: str) -> int:
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and value >= 0 else 0


class OpenAIProvider(_SDKProvider):
    """Chat completions on any OpenAI-compatible server (OpenAI, Ollama, vLLM, the
    llama.cpp server): ``base_url`` is the server's ``/v1`` root."""

    name = "openai"
    default_base_url = "https://api.openai.com/v1"
    default_key_env = "OPENAI_API_KEY"
    sdk_module = "openai"
    client_class = "OpenAI"

    def _create(self, client: Any) -> Callable[..., Any]:
        return client.chat.completions.with_raw_response.create

    def _params(self, request: ModelRequest, settings: dict) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": "user", "content": request.prompt}],
        }
        for key in ("temperature", "top_p"):
            if settings.get(key) is not None:
                params[key] = _setting_number(settings, key, None)
        if settings.get("max_tokens") is not None:
            params["max_tokens"] = _setting_number(settings, "max_tokens", None, integer=True)
        if settings.get("logprobs"):
            params["logprobs"] = True
        return params

    def _read(self, body: dict) -> tuple[str, int, int, list[float]]:
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ProviderError(f"openai: malformed response, no choices in {json.dumps(body)[:200]}")
        choice = choices[0]
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        if not isinstance(text, str):
            raise ProviderError(
                f"openai: malformed response, the first choice has no message content: {choice}"
            )
        usage = body.get("usage")
        logprobs: list[float] = []
        content = (
            (choice.get("logprobs") or {}).get("content")
            if isinstance(choice.get("logprobs"), dict)
            else None
        )
        if isinstance(content, list):
            logprobs = [
                float(token["logprob"])
                for token in content
                if isinstance(token, dict) and isinstance(token.get("logprob"), int | float)
            ]
        return text, _usage_int(usage, "prompt_tokens"), _usage_int(usage, "completion_tokens"), logprobs


class AnthropicProvider(_SDKProvider):
    """The Messages API. Anthropic returns no log-probabilities, so confidence comes
    from a structured field the prompt asks for."""

    name = "anthropic"
    default_base_url = "https://api.anthropic.com"
    default_key_env = "ANTHROPIC_API_KEY"
    sdk_module = "anthropic"
    client_class = "Anthropic"
    # The Messages API requires max_tokens; this bounds an answer when the agent sets none.
    default_max_tokens = 1024

    def _create(self, client: Any) -> Callable[..., Any]:
        return client.messages.with_raw_response.create

    def _params(self, request: ModelRequest, settings: dict) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": "user", "content": request.prompt}],
            "max_tokens": _setting_number(settings, "max_tokens", self.default_max_tokens, integer=True),
        }
        # anthropic 2.x dropped temperature/top_p from ``messages.create``'s signature, so
        # they travel in the body as older SDKs sent them; if the model refuses them, its
        # own 400 message reaches the task.
        sampling = {
            key: _setting_number(settings, key, None)
            for key in ("temperature", "top_p")
            if settings.get(key) is not None
        }
        if sampling:
            params["extra_body"] = sampling
        return params

    def _read(self, body: dict) -> tuple[str, int, int, list[float]]:
        content = body.get("content")
        if not isinstance(content, list):
            raise ProviderError(f"anthropic: malformed response, no content in {json.dumps(body)[:200]}")
        texts = [
            block["text"]
            for block in content
            if isinstance(block, dict) and isinstance(block.get("text"), str)
        ]
        if not texts:
            raise ProviderError(f"anthropic: malformed response, no text block in {json.dumps(body)[:200]}")
        usage = body.get("usage")
        return "".join(texts), _usage_int(usage, "input_tokens"), _usage_int(usage, "output_tokens"), []


PROVIDER_NAMES = ("simulated", "openai", "anthropic")


def get_provider(name: str) -> Provider:
    from django.conf import settings

    if name == "simulated":
        return SimulatedProvider(latency_scale=settings.KAIZEN_SIMULATED_LATENCY_SCALE)
    if name == "openai":
        return OpenAIProvider()
    if name == "anthropic":
        return AnthropicProvider()
    raise ProviderError(f"unknown provider {name!r} (available: {', '.join(PROVIDER_NAMES)})")
