"""The openai adapter against a local server speaking the chat completions protocol."""

from __future__ import annotations

import email.utils
import math
import threading
import time

import pytest

from boards.agents.providers import ModelRequest, ModelResponse, OpenAIProvider, ProviderError, get_provider
from tests.boards.provider_server import DRIVERS, ProviderServer, call_provider

KEY_ENV = "KAIZEN_TEST_OPENAI_KEY"


def _completion(text: str = "The part passes.", *, logprobs: list[float] | None = None) -> dict:
    choice: dict = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    if logprobs is not None:
        choice["logprobs"] = {
            "content": [
                {"token": f"t{i}", "logprob": lp, "bytes": None, "top_logprobs": []}
                for i, lp in enumerate(logprobs)
            ]
        }
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-test",
        "choices": [choice],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


def _error(message: str) -> dict:
    return {"error": {"message": message, "type": "server_error", "code": None}}


@pytest.fixture(params=DRIVERS)
def server(monkeypatch, request):
    monkeypatch.setenv(KEY_ENV, "sk-test-123")
    with ProviderServer() as server:
        server.driver = request.param
        yield server


def _call(
    server: ProviderServer, prompt: str = "Check the part.", *, driver: str = "", **settings
) -> ModelResponse:
    settings = {"base_url": f"{server.url}/v1", "api_key_env": KEY_ENV, **settings}
    return call_provider(
        OpenAIProvider(),
        ModelRequest(model="gpt-test", prompt=prompt, input="part", settings=settings),
        driver or server.driver,
    )


def test_success_reports_usage_and_confidence_from_logprobs(server):
    server.then(200, _completion(logprobs=[-0.1, -0.3, -0.2]))

    response = _call(server, logprobs=True, temperature=0.2)

    assert response.text == "The part passes."
    assert (response.tokens_in, response.tokens_out) == (12, 5)
    assert response.confidence == pytest.approx(math.exp(-0.2), abs=1e-6)
    assert response.confidence_source == "logprobs"
    assert response.latency_ms > 0
    [request] = server.received
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test-123"
    assert request.body["messages"] == [{"role": "user", "content": "Check the part."}]
    assert request.body["logprobs"] is True
    assert request.body["temperature"] == 0.2


def test_without_logprobs_confidence_comes_from_a_confidence_line(server):
    server.then(200, _completion("Passes.\nConfidence: 0.83"))

    response = _call(server)

    assert response.confidence == 0.83
    assert response.confidence_source == "structured"


def test_without_logprobs_or_a_structured_field_confidence_is_none(server):
    server.then(200, _completion("Passes, I think."))

    response = _call(server)

    assert response.confidence is None
    assert response.confidence_source == "none"


def test_429_waits_for_retry_after_then_succeeds(server):
    server.then(429, _error("Rate limit reached for gpt-test"), headers={"Retry-After": "1"})
    server.then(200, _completion())

    response = _call(server)

    assert response.text == "The part passes."
    assert len(server.received) == 2
    # The SDK must honour the server's Retry-After rather than its own shorter backoff.
    assert server.received[1].arrived - server.received[0].arrived >= 1.0


def test_429_with_an_http_date_retry_after_is_honoured(server):
    # Three seconds ahead, truncated to whole seconds by the date format: at least two left.
    retry_at = email.utils.formatdate(time.time() + 3, usegmt=True)
    server.then(429, _error("Rate limit reached for gpt-test"), headers={"Retry-After": retry_at})
    server.then(200, _completion())

    response = _call(server)

    assert response.text == "The part passes."
    assert len(server.received) == 2
    assert server.received[1].arrived - server.received[0].arrived >= 1.0


def test_500_then_success_is_retried(server):
    server.then(500, _error("The server had an error")).then(200, _completion())

    response = _call(server)

    assert response.text == "The part passes."
    assert len(server.received) == 2


