"""A local HTTP server that stands in for a model provider in the adapter tests (and for
an embeddings server in tests/experiments/test_embeddings.py).

Each test scripts it with a queue of responses (status, headers, body, delay) and reads
back the requests it received, so the real SDKs run their real HTTP, retry and timeout
code against 127.0.0.1 only.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# A body, or a function of the request's JSON body that makes one (a server that
# answers what it was asked, as an embeddings endpoint must).
Body = bytes | str | dict | Callable[[dict | None], bytes | str | dict]


@dataclass
class Scripted:
    status: int = 200
    body: Body = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds to wait before answering: slow servers and timeouts.
    delay: float = 0.0


@dataclass
class Received:
    method: str
    path: str
    # Header names lower-cased, as HTTP treats them.
    headers: dict[str, str]
    body: dict | None
    # time.monotonic() when the request arrived, to check the gap a retry left.
    arrived: float


class ProviderServer:
    """``with ProviderServer() as server:`` serves until the block ends. Responses are
    taken in order; when the queue runs dry the last one repeats, which is how a test
    says "500 until the client gives up"."""

    def __init__(self) -> None:
        self.script: deque[Scripted] = deque()
        self.last: Scripted | None = None
        self.received: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                with server.lock:
                    server.received.append(
                        Received(
                            "POST",
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            time.monotonic(),
                        )
                    )
                    reply = server.script.popleft() if server.script else server.last
                    server.last = reply
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if reply is None:
                        reply = Scripted(status=500, body={"error": {"message": "nothing scripted"}})
                    if reply.delay:
                        time.sleep(reply.delay)
                    payload = reply.body
                    if callable(payload):
                        payload = payload(body)
                    if isinstance(payload, dict):
                        payload = json.dumps(payload)
                    if isinstance(payload, str):
                        payload = payload.encode()
                    self.send_response(reply.status)
                    headers = {"Content-Type": "application/json", **reply.headers}
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    # The client timed out and hung up first: that is the test passing.
                    pass
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def log_message(self, format: str, *args: object) -> None:
                # Keep test output quiet; failures are asserted on ``received``.
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def then(self, status: int = 200, body: Body = b"", **kwargs: object) -> ProviderServer:
        self.script.append(Scripted(status=status, body=body, **kwargs))  # type: ignore[arg-type]
        return self

    def __enter__(self) -> ProviderServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# How an adapter test calls the provider: ``complete`` on the test's thread, or
# ``acomplete`` on the worker's agent loop (boards.agents.runtime.AgentLoop), as
# the worker runs a batch's cascades.
DRIVERS = ("complete", "acomplete")


def call_provider(provider, request, driver: str):
    if driver == "complete":
        return provider.complete(request)
    from boards.agents import runtime

    return runtime.agent_loop.submit(provider.acomplete(request)).result()


def chat_completion(text: str, logprob: float) -> dict:
    """An OpenAI chat completion of ``text`` with one token at ``logprob``."""
    return {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": {
                    "content": [{"token": "x", "logprob": logprob, "bytes": None, "top_logprobs": []}]
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4},
    }


def escalating_openai_cascade(server: ProviderServer, key_env: str) -> list[dict]:
    """Two OpenAI tiers on ``server``: ``small-llm`` answers "maybe" at a logprob of
    -1.0 (below its 0.9 threshold), then ``big-llm`` "surely" at -0.01."""
    server.then(200, chat_completion("maybe", -1.0)).then(200, chat_completion("surely", -0.01))
    parameters = {"base_url": f"{server.url}/v1", "api_key_env": key_env, "logprobs": True, "max_retries": 0}
    return [
        {"provider": "openai", "model": "small-llm", "parameters": parameters, "threshold": 0.9},
        {"provider": "openai", "model": "big-llm", "parameters": parameters},
    ]
