"""The anthropic adapter against a local server speaking the Messages API."""

from __future__ import annotations

import threading

import pytest

from boards.agents.providers import (
    AnthropicProvider,
    ModelRequest,
    ModelResponse,
    ProviderError,
    get_provider,
)
from tests.boards.provider_server import DRIVERS, ProviderServer, call_provider

KEY_ENV = "KAIZEN_TEST_ANTHROPIC_KEY"


def _message(text: str = '{"verdict": "pass", "confidence": 0.91}') -> dict:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 20, "output_tokens": 9},
    }


def _error(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message}}


@pytest.fixture(params=DRIVERS)
def server(monkeypatch, request):
    monkeypatch.setenv(KEY_ENV, "sk-ant-test-456")
    with ProviderServer() as server:
        server.driver = request.param
        yield server


def _call(
    server: ProviderServer, prompt: str = "Check the part.", *, driver: str = "", **settings
) -> ModelResponse:
    settings = {"base_url": server.url, "api_key_env": KEY_ENV, **settings}
    return call_provider(
        AnthropicProvider(),
        ModelRequest(model="claude-test", prompt=prompt, input="part", settings=settings),
        driver or server.driver,
    )


def test_success_reports_usage_and_structured_confidence(server):
    server.then(200, _message())

    response = _call(server, max_tokens=300, temperature=0.1)

    assert response.text == '{"verdict": "pass", "confidence": 0.91}'
    assert (response.tokens_in, response.tokens_out) == (20, 9)
    # Anthropic gives no log-probabilities: the JSON field the prompt asked for is used.
    assert response.confidence == 0.91
    assert response.confidence_source == "structured"
    [request] = server.received
    assert request.path == "/v1/messages"
    # Older SDKs send the key as x-api-key, anthropic 2.x as a bearer token.
    sent = {
        request.headers.get("x-api-key"),
        request.headers.get("authorization", "").removeprefix("Bearer "),
    }
    assert "sk-ant-test-456" in sent
    assert request.body["messages"] == [{"role": "user", "content": "Check the part."}]
    assert request.body["max_tokens"] == 300
    assert request.body["temperature"] == 0.1


def test_a_confidence_outside_zero_to_one_is_ignored(server):
    server.then(200, _message('{"verdict": "pass", "confidence": 7}'))

    response = _call(server)

    assert response.confidence is None
    assert response.confidence_source == "none"


def test_429_waits_for_retry_after_then_succeeds(server):
    server.then(
        429,
        _error("rate_limit_error", "Number of requests has exceeded your rate limit"),
        headers={"Retry-After": "1"},
    )
    server.then(200, _message())

    response = _call(server)

    assert response.confidence == 0.91
    assert len(server.received) == 2
    # The SDK must honour the server's Retry-After rather than its own shorter backoff.
    assert server.received[1].arrived - server.received[0].arrived >= 1.0


def test_500_then_success_is_retried(server):
    server.then(500, _error("api_error", "Internal server error")).then(200, _message())

    response = _call(server)

    assert response.tokens_out == 9
    assert len(server.received) == 2


def test_500_until_retries_run_out_raises_the_servers_message(server):
    server.then(529, _error("overloaded_error", "Overloaded"))

    with pytest.raises(ProviderError, match=r"^anthropic 529: Overloaded$"):
        _call(server, max_retries=1)

    assert len(server.received) == 2


def test_a_slow_server_times_out(server):
    server.then(200, _message(), delay=3)

    with pytest.raises(ProviderError, match="timed out after 0.5s"):
        _call(server, timeout=0.5, max_retries=0)


def test_a_body_that_is_not_json_is_a_clear_error(server):
    server.then(200, "upstream connect error", headers={"Content-Type": "text/plain"})

    with pytest.raises(ProviderError, match="malformed response, the body is not JSON"):
        _call(server)


def test_a_body_without_content_is_a_clear_error(server):
    server.then(200, {"id": "msg_1", "type": "message", "usage": {}})

    with pytest.raises(ProviderError, match="malformed response, no content"):
        _call(server)


def test_401_fails_at_once_without_retrying(server):
    server.then(401, _error("authentication_error", "invalid x-api-key"))

    with pytest.raises(ProviderError, match=r"^anthropic 401: invalid x-api-key$"):
        _call(server)

    assert len(server.received) == 1


def test_a_missing_key_variable_is_named(server, monkeypatch):
    monkeypatch.delenv("KAIZEN_TEST_NO_SUCH_KEY", raising=False)

    with pytest.raises(ProviderError, match="KAIZEN_TEST_NO_SUCH_KEY"):
        _call(server, api_key_env="KAIZEN_TEST_NO_SUCH_KEY")

    assert server.received == []


def test_calls_in_flight_never_exceed_the_cap(server):
    server.then(200, _message(), delay=0.4)
    results: list[object] = []

    def call() -> None:
        try:
            results.append(_call(server, max_in_flight=2, timeout=20))
        except ProviderError as err:
            results.append(err)

    threads = [threading.Thread(target=call) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [type(r) for r in results] == [ModelResponse] * 5
    assert len(server.received) == 5
    assert server.max_in_flight == 2


def test_get_provider_returns_the_anthropic_adapter():
    assert isinstance(get_provider("anthropic"), AnthropicProvider)