def test_500_until_retries_run_out_raises_the_servers_message(server):
    server.then(500, _error("The server had an error while processing your request"))

    with pytest.raises(ProviderError, match=r"^openai 500: The server had an error while processing"):
        _call(server, max_retries=1)

    assert len(server.received) == 2


def test_a_slow_server_times_out(server):
    server.then(200, _completion(), delay=3)

    with pytest.raises(ProviderError, match="timed out after 0.5s"):
        _call(server, timeout=0.5, max_retries=0)


def test_a_body_that_is_not_json_is_a_clear_error(server):
    server.then(200, "<html>gateway</html>", headers={"Content-Type": "text/html"})

    with pytest.raises(ProviderError, match="malformed response, the body is not JSON"):
        _call(server)


def test_a_body_without_choices_is_a_clear_error(server):
    server.then(200, {"id": "chatcmpl-1", "object": "chat.completion", "usage": {}})

    with pytest.raises(ProviderError, match="malformed response, no choices"):
        _call(server)


def test_401_fails_at_once_without_retrying(server):
    server.then(401, _error("Incorrect API key provided"))

    with pytest.raises(ProviderError, match=r"^openai 401: Incorrect API key provided"):
        _call(server)

    assert len(server.received) == 1


def test_a_missing_key_variable_is_named(server, monkeypatch):
    monkeypatch.delenv("KAIZEN_TEST_NO_SUCH_KEY", raising=False)

    with pytest.raises(ProviderError, match="KAIZEN_TEST_NO_SUCH_KEY"):
        _call(server, api_key_env="KAIZEN_TEST_NO_SUCH_KEY")

    assert server.received == []


def test_calls_in_flight_never_exceed_the_cap(server):
    server.then(200, _completion(), delay=0.4)
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


def test_threads_and_the_agent_loop_share_one_cap(server):
    # A worker runs cascades on its loop and custom agents on threads: calls to one
    # server from both count against the same max_in_flight.
    server.then(200, _completion(), delay=0.4)
    results: list[object] = []

    def call(driver: str) -> None:
        try:
            results.append(_call(server, driver=driver, max_in_flight=2, timeout=20))
        except ProviderError as err:
            results.append(err)

    threads = [threading.Thread(target=call, args=(driver,)) for driver in DRIVERS * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [type(r) for r in results] == [ModelResponse] * 6
    assert server.max_in_flight == 2


def test_a_client_is_made_once_per_configuration_and_kept(server, monkeypatch):
    # Making one cost 24 ms of CPU (its TLS context): more than the call.
    import openai

    made: list[dict] = []
    for name in ("OpenAI", "AsyncOpenAI"):
        real = getattr(openai, name)

        def counting(*args, _real=real, **kwargs):
            made.append(kwargs)
            return _real(*args, **kwargs)

        monkeypatch.setattr(openai, name, counting)
    server.then(200, _completion())

    for timeout in (20, 20, 30):
        _call(server, timeout=timeout)

    assert [options["timeout"] for options in made] == [20, 30]
    assert len(server.received) == 3


def test_a_bad_setting_is_a_clear_error(server):
    with pytest.raises(ProviderError, match="setting 'timeout' must be a number"):
        _call(server, timeout="soon")


def test_get_provider_knows_the_real_providers():
    assert isinstance(get_provider("openai"), OpenAIProvider)
    with pytest.raises(ProviderError, match="available: simulated, openai, anthropic"):
        get_provider("mistral")


def test_a_forked_child_makes_its_own_clients():
    # Its parent's clients share their sockets with the parent (and a parent
    # thread may hold the cache's lock at the fork): a child starts without them.
    import os

    from boards.agents import providers

    providers._sync_clients[("a parent's client",)] = object()
    read, write = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # the child: report and leave at once
            os.write(write, str(len(providers._sync_clients)).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.read(read, 16) == b"0"
    finally:
        providers._sync_clients.pop(("a parent's client",), None)
        os.close(read)
        os.close(write)
